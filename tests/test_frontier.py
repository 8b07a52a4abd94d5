"""The frontier: backpressure, host parking, delayed retries, termination, stop."""

from __future__ import annotations

import asyncio

import pytest

from crawler.config import BreakerConfig, LimitConfig
from crawler.frontier import Frontier
from crawler.limiter import HostTable
from crawler.task import Item
from crawler.urls import host_key, parse_url


def make(maxsize: int = 4, per_host: int = 1) -> Frontier:
    table = HostTable(LimitConfig(per_host=per_host, concurrency=10), BreakerConfig(), lambda: 0.0)
    return Frontier(maxsize, table)


def item(url: str) -> Item:
    u = parse_url(url)
    return Item(url, u, host_key(u))


async def test_put_waits_when_full() -> None:
    f = make(maxsize=2)
    await f.put(item("http://a/1"))
    await f.put(item("http://b/1"))
    blocked = asyncio.create_task(f.put(item("http://c/1")))
    await asyncio.sleep(0)
    assert not blocked.done() and f.queued == 2
    got = await f.get()
    assert got is not None
    await asyncio.wait_for(blocked, 10)
    assert f.queued == 2


async def test_offer_adds_without_waiting_or_refuses_when_full() -> None:
    f = make(maxsize=2)
    getter = asyncio.create_task(f.get())
    await asyncio.sleep(0)  # the getter waits on an empty frontier
    assert f.offer(item("http://a/1"))
    got = await asyncio.wait_for(getter, 10)  # offer() woke it
    assert got is not None and got.raw == "http://a/1"
    assert f.offer(item("http://b/1")) and f.offer(item("http://c/1"))
    assert not f.offer(item("http://d/1"))  # full: nothing done, the caller must wait
    assert f.queued == 2
    f.stop()
    assert f.offer(item("http://e/1"))  # stopped: dropped, as put() drops it
    assert f.queued == 0


async def test_busy_host_is_parked_not_waited_on() -> None:
    f = make(maxsize=10, per_host=1)
    for u in ("http://a/1", "http://a/2", "http://b/1"):
        await f.put(item(u))
    first = await f.get()
    second = await f.get()  # a/2 is parked: host a is full; b/1 comes instead
    assert first is not None and second is not None
    assert (first.raw, second.raw) == ("http://a/1", "http://b/1")
    waiter = asyncio.create_task(f.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    f.done(first)  # frees a's slot: handed straight to the parked a/2
    third = await asyncio.wait_for(waiter, 10)
    assert third is not None and third.raw == "http://a/2"


async def test_ends_when_input_closed_and_nothing_in_flight() -> None:
    f = make()
    await f.put(item("http://a/1"))
    f.close_input()
    it = await f.get()
    assert it is not None
    waiter = asyncio.create_task(f.get())
    await asyncio.sleep(0)
    assert not waiter.done()  # one URL still in flight: it could still retry
    f.done(it)
    assert await asyncio.wait_for(waiter, 10) is None


async def test_retry_later_frees_the_worker_and_comes_back() -> None:
    f = make()
    await f.put(item("http://a/1"))
    await f.put(item("http://b/1"))
    f.close_input()
    a = await f.get()
    assert a is not None
    f.retry_later(a, 0.05)
    b = await f.get()
    assert b is not None and b.raw == "http://b/1"
    f.done(b)
    again = await asyncio.wait_for(f.get(), 10)
    assert again is a
    f.done(a)
    assert await f.get() is None


async def test_stop_returns_everything_not_started() -> None:
    f = make(maxsize=10, per_host=1)
    for u in ("http://a/1", "http://a/2", "http://b/1", "http://c/1"):
        await f.put(item(u))
    a = await f.get()
    assert a is not None
    f.retry_later(a, 60)
    b = await f.get()  # a's slot was freed by the back-off: a/2 goes next
    assert b is not None and b.raw == "http://a/2"
    left = f.stop()
    assert sorted(i.raw for i in left) == ["http://a/1", "http://b/1", "http://c/1"]
    assert await f.get() is None


async def test_cancelled_get_leaves_no_waiter_behind() -> None:
    f = make()
    waiter = asyncio.create_task(f.get())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await f.put(item("http://a/1"))
    assert (await asyncio.wait_for(f.get(), 10)) is not None


async def test_retry_after_stop_is_refused_so_the_url_is_not_lost() -> None:
    f = make()
    await f.put(item("http://a/1"))
    it = await f.get()
    assert it is not None
    assert f.stop() == []
    # A request that was in flight during the grace period asks for a retry: the
    # frontier no longer holds anything, so it says no and the caller records the URL.
    assert f.retry_later(it, 0.01) is False
    assert f.delayed == 0 and f.in_flight == 0
