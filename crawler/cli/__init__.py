"""The command line: the only place options become config, and exit statuses are decided.

``app`` (the typer app and entry point) · ``options`` (the options ``fetch``, ``crawl``
and ``bench`` share, declared once) · ``commands`` (``fetch``, ``crawl``) · ``tools``
(``serve``, ``bench``) · ``run`` (a run from its config, its summary, its exit status).
"""

from crawler.cli import commands, configcmd, rediswork, tools
from crawler.cli.app import app, main

__all__ = ["app", "commands", "configcmd", "main", "rediswork", "tools"]
