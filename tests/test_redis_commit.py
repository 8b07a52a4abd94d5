"""A worker commits each batch of records in one script call over all its shards
(crawler.redisjob.Job.commit_all), each shard fenced by its own lease."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crawler.errors import DeadLetter
from crawler.records import Records
from crawler.redisjob import GROUP, Done, Job, Target, shard_of
from crawler.redislease import Leases
from crawler.redisworker import RedisSink
from tests.redisserver import fetch_job, redis_url, start_redis  # noqa: F401

SHARDS = 4
HOSTS = ("a.test", "b.test", "c.test", "d.test", "e.test", "f.test")


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[Job]:  # noqa: F811
    async with fetch_job(redis_url, "c", SHARDS) as made:
        yield made


async def _one_per_shard(job: Job, shards: int) -> dict[int, tuple[str, bytes]]:
    """One URL enqueued and read (as worker A) on each of ``shards`` shards."""
    by_shard: dict[int, str] = {}
    for host in HOSTS:
        by_shard.setdefault(shard_of(host, SHARDS), host)
    assert len(by_shard) >= shards
    picked = sorted(by_shard)[:shards]
    await job.enqueue(Target(fp=1000 + s, shard=s, line=f"http://{by_shard[s]}/p") for s in picked)
    read: Any = await job.redis.xreadgroup(GROUP, "A", {job.stream(s): ">" for s in picked})
    got = {}
    for name, [(eid, fields)] in read:
        got[int(name.decode().rpartition(":")[2])] = (eid.decode(), fields[b"u"])
    return got


async def _pending(job: Job, shard: int) -> int:
    return int((await job.redis.xpending(job.stream(shard), GROUP))["pending"])


async def test_a_stale_shard_refuses_only_its_own_records(job: Job) -> None:
    """One call, three shards, one of them taken over by another worker: that shard's
    record is refused (still pending, refused +1), the other two are written."""
    entries = await _one_per_shard(job, 3)
    s0, s1, s2 = sorted(entries)
    tokens = {s: await job.acquire(s, "A", 60_000) for s in (s0, s1, s2)}
    await job.redis.set(job.key(f"lease:{s1}"), "B:99")  # s1 moved to B
    batch = [
        (s, str(tokens[s]), [Done(entries[s][0], entries[s][1] + b"\n", ok=s != s2)])
        for s in (s0, s1, s2)
    ]
    before = await job.counts()
    assert await job.commit_all(batch) == [1, -1, 1]
    out: Any = await job.redis.xrange(job.key("out"))
    assert sorted(f[b"r"] for _, f in out) == sorted(entries[s][1] + b"\n" for s in (s0, s2))
    assert await job.counts() == {
        **before,
        "done": before["done"] + 2,
        "failed": before["failed"] + 1,
        "refused": before["refused"] + 1,
    }
    assert [await _pending(job, s) for s in (s0, s1, s2)] == [0, 1, 0]
    # The same batch again (a retry after a lost answer): nothing written twice.
    assert await job.commit_all(batch) == [0, -1, 0]
    assert await job.redis.xlen(job.key("out")) == 2


async def test_the_sink_commits_a_batch_over_shards_in_one_call(job: Job) -> None:
    """Records on three shards, flushed together: one script call; a shard whose lease
    was lost meanwhile has its record refused, the others are committed."""
    entries = await _one_per_shard(job, 3)
    s0, s1, s2 = sorted(entries)
    leases = Leases(job, "A", 60.0)
    await leases.beat()  # the only live worker: it holds every shard
    assert all(leases.valid(s) for s in entries)
    await job.redis.set(job.key(f"lease:{s1}"), "B:99")  # s1 moved to B
    sink = RedisSink(leases)
    records = Records()
    for s, (eid, line) in entries.items():
        sink.dead((s, eid), records.invalid(line.decode(), DeadLetter("test")))

    async def calls() -> int:
        stats: Any = await job.redis.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    assert await job.commit_all([]) == []  # the script loaded (EVALSHA, NOSCRIPT, LOAD)
    before = await calls()
    await sink.aclose()
    assert await calls() - before == 1
    assert (sink.committed, sink.refused) == (2, 1)
    assert await job.redis.xlen(job.key("out")) == 2
    assert [await _pending(job, s) for s in (s0, s1, s2)] == [0, 1, 0]


_GC_PROBE = """
import gc, sys
sys.argv = ["crawler", *sys.argv[1:]]
from crawler.__main__ import main
try:
    main()
except SystemExit as exc:
    print("EXIT", exc.code, file=sys.stderr)
print("GC", gc.isenabled(), file=sys.stderr)
"""


def test_a_worker_runs_with_the_collector_on(redis_url: str) -> None:  # noqa: F811
    """A worker runs as ``crawler fetch`` does (crawler.cli.run.run_loop): the collector,
    off while it starts, is on again for its run (a worker lives for hours: cycles must
    be freed). The job: one URL on a port that refuses, so the worker ends at once."""
    import subprocess
    import sys

    red = ["--redis", redis_url, "--job", "gc"]
    cli = [sys.executable, "-m", "crawler"]
    subprocess.run(
        [*cli, "enqueue", *red, "http://127.0.0.1:9/", "--retries", "0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    done = subprocess.run(
        [sys.executable, "-c", _GC_PROBE, "worker", *red],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr.split()[-4:] == ["EXIT", "0", "GC", "True"], done.stderr
