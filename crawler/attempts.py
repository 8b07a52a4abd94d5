"""One URL's attempts: its host's breaker, its deadline, the fetch, the retry decision.

    worker --item--> Attempts.run: breaker allows? -> deadline left? -> fetch one attempt
        -> outcome to the host's policy (breaker, AIMD) -> retry now / later / never

Pacing is not decided here: the frontier hands a worker a URL only when its request may
start (crawler/frontier.py), and a retry that must wait goes back to the frontier
(``run`` returns the wait). A retry due at once (back-off under a millisecond, no pacer
involved) is attempted in the same call, without a trip through the frontier.

``run`` writes no record: it returns the outcome, and the engine writes the record. A
cancellation during an attempt gives the breaker's probe back and propagates.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from yarl import URL

from crawler import errors
from crawler.config import RetryConfig
from crawler.limiter import HostTable
from crawler.request import Request
from crawler.response import KEEP_NONE, Response
from crawler.retry import RETRY_STATUSES, Deadline, backoff_delay, parse_retry_after
from crawler.stats import Stats
from crawler.task import Item

# A URL's outcome: the response (if any), the error (if any), and the seconds to wait
# before the next attempt (None: no more attempts, the URL gets its record now).
Outcome = tuple[Response | None, errors.FetchError | None, float | None]


class Fetches(Protocol):
    """What the attempt loop needs of crawler.fetcher.Fetcher: one attempt of one URL,
    redirects included, within ``budget`` seconds; raises errors.FetchError."""

    def fetch(
        self,
        url: URL,
        budget: float,
        keep: int,
        follow: Callable[[URL], bool] | None,
        credentials: bool,
        request: Request | None,
    ) -> Awaitable[Response]: ...


class Attempts:
    """The attempt loop, shared by every worker (it keeps no per-URL state of its own:
    that lives on the Item, so a retry can wait in the frontier)."""

    __slots__ = (
        "_clock",
        "_fetcher",
        "_follow",
        "_hosts",
        "_keep",
        "_rand",
        "_retry",
        "_retry_unsafe",
        "_stats",
    )

    def __init__(
        self,
        fetcher: Fetches,
        retry: RetryConfig,
        hosts: HostTable,
        stats: Stats,
        *,
        clock: Callable[[], float],
        rand: Callable[[], float] = random.random,
        keep: int = KEEP_NONE,
        follow: Callable[[URL], bool] | None = None,
        retry_unsafe: bool = False,
    ) -> None:
        self._fetcher = fetcher
        self._retry = retry
        self._hosts = hosts
        self._stats = stats
        self._clock = clock
        self._rand = rand
        self._keep = keep  # which bodies the fetcher keeps (see KEEP_*)
        self._follow = follow  # crawl mode: which redirects a discovered URL may follow
        self._retry_unsafe = retry_unsafe  # --retry-unsafe: see _unsafe

    async def run(
        self, item: Item, credentials: bool, statuses: frozenset[int] = RETRY_STATUSES
    ) -> Outcome:
        """Attempts for ``item`` (holding a slot of its host) until it has an outcome or
        must wait for a retry. ``credentials``: whether its requests may carry them;
        ``statuses``: the ones retried (a default argument costs nothing per call, so a
        run with the default list pays nothing for --retry-on: see RetryOn)."""
        host = item.host
        assert host is not None  # noqa: S101 - the frontier hands out items with a slot
        retry, stats, clock = self._retry, self._stats, self._clock
        # Seeds follow any redirect; a discovered URL only those its crawl's scope allows.
        follow = self._follow if item.parent is not None else None
        while True:
            if not host.allow():
                return None, errors.CircuitOpen(host.refusal()), None
            deadline = item.deadline
            if deadline is None:  # the first attempt starts the URL's deadline
                deadline = item.deadline = Deadline(retry.timeout, clock)
                started, budget = deadline.started, retry.timeout
            else:
                started = clock()
                budget = deadline.expires - started
                if budget <= 0:
                    # A retry that waited in the frontier (parked behind its host or its
                    # pacer, or for a worker) past the URL's deadline.
                    host.abandon()  # allow() may have made it the probe
                    return None, errors.Timeout("deadline exceeded"), None
            item.attempts += 1
            stats.requests += 1
            resp: Response | None = None
            error: errors.FetchError | None = None
            try:
                resp = await self._fetcher.fetch(
                    item.url, budget, self._keep, follow, credentials, item.request
                )
            except errors.FetchError as exc:
                error = exc
            except asyncio.CancelledError:
                host.abandon()
                raise
            latency = clock() - started
            stats.latency.add(latency)
            status = resp.status if resp is not None else 0
            host.observe(status, error, latency)

            retryable = error.retryable if error is not None else status in statuses
            if retryable and item.attempts <= retry.retries:
                request = item.request
                if request is not None and request.unsafe and not self._retry_unsafe:
                    unsent = error is not None and not error.sent
                    if not unsent:
                        return resp, _not_retried(request, resp, error), None
                wait = backoff_delay(
                    item.attempts, retry.backoff_base, retry.backoff_cap, self._rand()
                )
                hint = parse_retry_after(resp.retry_after) if resp is not None else None
                if hint is not None:
                    wait = max(wait, hint)
                if deadline.allows_wait(wait):
                    stats.retries += 1
                    if wait < 0.001 and not self._hosts.waits_for_pacer(host):
                        continue
                    return resp, error, wait
            return resp, error, None


def _not_retried(
    request: Request, resp: Response | None, error: errors.FetchError | None
) -> errors.FetchError:
    """The error of a request that is not idempotent, not sent again after a failure
    once it was sent (a retry could apply it twice): its message says so."""
    note = f"(not retried: {request.method} is not idempotent; --retry-unsafe to retry)"
    if error is None:
        assert resp is not None  # noqa: S101 - no error: a retryable status came
        return errors.HTTPStatusError(f"HTTP {resp.status} {note}")
    error.message = f"{error.message} {note}"
    return error


class RetryOn(Attempts):
    """The attempt loop of a run given --retry-on: its statuses are retried instead."""

    __slots__ = ("_statuses",)

    def __init__(self, fetcher: Fetches, retry: RetryConfig, *args: Any, **kw: Any) -> None:
        super().__init__(fetcher, retry, *args, **kw)
        self._statuses = retry.retry_on

    async def run(
        self, item: Item, credentials: bool, statuses: frozenset[int] = RETRY_STATUSES
    ) -> Outcome:
        return await Attempts.run(self, item, credentials, self._statuses)


def attempts_for(retry: RetryConfig) -> type[Attempts]:
    """The attempt loop's class for a run: decided once, not per URL."""
    return Attempts if retry.retry_on == RETRY_STATUSES else RetryOn
