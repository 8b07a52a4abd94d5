"""Per-host headers and proxies (``[hosts."..."]`` in the config file, crawler.hostrules):
``HostsFetcher`` wraps the run's fetcher, only in a run that has such overrides (decided
once, by crawler.fetchers.open_fetcher), so a run without them runs what it always did.

    HostsFetcher.fetch(url): its host's settings (looked up once per host and port, cached)
        none               --> the run's fetcher, unchanged
        headers            --> the URL's request with them added (its own headers, e.g. a
                               JSON request line's, win by name), bound to the URL's origin:
                               never sent after a redirect to another origin
        proxy "URL"        --> a ProxiedFetcher with that one proxy (its own breaker; the
                               record names it), whatever --proxy/--noproxy/the environment
        proxy ""           --> direct, whatever --proxy and the environment say
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

import aiohttp
import msgspec.structs
from yarl import URL

from crawler.config import BreakerConfig, FetchConfig
from crawler.fetcher import Fetcher
from crawler.hostrules import HostOverrides, HostSettings
from crawler.proxied import ProxiedFetcher
from crawler.request import Request
from crawler.response import KEEP_NONE, Response
from crawler.sessions import SessionState, make_fetcher


class _Route:
    """Where one host's requests go, and the headers they carry."""

    __slots__ = ("bound", "fetcher", "headers", "plain")

    def __init__(self, fetcher: Fetcher, headers: tuple[tuple[str, str], ...], method: str):
        self.fetcher = fetcher
        self.headers = headers
        self.bound = frozenset(name.lower() for name, _ in headers)
        # The request of a plain line (the run's GET or HEAD), made once.
        self.plain = Request(method, headers, bound=self.bound) if headers else None

    def request(self, request: Request | None) -> Request | None:
        """``request`` (None: a plain line's) with this host's headers."""
        if not self.headers:
            return request
        if request is None:
            return self.plain
        own = {name.lower() for name, _ in request.headers}
        added = tuple(pair for pair in self.headers if pair[0].lower() not in own)
        return Request(
            request.method,
            (*added, *request.headers),
            request.body,
            request.meta,
            bound=(self.bound - own) | request.bound,
        )


class HostsFetcher(Fetcher):
    """The run's fetcher, with per-host headers and proxies (see the module docstring)."""

    def __init__(
        self,
        inner: Fetcher,
        session: aiohttp.ClientSession,
        config: FetchConfig,
        breaker: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        state: SessionState | None = None,
    ) -> None:
        super().__init__(session, config)  # for has_credentials; never sends itself
        self._inner = inner
        self._session_state = state
        self._breaker_config = breaker
        self._clock = clock
        self._overrides: HostOverrides = config.hosts
        # The config of a fetcher of its own: no proxy of the run's, no overrides again.
        self._own_config = msgspec.structs.replace(
            config, proxies=(), scheme_proxies=(), noproxy=(), hosts=HostOverrides()
        )
        self._direct_fetcher: Fetcher | None = None
        self._proxied: dict[str, Fetcher] = {}  # by proxy URL: patterns share a proxy
        self._route = functools.lru_cache(maxsize=4096)(self._find_route)

    async def fetch(
        self,
        url: URL,
        budget: float,
        keep: int = KEEP_NONE,
        follow: Callable[[URL], bool] | None = None,
        credentials: bool = False,
        request: Request | None = None,
        *,
        cap: int | None = None,
    ) -> Response:
        route = self._route(url.raw_host or "", url.port)
        if route is None:
            fetcher = self._inner
        else:
            fetcher, request = route.fetcher, route.request(request)
        return await fetcher.fetch(url, budget, keep, follow, credentials, request, cap=cap)

    def _find_route(self, host: str, port: int | None) -> _Route | None:
        settings = self._overrides.find(host, port)
        if settings is None or not settings.requests:
            return None
        return _Route(self._fetcher_for(settings), settings.headers, self._config.method)

    def _fetcher_for(self, settings: HostSettings) -> Fetcher:
        proxy = settings.proxy
        if proxy is None:
            return self._inner
        state = self._session_state
        if not proxy:
            if self._direct_fetcher is None:
                self._direct_fetcher = make_fetcher(self._session, self._own_config, state)
            return self._direct_fetcher
        fetcher = self._proxied.get(proxy)
        if fetcher is None:
            config = msgspec.structs.replace(self._own_config, proxies=(proxy,))
            fetcher = ProxiedFetcher(
                self._session, config, self._breaker_config, self._clock, state
            )
            self._proxied[proxy] = fetcher
        return fetcher

    async def aclose(self) -> None:
        """Close the proxies' sessions, the run's fetcher's too (idempotent)."""
        fetchers = [*self._proxied.values(), self._inner]
        self._proxied.clear()
        for fetcher in fetchers:
            close = getattr(fetcher, "aclose", None)
            if close is not None:
                await asyncio.shield(close())
