"""A worker joining a job takes the shards it wants as soon as their leases lapse, not up to
a whole beat (TTL/3) later: against the test's own redis-server (crawler.redislease)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from crawler.redisjob import Job
from crawler.redislease import Leases
from tests.conftest import until
from tests.redisserver import fetch_job, redis_url  # noqa: F401

SHARDS = 2


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    async with fetch_job(redis_url, "h", SHARDS) as made:
        yield made


async def _joined(job: Job) -> tuple[Leases, Leases, int]:
    """Worker a holds every shard; b has joined and wants one of them (held by a)."""
    a, b = Leases(job, "a", 30.0), Leases(job, "b", 30.0)
    await a.beat()  # alone: it takes both shards
    await b.beat()  # wants its share, still a's
    (wanted,) = b.wanted
    assert not b.held and a.valid(wanted)
    return a, b, wanted


async def test_next_beat_comes_as_a_wanted_lease_lapses(job: Job) -> None:
    """While the shard's owner renews it, the joiner beats every TTL/3; once the owner
    gives it back (it lapses TTL/5 later), the joiner's next beat is due as it lapses."""
    a, b, wanted = await _joined(job)
    assert await b.pause() == pytest.approx(b.ttl / 3)
    await a.beat()  # sees b: gives the shard back
    assert not a.valid(wanted)
    pause = await b.pause()
    assert 0 < pause <= a.margin + 0.1 < b.ttl / 3


async def test_worker_takes_a_lapsing_shard_without_waiting_a_beat(job: Job) -> None:
    """Driven by run(): the joiner holds the shard right after it lapses (here 0.1 s after
    being given back), not at its next TTL/3 beat (10 s)."""
    a, b, wanted = await _joined(job)
    await a.beat()  # gives it back
    await job.redis.pexpire(job.key(f"lease:{wanted}"), 100)
    beating = asyncio.ensure_future(b.run())
    try:
        await until(lambda: b.valid(wanted), timeout=5)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
