"""A stopped worker's Redis loops end even when their cancellation was lost in a Redis call.

On Python 3.11, ``asyncio.wait_for`` returns the inner result instead of raising when the
cancel comes as the inner future finishes (CPython gh-86296), and redis-py sends every
command through it: the stop's cancel of the reader (or of the heartbeat) was then lost
and the loop read on, so ``crawler worker --wait`` did not exit after SIGTERM (issue 17).
Here the loss is provoked, not waited for: the intake's (or lease's) Redis call ends
with the cancel requested and caught, as ``wait_for`` leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler import redisfeed
from crawler.rediscrawl import CrawlIntake
from crawler.redisjob import Job, connect
from crawler.redislease import Leases
from crawler.redisworker import Intake, RedisSink, RedisSource
from tests.redisserver import fetch_job, redis_url  # noqa: F401

_BOUND = 5.0  # seconds a stopped loop gets to end (it ends at its next step)


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    async with fetch_job(redis_url, "stop", 2) as made:
        yield made


async def _lose_a_cancel() -> None:
    """The current task is cancelled as a call ends, and the cancel is lost (caught, not
    uncancelled): what ``asyncio.wait_for`` does on Python 3.11."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    assert task.cancelling() == 1


class LosingIntake(Intake):
    """The first read's cancel is lost, as in redis-py's send on Python 3.11."""

    lost = False

    async def read(self, count: int, block_ms: int) -> Any:
        got = await super().read(count, block_ms)
        if not self.lost:
            self.lost = True
            await _lose_a_cancel()
        return got


class LosingLeases(Leases):
    lost = False

    async def beat(self) -> None:
        await super().beat()
        if not self.lost:
            self.lost = True
            await _lose_a_cancel()


async def _intake(job: Job) -> LosingIntake:
    leases = Leases(job, "w1", 60.0)
    await leases.beat()  # the only live worker: it holds every shard
    sink = RedisSink(leases)
    intake = sink.intake = LosingIntake(leases, sink, max_deliveries=3)
    return intake


async def _ends(task: asyncio.Task[None]) -> None:
    done, _ = await asyncio.wait([task], timeout=_BOUND)
    if not done:  # the bug: it runs on; end it for the test's sake
        task.cancel()
        await asyncio.wait([task], timeout=_BOUND)
    assert done, "the loop ran on after its task was cancelled"
    assert task.cancelled()


async def test_reader_ends_after_a_cancel_lost_in_a_redis_call(job: Job) -> None:
    """``--wait``: RedisSource reads until stopped; a cancel lost in its read ends it at
    its next step, not never (the worker hung in its event loop after SIGTERM)."""
    intake = await _intake(job)
    source = RedisSource(intake, batch=16, wait=True)

    async def reader() -> None:
        async for _ in source.batches():
            pass

    await _ends(asyncio.ensure_future(reader()))
    assert intake.lost


async def test_crawl_intake_ends_after_a_cancel_lost_in_a_redis_call(job: Job) -> None:
    """Crawl mode: the reader's task takes links from the intake (Crawling.feed_links)."""
    intake = await _intake(job)
    links = CrawlIntake(intake, [], wait=True)

    async def feeder() -> None:
        while True:
            await links.take(16)
            await asyncio.sleep(0.01)  # feed_links waits for its wake-up (the ticker)

    await _ends(asyncio.ensure_future(feeder()))
    assert intake.lost


async def test_heartbeat_ends_after_a_cancel_lost_in_a_redis_call(job: Job) -> None:
    """The heartbeat, cancelled as the worker leaves, ends: a lost cancel let it beat on
    until ``asyncio.run`` cancelled it again at the very end (and a second loss there
    hung the process)."""
    leases = LosingLeases(job, "w1", 60.0)
    await _ends(asyncio.ensure_future(leases.run()))
    assert leases.lost
    await leases.leave()
    assert not leases.held


class LosingJob(Job):
    """The feeder's heartbeat task is in a beat when feeding ends; the cancel that ends
    it is lost, as in redis-py's send on Python 3.11."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.beating = asyncio.Event()
        self.main: asyncio.Task[Any] | None = None
        self.lost = False

    async def beat(self, zset: str, member: str, ttl_ms: int) -> list[str]:
        if ttl_ms and asyncio.current_task() is not self.main and not self.lost:
            self.beating.set()
            try:
                await asyncio.get_running_loop().create_future()  # until cancelled
            except asyncio.CancelledError:
                self.lost = True  # and not raised: the call "finished" meanwhile
        return await super().beat(zset, member, ttl_ms)


async def test_enqueue_ends_after_a_cancel_lost_in_its_heartbeat(
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``crawler enqueue`` cancels its feeder heartbeat and waits for it: a lost cancel
    kept it beating, and enqueue never ended."""
    monkeypatch.setattr(redisfeed, "FEEDER_TTL_MS", 30)  # a beat every 10 ms
    redis = await connect(redis_url)
    try:
        job = LosingJob(redis, "feed")
        await job.create("fetch", {}, shards=2)

        class Lines:
            async def batches(self) -> AsyncIterator[list[str]]:
                await job.beating.wait()  # the heartbeat is in a beat: feeding ends now
                yield ["http://a.test/1"]

        async def enqueue() -> None:
            job.main = asyncio.current_task()
            await redisfeed.feed(job, Lines(), "feeder-1")  # type: ignore[arg-type]

        feeding = asyncio.ensure_future(enqueue())
        done, _ = await asyncio.wait([feeding], timeout=_BOUND)
        if not done:
            feeding.cancel()
            await asyncio.wait([feeding], timeout=_BOUND)
        assert done, "enqueue waited for a heartbeat that never ended"
        assert job.lost
        assert feeding.result() is None
    finally:
        await redis.aclose()
