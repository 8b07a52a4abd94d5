"""The command line: the only place options become config, and exit statuses are decided.

``app`` (the typer app and entry point) · ``options`` (the options ``fetch``, ``crawl``
and ``bench`` share, declared once) · ``commands`` (``fetch``, ``crawl``) · ``tools``
(``serve``, ``bench``) · ``rediswork`` (``enqueue``, ``worker``, a crawl job), ``collectcmd``,
``statuscmd`` (a Redis job's records and state) · ``run`` (a run from its config, its
summary, its exit status).
"""

from crawler.cli import collectcmd, commands, configcmd, rediswork, statuscmd, tools
from crawler.cli.app import app, main

__all__ = ["app", "collectcmd", "commands", "configcmd", "main", "rediswork", "statuscmd", "tools"]
