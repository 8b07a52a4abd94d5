"""A worker whose Redis is gone or hangs ends promptly when stopped.

Giving the shards back (``Leases.leave``) and the last commits are goodbyes: if Redis
does not answer, the leases lapse on their TTL and the URLs not committed stay pending
for the shards' next owners. A stop must not wait for redis-py's socket timeouts (here
made a minute: what the old code waited for), nor retry commits until the leases lapse
(here ten minutes away). Redis here is a raw server on 127.0.0.1 that never answers (a
Redis that hangs, or a host gone: the connect waits too), or a port nothing listens on
(a Redis gone: every connect refused at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from crawler.errors import DeadLetter
from crawler.records import Records
from crawler.redisjob import Job
from crawler.redislease import Leases
from crawler.redisworker import Intake, RedisSink

_SOCKET_TIMEOUT = 60.0  # redis-py's waits, for connect and read: the old stop waited them
_TTL = 600.0  # the leases stay valid for the whole test: the old commits retried on
_BOUND = 10.0  # what a test gives a goodbye; each takes GOODBYE (0.2 s here)
_GOODBYE = 0.2


class HangingRedis:
    """A TCP server on 127.0.0.1 that reads and never answers; it notes when a command
    arrived."""

    def __init__(self) -> None:
        self.heard = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        while await reader.read(65536):
            self.heard.set()  # and no answer


@pytest.fixture
async def client() -> AsyncIterator[list[Redis]]:
    """The clients a test made, closed after it."""
    made: list[Redis] = []
    yield made
    for redis in made:
        await redis.aclose()


def _job(url: str, clients: list[Redis]) -> Job:
    redis = Redis.from_url(
        url, socket_timeout=_SOCKET_TIMEOUT, socket_connect_timeout=_SOCKET_TIMEOUT
    )
    clients.append(redis)
    return Job(redis, "down")


def _leases(job: Job) -> Leases:
    """A worker holding shard 0, its lease valid for the whole test."""
    leases = Leases(job, "w1", _TTL)
    leases.goodbye = _GOODBYE
    leases.held[0] = ("w1:1", time.monotonic() + _TTL)
    return leases


def _sink_with_a_record(leases: Leases) -> tuple[RedisSink, Intake]:
    """A sink with one record to commit (entry 1-0 of shard 0, read by this worker)."""
    sink = RedisSink(leases, interval=0.0)
    intake = sink.intake = Intake(leases, sink, max_deliveries=3)
    entry = (0, "1-0")
    intake.mine.add(entry)
    leases.outstanding[0] += 1
    sink.dead(entry, Records().invalid("http://a.test/", DeadLetter("test")))
    return sink, intake


async def test_leave_gives_up_on_a_redis_that_hangs(client: list[Redis]) -> None:
    """Giving the shards back to a Redis that never answers ends after the goodbye's
    bound (it waited for the socket timeout: 5 s to connect, 10.5 s to read)."""
    fake = HangingRedis()
    async with fake as url:
        leases = _leases(_job(url, client))
        async with asyncio.timeout(_BOUND):
            await leases.leave()
        assert fake.heard.is_set()  # it did try
        assert not leases.held


async def test_a_commit_under_way_is_cut_by_the_stop(client: list[Redis]) -> None:
    """The stop comes while a commit waits for a Redis that hangs: the commit gets the
    goodbye's bound from then on, not the socket timeout; its record stays pending in
    Redis (the shard's next owner does that URL again)."""
    fake = HangingRedis()
    async with fake as url:
        leases = _leases(_job(url, client))
        sink, intake = _sink_with_a_record(leases)
        running = asyncio.ensure_future(sink.run())
        try:
            async with asyncio.timeout(_BOUND):
                await fake.heard.wait()  # the commit is sent, and not answered
            sink.close()
            async with asyncio.timeout(_BOUND):
                await running
        finally:
            running.cancel()
        assert (sink.committed, sink.refused) == (0, 0)
        assert not intake.mine
        assert leases.outstanding[0] == 0


async def test_last_commits_stop_retrying_when_redis_is_gone(client: list[Redis]) -> None:
    """Redis gone (nothing listens on its port): the last commits are tried again until
    the goodbye's bound, not until the leases lapse."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed: a connect there is refused
    job = CountingJob(_job(f"redis://127.0.0.1:{port}/0", client).redis, "down")
    leases = _leases(job)
    sink, intake = _sink_with_a_record(leases)
    sink.close()
    async with asyncio.timeout(_BOUND):
        await sink.run()
    assert job.tries >= 1  # it did try: Redis may only blink
    assert sink.committed == 0
    assert not intake.mine


class CountingJob(Job):
    tries = 0

    async def commit_all(self, batch: Any) -> list[int]:
        self.tries += 1
        return await super().commit_all(batch)
