"""Pacer (GCRA), dynamic semaphore, AIMD and the per-host table, with a fake clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from crawler.config import BreakerConfig, LimitConfig
from crawler.limiter import AIMD, DynamicSemaphore, HostTable, Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def schedule(pacer: Pacer, n: int, now: float = 0.0) -> list[float]:
    """Start ``n`` requests as early as the pacer allows, from ``now``."""
    starts = []
    for _ in range(n):
        start = pacer.earliest(now)
        pacer.commit(start)
        starts.append(start)
    return starts


def test_pacer_spaces_requests_after_the_burst() -> None:
    starts = schedule(Pacer(rate=10, burst=3), 8)
    assert starts[:3] == [0.0, 0.0, 0.0]  # the burst
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(starts[2:])]
    assert gaps == [0.1] * 5
    # Over a long run the average rate is the configured one.
    many = schedule(Pacer(rate=50, burst=5), 1001)
    assert (1000 - 4) / (many[-1] - many[0]) == pytest.approx(50, rel=0.01)


def test_pacer_idle_time_refills_only_up_to_the_burst() -> None:
    pacer = Pacer(rate=10, burst=2)
    schedule(pacer, 2, now=0.0)
    starts = schedule(pacer, 4, now=100.0)
    assert starts == pytest.approx([100.0, 100.0, 100.1, 100.2])


def test_pacer_allowance_counts_the_requests_that_may_start_now() -> None:
    # The frontier hands out only as many URLs of a host as its pacer allows now.
    pacer = Pacer(rate=10, burst=3)
    assert pacer.allowance(0.0) == 3
    pacer.commit(0.0)
    assert pacer.allowance(0.0) == 2
    pacer.commit(0.0)
    pacer.commit(0.0)
    assert pacer.allowance(0.0) == 0 and pacer.earliest(0.0) == pytest.approx(0.1)
    assert pacer.allowance(pacer.earliest(0.0)) == 1  # one interval later, one more
    assert pacer.allowance(10.0) == 3  # idle time refills only up to the burst
    one = Pacer(rate=2, burst=1)
    assert one.allowance(5.0) == 1
    one.commit(5.0)
    assert one.allowance(5.49) == 0 and one.allowance(5.5) == 1


async def test_dynamic_semaphore_resize() -> None:
    sem = DynamicSemaphore(2)
    await sem.acquire()
    await sem.acquire()
    waiter = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    sem.resize(3)
    await asyncio.wait_for(waiter, 10)
    assert sem.held == 3
    sem.resize(1)  # shrinking never revokes held permits...
    sem.release()
    sem.release()
    blocked = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)
    assert not blocked.done()  # ...but new ones wait until we are under the new limit
    sem.release()
    await asyncio.wait_for(blocked, 10)
    assert sem.held == 1


async def test_dynamic_semaphore_cancelled_waiter_does_not_leak() -> None:
    sem = DynamicSemaphore(1)
    await sem.acquire()
    waiter = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    sem.release()
    assert sem.held == 0
    await asyncio.wait_for(sem.acquire(), 10)


def test_aimd_halves_on_congestion_once_per_cooldown_and_recovers() -> None:
    clock = FakeClock()
    aimd = AIMD(ceiling=16, clock=clock, cooldown=1.0)
    aimd.on_congestion()
    aimd.on_congestion()  # same burst: counted once
    assert aimd.permits == 8
    clock.now += 1.0
    aimd.on_congestion()
    assert aimd.permits == 4
    for _ in range(200):
        aimd.on_success(0.01)
    assert aimd.permits == 16  # additive increase back to the ceiling, never above


def test_aimd_cuts_on_rising_latency() -> None:
    clock = FakeClock()
    aimd = AIMD(ceiling=10, clock=clock)
    for _ in range(100):
        aimd.on_success(0.02)
    assert aimd.permits == 10
    for _ in range(10):
        aimd.on_success(0.5)
        clock.now += 1.0
    assert aimd.permits < 10


def test_aimd_never_below_one() -> None:
    clock = FakeClock()
    aimd = AIMD(ceiling=4, clock=clock)
    for _ in range(10):
        aimd.on_congestion()
        clock.now += 2
    assert aimd.permits == 1


def test_host_table_forgets_idle_hosts() -> None:
    clock = FakeClock()
    table = HostTable(LimitConfig(per_host=2), BreakerConfig(threshold=3, cooldown=5), clock)
    for i in range(1000):
        host = table.get(f"h{i}:80")
        host.active += 1
        host.active -= 1
        table.release(host)
    assert len(table) == 0  # a million-host list does not grow memory


def test_host_table_keeps_state_worth_remembering_until_stale() -> None:
    clock = FakeClock()
    table = HostTable(LimitConfig(per_host_rps=1), BreakerConfig(threshold=1, cooldown=5), clock)
    host = table.get("dead:80")
    assert host.breaker is not None
    host.breaker.record(failure=True)  # breaker now open
    assert host.pacer is not None
    host.pacer.commit(clock())  # a request started: the pacer is ahead of now
    table.release(host)
    assert len(table) == 1
    clock.now += 5.0  # cooldown over, pacer caught up
    assert table.sweep() == 1
    assert len(table) == 0


def test_host_table_forgets_a_throttled_host_after_a_minute() -> None:
    clock = FakeClock()
    table = HostTable(LimitConfig(per_host=8, adaptive=True), BreakerConfig(threshold=0), clock)
    host = table.get("slow:80")
    assert host.aimd is not None
    host.aimd.on_congestion()
    table.release(host)
    assert len(table) == 1  # the lowered limit is remembered while it is fresh
    clock.now += 60
    assert table.sweep() == 1 and len(table) == 0


def test_host_limit_never_exceeds_global() -> None:
    assert LimitConfig(concurrency=4, per_host=10).host_limit == 4
    assert LimitConfig(concurrency=4, per_host=0).host_limit == 4
    assert LimitConfig(concurrency=40, per_host=8).host_limit == 8
