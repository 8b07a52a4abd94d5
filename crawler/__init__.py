"""crawler: fetch and crawl the web at high concurrency, safely; one JSON record per URL.

From Python (see README "Use from Python")::

    async with crawler.fetch(urls, concurrency=200, per_host=4) as records:
        async for rec in records:
            print(rec.url, rec.status, rec.ok, rec.error and rec.error.kind)

Importing the package imports nothing else: the command line defers stop signals
(``crawler.__main__``) before any heavy import, so the public names are loaded on
first use.
"""

import importlib

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: ``crawler --version`` would import typing for it
if TYPE_CHECKING:
    from crawler.api import crawl, fetch, fetch_all
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

_HOMES = {
    "ConfigError": "crawler.config",
    "CrawlerError": "crawler.errors",
    "Error": "crawler.records",
    "ErrorKind": "crawler.records",
    "Record": "crawler.records",
    "crawl": "crawler.api",
    "fetch": "crawler.api",
    "fetch_all": "crawler.api",
}


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'crawler' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
