"""The command line: the only place options become config, and exit statuses are decided.

``app`` (the typer app and entry point) · ``options`` (the options ``fetch``, ``crawl``
and ``bench`` share, declared once) · ``commands`` (``fetch``, ``crawl``) · ``tools``
(``serve``, ``bench``) · ``rediswork`` (``enqueue``, ``worker``, a crawl job), ``collectcmd``,
``statuscmd`` (a Redis job's records and state) · ``run`` (a run from its config, its
summary, its exit status). A command's module is imported when the command is run
(``crawler.cli.app.COMMAND_MODULES``).
"""

from crawler.cli.app import app, main

__all__ = ["app", "main"]
