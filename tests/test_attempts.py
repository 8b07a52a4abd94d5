"""One URL's attempt loop (crawler/attempts.py) against a fake fetcher and a fake clock:
retries, the retry budget, Retry-After, the deadline, the breaker, AIMD, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from yarl import URL

from crawler import errors
from crawler.attempts import Attempts
from crawler.config import BreakerConfig, LimitConfig, RetryConfig
from crawler.limiter import HostState, HostTable
from crawler.response import KEEP_HTML, Response
from crawler.stats import Stats
from crawler.task import Item

KEY = "example.test:80"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Canned = Response | errors.FetchError | asyncio.Future[Response]


class FakeFetcher:
    """Fetcher.fetch's signature; each call takes the next canned outcome (a Response,
    a FetchError to raise, or a future to wait on) and moves the clock by ``latency``."""

    def __init__(self, clock: Clock, outcomes: list[Canned], latency: float = 0.05) -> None:
        self.clock = clock
        self.outcomes = outcomes
        self.latency = latency
        self.calls: list[tuple[URL, float, int, bool, bool]] = []
        self.called = asyncio.Event()

    async def fetch(
        self,
        url: URL,
        budget: float,
        keep: int,
        follow: Callable[[URL], bool] | None,
        credentials: bool,
        request: object = None,
    ) -> Response:
        self.calls.append((url, budget, keep, follow is not None, credentials))
        self.called.set()
        outcome = self.outcomes.pop(0)
        self.clock.now += self.latency
        if isinstance(outcome, errors.FetchError):
            raise outcome
        if isinstance(outcome, asyncio.Future):
            return await outcome
        return outcome


def ok(status: int = 200, retry_after: str | None = None) -> Response:
    return Response(status, "http://example.test/", "text/html", 10, retry_after=retry_after)


def setup(
    outcomes: list[Canned],
    *,
    retries: int = 2,
    timeout: float = 30.0,
    threshold: int = 0,
    adaptive: bool = False,
    per_host_rps: float = 0.0,
    rand: float = 0.0,
) -> tuple[Attempts, FakeFetcher, Item, HostState, Stats, Clock]:
    clock = Clock()
    hosts = HostTable(
        LimitConfig(per_host=8, adaptive=adaptive, per_host_rps=per_host_rps),
        BreakerConfig(threshold=threshold, cooldown=30.0),
        clock,
    )
    stats = Stats(clock)
    fetcher = FakeFetcher(clock, outcomes)
    attempts = Attempts(
        fetcher,
        RetryConfig(retries=retries, timeout=timeout, backoff_base=0.5, backoff_cap=10.0),
        hosts,
        stats,
        clock=clock,
        rand=lambda: rand,
        keep=KEEP_HTML,
    )
    item = Item("http://example.test/", URL("http://example.test/"), KEY)
    item.host = hosts.get(KEY)
    return attempts, fetcher, item, item.host, stats, clock


async def test_a_success_is_one_attempt_within_the_whole_timeout() -> None:
    attempts, fetcher, item, _, stats, _ = setup([ok()])
    resp, error, wait = await attempts.run(item, True)
    assert resp is not None and resp.status == 200
    assert (error, wait) == (None, None)
    assert item.attempts == 1 and stats.requests == 1 and stats.retries == 0
    assert fetcher.calls == [(item.url, 30.0, KEEP_HTML, False, True)]
    assert stats.latency.count == 1
    assert item.deadline is not None and item.deadline.started == 100.0


async def test_retries_due_at_once_until_success_in_one_call() -> None:
    attempts, fetcher, item, _, stats, _ = setup(
        [errors.ConnectError("refused"), ok(503), ok()], rand=0.0
    )
    resp, error, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 200 and error is None and wait is None
    assert item.attempts == 3 and stats.requests == 3 and stats.retries == 2
    # Every attempt gets what is left of the URL's one deadline, not a fresh timeout.
    assert [round(call[1], 6) for call in fetcher.calls] == [30.0, 29.95, 29.9]


async def test_a_retry_that_must_wait_goes_back_with_its_wait() -> None:
    attempts, fetcher, item, _, stats, _ = setup([ok(502), ok()], rand=0.5)
    resp, error, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 502 and error is None
    assert wait == pytest.approx(0.25)  # 0.5 (jitter) x 0.5 (base) x 2^0
    assert item.attempts == 1 and stats.retries == 1
    # The next call (the frontier handed it out again) goes on with the same deadline.
    resp, error, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 200 and wait is None
    assert item.attempts == 2 and len(fetcher.calls) == 2


async def test_a_paced_host_never_retries_in_place() -> None:
    # Even a retry due at once goes through the frontier, which owns the pacer.
    attempts, fetcher, item, _, _, _ = setup([ok(503), ok()], per_host_rps=1.0, rand=0.0)
    _, _, wait = await attempts.run(item, False)
    assert wait == 0.0 and len(fetcher.calls) == 1


async def test_the_retry_budget_ends_with_the_last_outcome() -> None:
    attempts, fetcher, item, _, stats, _ = setup(
        [ok(500), errors.AttemptTimeout("read timeout"), ok(500), ok()], retries=2
    )
    resp, error, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 500 and error is None and wait is None
    assert item.attempts == 3 and stats.retries == 2 and len(fetcher.outcomes) == 1


async def test_what_is_not_retryable_is_final_at_once() -> None:
    attempts, _, item, _, stats, _ = setup([ok(404), ok()])
    resp, _, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 404 and wait is None
    attempts, _, item, _, stats, _ = setup([errors.DNSError("no such host"), ok()])
    resp, error, wait = await attempts.run(item, False)
    assert resp is None and isinstance(error, errors.DNSError) and wait is None
    assert item.attempts == 1 and stats.retries == 0


async def test_retry_after_stretches_the_wait() -> None:
    attempts, _, item, _, _, _ = setup([ok(429, retry_after="7"), ok()], rand=0.0)
    _, _, wait = await attempts.run(item, False)
    assert wait == 7.0


async def test_a_retry_after_past_the_deadline_ends_the_url_with_its_answer() -> None:
    attempts, fetcher, item, _, stats, _ = setup([ok(503, retry_after="60"), ok()], timeout=10)
    resp, error, wait = await attempts.run(item, False)
    assert resp is not None and resp.status == 503 and error is None and wait is None
    assert stats.retries == 0 and len(fetcher.calls) == 1


async def test_a_retry_due_after_the_deadline_is_a_timeout_and_gives_the_probe_back() -> None:
    attempts, fetcher, item, host, _, clock = setup([ok(503), ok()], threshold=1, rand=0.5)
    _, _, wait = await attempts.run(item, False)
    assert wait is not None
    assert host.breaker is not None
    host.breaker.record(True, "connect", "refused")  # opened meanwhile by another URL
    clock.now += 31.0  # waited in the frontier past the URL's deadline (and the cooldown)
    resp, error, wait = await attempts.run(item, False)
    assert resp is None and isinstance(error, errors.Timeout) and wait is None
    assert error.message == "deadline exceeded"
    assert len(fetcher.calls) == 1 and item.attempts == 1
    assert host.allow()  # allow() made that retry the probe; it gave the turn back


async def test_failures_open_the_breaker_and_the_next_url_is_refused() -> None:
    attempts, _, item, host, stats, _ = setup(
        [errors.ConnectError("Connection refused")], retries=0, threshold=1
    )
    _, error, _ = await attempts.run(item, False)
    assert isinstance(error, errors.ConnectError)
    other = Item("http://example.test/2", URL("http://example.test/2"), KEY)
    other.host = host
    resp, error, wait = await attempts.run(other, False)
    assert resp is None and wait is None and isinstance(error, errors.CircuitOpen)
    assert error.message == (
        f"circuit open for {KEY} after 1 consecutive connect error: Connection refused"
    )
    assert other.attempts == 0 and stats.requests == 1  # nothing was sent


async def test_5xx_counts_against_the_breaker_4xx_does_not() -> None:
    attempts, _, item, host, _, _ = setup([ok(404), ok(404), ok(500)], retries=0, threshold=2)
    for status in (404, 404):
        item.deadline, item.attempts = None, 0
        resp, _, _ = await attempts.run(item, False)
        assert resp is not None and resp.status == status
    assert host.allow()
    item.deadline, item.attempts = None, 0
    await attempts.run(item, False)
    assert host.breaker is not None and host.breaker.failures == 1


async def test_aimd_halves_on_congestion_and_grows_on_success() -> None:
    attempts, _, item, host, _, clock = setup([ok(429), ok(), ok()], retries=0, adaptive=True)
    assert host.aimd is not None
    assert host.aimd.limit == 8.0
    await attempts.run(item, False)
    assert host.aimd.limit == 4.0
    clock.now += 5
    for _ in range(2):
        item.deadline, item.attempts = None, 0
        await attempts.run(item, False)
    assert host.aimd.limit == pytest.approx(4.0 + 1 / 4.0 + 1 / 4.25)


async def test_a_timeout_is_congestion_for_aimd() -> None:
    attempts, _, item, host, _, _ = setup([errors.Timeout("deadline exceeded")], adaptive=True)
    await attempts.run(item, False)
    assert host.aimd is not None and host.aimd.limit == 4.0


async def test_cancelled_during_an_attempt_gives_the_probe_back_and_propagates() -> None:
    pending: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    attempts, fetcher, item, host, _, clock = setup([pending], threshold=1)
    assert host.breaker is not None
    host.breaker.record(True, "connect", "refused")  # open...
    clock.now += 31.0  # ...and cooled down: the next request is the probe
    task = asyncio.create_task(attempts.run(item, False))
    await asyncio.wait_for(fetcher.called.wait(), 10)
    assert not host.allow()  # the probe is in flight: nobody else may go
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert item.attempts == 1
    assert host.allow()  # the cancelled probe gave its turn back
