"""Review of the distributed mode (issue 17): each test is a defect found, in process
against the test's own redis-server (crawler.redisjob's Job, the worker's classes)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler.redisjob import GROUP, Done, Job, Target, connect, shard_of
from crawler.redislease import Leases
from crawler.redisworker import Intake, RedisSink
from tests.redisserver import redis_url  # noqa: F401

SHARDS = 2


def _target(i: int, host: str = "a.test") -> Target:
    line = f"http://{host}/p/{i}"
    fp = int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little")
    return Target(fp=fp, shard=shard_of(host, SHARDS), line=line)


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    redis = await connect(redis_url)
    job = Job(redis, "r")
    await job.create("fetch", {}, shards=SHARDS)
    try:
        yield job
    finally:
        await redis.aclose()


async def _deliveries(job: Job, shard: int) -> dict[str, int]:
    got = await job.redis.xpending_range(job.stream(shard), GROUP, "-", "+", 1000)
    return {p["message_id"].decode(): int(p["times_delivered"]) for p in got}


async def _holder(job: Job, me: str, shard: int, ttl: float = 60.0) -> Intake:
    """An intake of worker ``me`` holding ``shard`` (and live: its heartbeat)."""
    leases = Leases(job, me, ttl)
    await leases.beat()  # joins; with one live worker it holds every shard
    assert leases.valid(shard)
    return Intake(leases, RedisSink(leases), max_deliveries=3)


async def test_reclaim_counts_no_delivery_for_entries_being_done(job: Job) -> None:
    """A new owner takes a dead worker's pending entries in batches: the entries it is
    already doing are not claimed again (XCLAIM counts a delivery each time, and three
    such counts dead-letter a URL never fetched), and the batches after the first are
    taken too (not left until the shard is idle)."""
    shard = _target(0).shard
    await job.enqueue(_target(i) for i in range(6))
    await job.redis.xreadgroup(GROUP, "dead", {job.stream(shard): ">"})  # delivered once
    intake = await _holder(job, "w1", shard)
    first = await intake.read(2, 0)
    second = await intake.read(2, 0)
    third = await intake.read(2, 0)
    taken = [entry for batch in (first, second, third) for entry, _ in batch]
    assert len(set(taken)) == 6
    counts = await _deliveries(job, shard)
    assert sorted(counts.values()) == [2] * 6, counts


async def test_entry_handed_back_by_a_live_worker_is_not_counted(job: Job) -> None:
    """Lease churn is not a crash: entries a live worker handed back are taken again
    without a delivery counted, so churn alone never dead-letters a URL."""
    shard = _target(0).shard
    await job.enqueue(_target(i) for i in range(3))
    await job.beat("workers", "w0", 60_000)  # w0 lives (it lost this shard, not its life)
    stream = job.stream(shard)
    [[_, entries]] = await job.redis.xreadgroup(GROUP, "w0", {stream: ">"})
    # Handed back by w0 three times already (each lease it lost): delivered 3 times.
    await job.redis.xclaim(stream, GROUP, "w0", 0, [e for e, _ in entries], retrycount=3)
    before = await _deliveries(job, shard)
    assert len(before) == 3 and set(before.values()) == {3}
    intake = await _holder(job, "w1", shard)
    got = await intake.read(10, 0)
    assert len(got) == 3  # taken to be fetched, not dead-lettered
    assert await _deliveries(job, shard) == before
