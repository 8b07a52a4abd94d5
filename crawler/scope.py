"""Which discovered URLs a crawl follows: scope relative to the seeds, regexes, depth.

- ``host``: the host of a seed (any scheme and port);
- ``domain``: the host of a seed and its subdomains, a leading ``www.`` dropped
  (``www.example.com`` lets in ``example.com`` and ``docs.example.com``);
- ``prefix``: URLs starting with a seed's URL up to the last ``/`` of its path.

Then ``--include`` (if given, one must match) and ``--exclude`` (none may match),
searched anywhere in the URL (``re.search``).
"""

from __future__ import annotations

import re

from yarl import URL

from crawler.config import CrawlConfig


class Scope:
    def __init__(self, config: CrawlConfig) -> None:
        self._mode = config.scope
        self._hosts: set[str] = set()
        self._domains: set[str] = set()
        self._prefixes: list[str] = []
        self._include = [re.compile(p) for p in config.include]
        self._exclude = [re.compile(p) for p in config.exclude]
        self._max_depth = config.max_depth

    def add_seed(self, url: URL) -> None:
        host = (url.raw_host or "").lower().rstrip(".")
        if self._mode == "host":
            self._hosts.add(host)
        elif self._mode == "domain":
            self._domains.add(host.removeprefix("www."))
        else:
            text = str(url.with_query(None).with_fragment(None))
            prefix = text[: text.rfind("/") + 1] if url.raw_path else text + "/"
            if prefix not in self._prefixes:
                self._prefixes.append(prefix)

    def depth_ok(self, depth: int) -> bool:
        return self._max_depth is None or depth <= self._max_depth

    def allows(self, url: URL, text: str) -> bool:
        """``text`` is ``str(url)``, passed in because callers already have it."""
        mode = self._mode
        if mode == "host":
            if (url.raw_host or "").lower().rstrip(".") not in self._hosts:
                return False
        elif mode == "domain":
            host = (url.raw_host or "").lower().rstrip(".")
            if not any(host == d or host.endswith("." + d) for d in self._domains):
                return False
        elif not any(text.startswith(p) for p in self._prefixes):
            return False
        if self._include and not any(p.search(text) for p in self._include):
            return False
        return not any(p.search(text) for p in self._exclude)
