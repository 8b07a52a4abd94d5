"""The frontier's collaborators given at construction (on_idle, on_host_bound, checks_first)
do what the attributes assigned afterwards do."""

from __future__ import annotations

import asyncio

from crawler.config import BreakerConfig, LimitConfig
from crawler.frontier import Frontier
from crawler.limiter import HostTable
from crawler.task import Item
from crawler.urls import parse_target
from tests.conftest import until


def table(per_host_rps: float = 0.0) -> HostTable:
    config = LimitConfig(per_host=1, concurrency=10, per_host_rps=per_host_rps)
    return HostTable(config, BreakerConfig(), lambda: 0.0)


def item(url: str) -> Item:
    parsed, _, host = parse_target(url)
    return Item(url, parsed, host)


async def test_on_idle_is_called_when_the_last_request_ends() -> None:
    idle: list[int] = []
    f = Frontier(4, table(), on_idle=lambda: idle.append(f.in_flight))
    f.offer(item("http://a.test/1"))
    f.offer(item("http://b.test/1"))
    first, second = f.get_nowait(), f.get_nowait()
    assert first is not None and second is not None
    f.done(first)
    assert idle == []  # one still in flight
    f.done(second)
    assert idle == [0]
    f.stop()


async def test_on_host_bound_is_called_once_when_a_worker_waits_on_a_full_host() -> None:
    bound: list[bool] = []
    f = Frontier(4, table(), on_host_bound=lambda: bound.append(True))
    f.offer(item("http://a.test/1"))
    f.offer(item("http://a.test/2"))
    assert f.get_nowait() is not None
    waiter = asyncio.create_task(f.get())  # a.test/2 is parked: its host is full
    await until(lambda: bound)
    assert bound == [True] and not waiter.done()
    f.stop()
    assert await asyncio.wait_for(waiter, 10) is None
    assert bound == [True]


async def test_checks_first_leaves_a_first_hand_out_unpaced() -> None:
    # One request a minute per host: only the first of two URLs of a host may start now,
    # unless the hand-outs are robots.txt checks, which the pacer does not gate.
    for checks_first, handed_out in ((False, 1), (True, 2)):
        f = Frontier(4, table(per_host_rps=1 / 60), checks_first=checks_first)
        assert f.checks_first is checks_first
        f.offer(item("http://a.test/1"))
        f.offer(item("http://a.test/2"))
        got = f.get_nowait()
        assert got is not None
        f.done(got)
        assert (f.get_nowait() is not None) + 1 == handed_out
        f.stop()
