"""crawler: fetch and crawl the web at high concurrency, safely; one JSON record per URL."""

__version__ = "0.1.0"

__all__ = ["__version__"]
