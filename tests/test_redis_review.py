"""Review of the distributed mode (issue 17): each test is a defect found, in process
against the test's own redis-server (crawler.redisjob's Job, the worker's classes)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crawler.collect import Output, collect
from crawler.redisjob import GROUP, Done, Job, JobError, Target, connect, shard_of
from crawler.redislease import Leases
from crawler.redisworker import Intake, RedisSink, RedisSource
from tests.conftest import until
from tests.redisserver import fetch_job, redis_url, start_redis  # noqa: F401
from tests.test_cli import ENV
from tests.test_redis_worker import until_async

SHARDS = 2


def _target(i: int, host: str = "a.test") -> Target:
    line = f"http://{host}/p/{i}"
    fp = int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little")
    return Target(fp=fp, shard=shard_of(host, SHARDS), line=line)


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    async with fetch_job(redis_url, "r", SHARDS) as made:
        yield made


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


# -- Redis restarted: empty (the job is gone), or with its data (ride it out) -------------
async def _commit_all(job: Job, me: str = "w1") -> int:
    n = 0
    for shard in range(SHARDS):
        token = await job.acquire(shard, me, 60_000)
        assert token is not None
        reply = await job.redis.xreadgroup(GROUP, me, {job.stream(shard): ">"})
        for _, entries in reply:
            done = [Done(e.decode(), f[b"u"] + b"\n", ok=True) for e, f in entries]
            n += await job.commit(shard, token, done)
        await job.release(shard, token)
    return n


async def test_worker_on_a_job_gone_says_so(job: Job) -> None:
    """Redis restarted without persistence: a worker reading a job no longer there ends
    with one line (it spun on NOGROUP errors, and recreated lease keys, for ever)."""
    await job.enqueue(_target(i) for i in range(3))
    intake = await _holder(job, "w1", _target(0).shard)
    source = RedisSource(intake, batch=10, wait=False)
    await job.redis.flushall()
    with pytest.raises(JobError, match="no longer on this Redis server"):
        async with asyncio.timeout(5):
            async for _ in source.batches():
                pass


async def test_collect_on_a_job_gone_is_not_finished(
    job: Job,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A job whose keys vanished read as all zeros, i.e. finished: collect exited 0 as if
    every record had been written."""
    await job.enqueue(_target(i) for i in range(3))
    out = tmp_path / "out.jsonl"
    collecting = asyncio.ensure_future(collect(redis_url, "r", str(out)))
    await until(lambda: (tmp_path / "out.jsonl.collect").exists())
    await job.redis.flushall()
    with pytest.raises(JobError, match="no longer on this Redis server"):
        async with asyncio.timeout(10):
            await collecting


async def test_collect_rides_out_a_redis_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis restarted with its data (here: saved at shutdown): collect tries again and
    goes on (it ended with exit 2 at the first refused connection)."""
    workdir = tmp_path / "redis"
    proc, url = start_redis(workdir)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        redis = await connect(url)
        job = Job(redis, "r")
        await job.create("fetch", {}, shards=SHARDS)
        await job.enqueue(_target(i, f"h{i % 3}.test") for i in range(6))
        out = tmp_path / "out.jsonl"
        collecting = asyncio.ensure_future(collect(url, "r", str(out), retry_for=30))
        await until(lambda: (out.parent / "out.jsonl.collect").exists())
        with contextlib.suppress(Exception):
            await redis.shutdown(save=True)
        proc.wait(timeout=10)
        await redis.aclose()
        said: list[str] = []

        def told() -> bool:
            said.append(capsys.readouterr().err)
            return "Redis does not answer" in "".join(said)

        await until(told)  # collect met the refused connection, and says so
        assert not collecting.done()
        proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        redis = Job(await _connect_when_up(url), "r").redis
        job = Job(redis, "r")
        await job.open()
        assert await _commit_all(job) == 6
        async with asyncio.timeout(20):
            assert await collecting == 0
        assert len(out.read_bytes().splitlines()) == 6
        await redis.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _connect_when_up(url: str) -> Any:
    async with asyncio.timeout(10):
        while True:
            try:
                return await connect(url)
            except JobError:
                await asyncio.sleep(0.05)  # polling with a bound: the server is starting


async def test_fencing_a_lapsed_lease_commits_nothing(job: Job) -> None:
    """A's lease lapses in Redis, B takes the shard: A's late commit is refused and
    changes nothing but the refused count."""
    shard = _target(0).shard
    await job.enqueue([_target(0)])
    a = await job.acquire(shard, "A", 100)
    assert a is not None
    [[_, [(eid, fields)]]] = await job.redis.xreadgroup(GROUP, "A", {job.stream(shard): ">"})

    async def lapsed() -> bool:
        return int(await job.redis.pttl(job.key(f"lease:{shard}"))) < 0

    async with asyncio.timeout(5):
        while not await lapsed():
            await asyncio.sleep(0.01)  # polling with a bound: Redis expires the key
    b = await job.acquire(shard, "B", 60_000)
    assert b is not None and b != a
    before = await job.counts()
    done = [Done(eid.decode(), fields[b"u"] + b"\n", ok=True)]
    assert await job.commit(shard, a, done) == -1
    assert await job.redis.xlen(job.key("out")) == 0
    assert await job.counts() == {**before, "refused": before["refused"] + 1}
    assert list(await _deliveries(job, shard)) == [eid.decode()]  # still pending
    assert await job.commit(shard, b, done) == 1  # the owner's commit is taken


def test_collect_into_a_fifo_refused(tmp_path: Path) -> None:
    """-o a FIFO: the open blocked for ever without a reader; with one, a sidecar was
    written beside it before the error."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the old open returns
    try:
        with pytest.raises(JobError, match="not a regular file"):
            Output(str(fifo), "r").open()
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr/et@127.0.0.1:1/0",  # a '/' in the password
        "redis://user:s3cr@et@127.0.0.1:1/0",  # an '@' in it (not percent-encoded)
        "redis://127.0.0.1:1/0?password=s3cret",  # redis-py takes it from the query too
    ],
)
async def test_redis_password_never_shown(url: str) -> None:
    with pytest.raises(JobError) as raised:
        await connect(url)
    assert "s3cr" not in str(raised.value) and "et@" not in str(raised.value)


async def test_enqueue_redis_gone_mid_feed_one_line(tmp_path: Path) -> None:
    """Redis stopping while enqueue feeds the job: one line, exit 2 (a traceback)."""
    proc, url = start_redis(tmp_path / "redis")
    try:
        enq = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crawler", "enqueue", "--redis", url, "--job", "e",
            env=ENV, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert enq.stdin is not None
        enq.stdin.write(b"http://a.test/1\n")
        client = await connect(url)
        try:
            await until_async(lambda: client.exists("crawler:{e}:feeders"))
        finally:
            await client.aclose()
    finally:
        proc.kill()
        proc.wait()
    enq.stdin.write(b"http://a.test/2\n" * 5000)
    enq.stdin.close()
    async with asyncio.timeout(30):
        err = (await enq.communicate())[1].decode()
    assert enq.returncode == 2, err
    assert err.startswith("crawler: error: ") and err.count("\n") == 1, err


async def test_a_read_takes_from_every_shard_held(job: Job) -> None:
    """XREADGROUP's COUNT is per stream: a batch of 8 over two held shards takes 4 from
    each, not 8 from the first (a few hosts' URLs would fill the frontier, and a paced job
    would run at their pace)."""
    hosts = ["a.test", "e.test"]  # shards 0 and 1
    assert [shard_of(h, SHARDS) for h in hosts] == [0, 1]
    await job.enqueue(_target(i, host) for host in hosts for i in range(20))
    intake = await _holder(job, "w1", 0)
    got = await intake.read(8, 0)
    shards = [shard for (shard, _), _ in got]
    assert sorted(shards) == [0, 0, 0, 0, 1, 1, 1, 1]


async def test_a_lease_given_back_lapses_after_the_margin(job: Job) -> None:
    """A shard given back is not free at once: its lease lapses TTL/5 later, the margin a
    lease that runs out gives, so the next owner's first request to a host cannot follow
    the last one of this worker by less than that (pacing across a hand-over)."""
    leases = Leases(job, "w1", 10.0)
    await leases.beat()
    assert leases.valid(0)
    await leases.leave()
    ttl_ms = await job.redis.pttl(job.key("lease:0"))
    assert 0 < ttl_ms <= 2_000
    assert await job.acquire(0, "w2", 10_000) is None  # not before it lapses


async def test_worker_says_when_redis_goes_and_comes_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker whose Redis stops answering says so once on stderr (it went on silently,
    its leases running out), and once more when Redis is back."""
    workdir = tmp_path / "redis"
    proc, url = start_redis(workdir)
    port = url.rsplit(":", 1)[1].split("/")[0]
    redis = await connect(url)
    leases = Leases(Job(redis, "r"), "w1", 0.3)  # a beat every 0.1 s
    beating = asyncio.ensure_future(leases.run())
    said: list[str] = []

    def told(what: str) -> Any:
        def check() -> bool:
            said.append(capsys.readouterr().err)
            return what in "".join(said)

        return check

    try:
        proc.terminate()
        proc.wait(timeout=10)
        await until(told("crawler worker: Redis does not answer"))
        binary = shutil.which("redis-server") or "redis-server"
        args = ["--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
        proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        await until(told("crawler worker: Redis answers again"))
        assert "".join(said).count("does not answer") == 1
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await redis.aclose()
        proc.terminate()
        proc.wait(timeout=10)
