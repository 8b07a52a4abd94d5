"""robots.txt: fetched once per origin (single-flight), cached with an expiry, parsed
with protego (Scrapy's parser: RFC 9309 matching, wildcards, Crawl-delay, Sitemap).

What a fetch of /robots.txt means (RFC 9309, section 2.3.1):
- 2xx: its rules apply;
- 4xx (404 mostly): no rules, everything is allowed;
- 5xx: the server is unwell, the whole origin is disallowed for now (kept a short while);
- no response at all (DNS, refused, timeout): no verdict: the page's own fetch fails
  with the real error kind rather than ``robots``.

Only the first ``ROBOTS_MAX_BYTES`` are read, whatever --max-bytes says (RFC 9309, 2.5:
"a parsing limit of at least 500 kibibytes"); a longer file is parsed that far, without
its last, possibly cut, line.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

from msgspec import Struct, field
from protego import Protego
from yarl import URL

from crawler import errors
from crawler.response import Response

ROBOTS_MAX_BYTES: Final = 512 * 1024  # Google reads the first 500 KiB
_ERROR_TTL: Final = 300.0
_INLINE_PARSE_CHARS: Final = 32 * 1024
_MAX_HELD_BYTES: Final = 64 * 1024 * 1024  # of robots.txt text behind the cached rules
# Origins whose rules are cached: 404s and errors hold no text but still an entry each,
# and a crawl of millions of hosts (--scope domain) must not keep them all.
MAX_ENTRIES: Final = 100_000
# protego matches a URL against each wildcard rule with a scan of the URL per '*': 512 KiB
# of '/*1*z$' rules and a 60 KB link cost seconds per URL, on the loop. Past this many
# characters scanned (~25 ms) the URL is not checked: it is refused, as disallowed.
_MATCH_BUDGET: Final = 1 << 22


class Rules(Struct):
    parser: Protego | None  # None: allow everything
    disallow_all: str | None = None  # why the whole origin is off limits
    expires: float = 0.0
    sitemaps: list[str] = field(default_factory=list)
    size: int = 0  # bytes of robots.txt parsed (what the cache holds on to)
    wildcards: int = 0  # '*' in the rules: scans of the URL a check may make

    def allows(self, url: str, user_agent: str) -> bool:
        if self.disallow_all is not None:
            return False
        if self.parser is None:
            return True
        if self.wildcards * len(url) > _MATCH_BUDGET:
            return False  # too costly to check: not fetched rather than maybe disallowed
        return bool(self.parser.can_fetch(url, user_agent))

    def crawl_delay(self, user_agent: str) -> float | None:
        if self.parser is None:
            return None
        delay = self.parser.crawl_delay(user_agent)
        return float(delay) if delay else None


Fetch = Callable[[URL], Awaitable[Response]]


class RobotsCache:
    """``await rules(url)``: the robots rules of the URL's origin, fetched at most once
    at a time per origin; concurrent callers share the one request.

    At most ``max_entries`` origins and ``max_bytes`` of robots.txt text are cached, the
    least recently used forgotten first (fetched again if needed). ``on_new(origin,
    rules)`` is called for each entry cached, ``on_evict(origin, rules)`` for each one
    dropped (evicted, or replaced once expired), always in that order for an entry: what
    the caller derives from an entry (a Crawl-delay) can live exactly as long as it."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        ttl: float,
        clock: Callable[[], float],
        on_new: Callable[[str, Rules], None] | None = None,
        on_evict: Callable[[str, Rules], None] | None = None,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int | None = None,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._on_new = on_new  # called once per fetched robots.txt (crawl-delay, sitemaps)
        self._on_evict = on_evict
        self._max_entries = max(1, max_entries)
        self._max_bytes = _MAX_HELD_BYTES if max_bytes is None else max_bytes
        self._rules: OrderedDict[str, Rules] = OrderedDict()  # least recently used first
        self._held = 0  # sum of their sizes
        self._inflight: dict[str, asyncio.Future[Rules | None]] = {}
        self.fetched = 0

    async def rules(self, url: URL) -> Rules:
        origin = f"{url.scheme}://{url.raw_authority}"
        while True:
            rules = self._rules.get(origin)
            if rules is not None and rules.expires > self._clock():
                self._rules.move_to_end(origin)
                return rules
            pending = self._inflight.get(origin)
            if pending is None:
                break
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            # The caller that was loading it was cancelled (shutdown): try again.
        fut: asyncio.Future[Rules | None] = asyncio.get_running_loop().create_future()
        self._inflight[origin] = fut
        try:
            rules = await self._load(origin)
        except BaseException:
            fut.set_result(None)  # waiters retry instead of inheriting our cancellation
            raise
        finally:
            del self._inflight[origin]
        old = self._rules.pop(origin, None)  # expired: its place moves to the newest end
        if old is not None:
            self._dropped(origin, old)
        self._rules[origin] = rules
        self._held += rules.size
        fut.set_result(rules)
        if self._on_new is not None:
            self._on_new(origin, rules)
        self._evict()
        return rules

    def __len__(self) -> int:
        return len(self._rules)

    def _evict(self) -> None:
        """Forget the least recently used origins' rules while the cache is past a bound
        (they are fetched again if needed): a crawl of many hosts (--scope domain, each
        subdomain its own origin, each robots.txt up to 512 KiB) must not keep them all.
        Past the byte bound it sheds down to half, not to reparse at every new origin."""
        rules = self._rules
        if self._held > self._max_bytes:
            while self._held > self._max_bytes // 2 and rules:
                self._dropped(*rules.popitem(last=False))
        while len(rules) > self._max_entries:
            self._dropped(*rules.popitem(last=False))

    def _dropped(self, origin: str, rules: Rules) -> None:
        self._held -= rules.size
        if self._on_evict is not None:
            self._on_evict(origin, rules)

    async def _load(self, origin: str) -> Rules:
        self.fetched += 1
        now = self._clock()
        try:
            resp = await self._fetch(URL(origin + "/robots.txt"))
        except errors.FetchError:
            return Rules(None, expires=now + _ERROR_TTL)
        status = resp.status
        if status >= 500:
            return Rules(
                None,
                disallow_all=f"{origin}/robots.txt answered {status}: origin disallowed",
                expires=now + _ERROR_TTL,
            )
        if status >= 400 or not resp.body:
            return Rules(None, expires=now + self._ttl)
        body = resp.body
        if len(body) >= ROBOTS_MAX_BYTES:  # cut by the fetch: drop the last, partial line
            body = body[:ROBOTS_MAX_BYTES].rpartition(b"\n")[0]
        text = body.decode("utf-8", "replace")
        try:
            if len(text) > _INLINE_PARSE_CHARS:
                # protego is pure Python: 500 KiB of rules take ~0.5 s, off the loop.
                parser = await asyncio.to_thread(Protego.parse, text)
            else:
                parser = Protego.parse(text)
        except Exception:  # noqa: BLE001 - an unreadable robots.txt says nothing: allowed
            return Rules(None, expires=now + self._ttl)
        return Rules(
            parser,
            expires=now + self._ttl,
            sitemaps=list(parser.sitemaps),
            size=len(text),
            wildcards=text.count("*"),
        )
