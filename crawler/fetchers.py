"""The run's fetcher (``open_fetcher``): what a run's options make of the Fetcher, each
layer chosen once per run, so a plain run runs the plain Fetcher.

    Fetcher (crawler.fetcher), with cookies/validators (crawler.sessions)
      <- ProxiedFetcher (crawler.proxied: --proxy, --proxy-file, the environment's proxies)
      <- HostsFetcher (crawler.hostfetch: a config file's per-host headers and proxies)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp

from crawler.config import BreakerConfig, FetchConfig
from crawler.fetcher import Fetcher
from crawler.sessions import make_fetcher, session_state

if TYPE_CHECKING:
    from crawler.hostfetch import HostsFetcher
    from crawler.proxied import ProxiedFetcher


@contextlib.asynccontextmanager
async def open_fetcher(
    session: aiohttp.ClientSession,
    config: FetchConfig,
    breaker: BreakerConfig,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Fetcher]:
    """The run's fetcher over ``session``: plain, with cookies or validators
    (crawler.sessions: loaded here, saved at the end), through proxies (their sessions
    closed at the end), or both. Closing is shielded: a cancellation cannot skip it."""
    state = session_state(config)
    if state is not None:
        await state.open()
    try:
        if not config.proxied and not config.hosts.requests:
            yield make_fetcher(session, config, state)
            return
        fetcher: ProxiedFetcher | HostsFetcher
        if config.proxied:
            from crawler.proxied import ProxiedFetcher  # only for a run with proxies

            fetcher = ProxiedFetcher(session, config, breaker, clock, state)
        if config.hosts.requests:  # per-host headers or proxies, around the run's fetcher
            from crawler.hostfetch import HostsFetcher

            inner = fetcher if config.proxied else make_fetcher(session, config, state)
            fetcher = HostsFetcher(inner, session, config, breaker, clock, state)
        try:
            yield fetcher
        finally:
            await asyncio.shield(fetcher.aclose())
    finally:
        if state is not None:
            await asyncio.shield(state.aclose())
