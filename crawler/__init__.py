"""crawler: fetch and crawl the web at high concurrency, safely; one JSON record per URL.

From Python (see README "Use from Python")::

    async with crawler.fetch(urls, concurrency=200, per_host=4) as records:
        async for rec in records:
            print(rec.url, rec.status, rec.ok, rec.error and rec.error.kind)

Importing the package stays light (the command line's ``--help`` imports it): the
engine and aiohttp are imported when a run starts.
"""

import sys
import types

__version__ = "0.1.0"

from crawler.api import crawl, fetch, fetch_all  # after __version__: crawler.config reads it
from crawler.config import ConfigError
from crawler.errors import CrawlerError
from crawler.records import Error, ErrorKind, Record

__all__ = [
    "ConfigError",
    "CrawlerError",
    "Error",
    "ErrorKind",
    "Record",
    "__version__",
    "crawl",
    "fetch",
    "fetch_all",
]


class _Package(types.ModuleType):
    """``crawler.crawl`` is the API's function, though a submodule has the same name:
    importing the submodule (the engine does, for a crawl) would otherwise rebind the
    package's attribute to it. The submodule stays importable (``from crawler.crawl
    import Crawl``); only the attribute keeps naming the function."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
