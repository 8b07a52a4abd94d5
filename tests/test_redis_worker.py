"""crawler enqueue / crawler worker: a job shared through Redis, done by worker processes.

Real processes (the CLI) against the in-process test server and the test's own
redis-server. What is asserted are the guarantees: every URL's record exactly once in the
job's output stream, per-host limits held across workers, stale commits refused."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from tests.conftest import HOSTS, Server, until
from tests.redisserver import redis_url  # noqa: F401
from tests.test_cli import ENV

CRAWLER = [sys.executable, "-m", "crawler"]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CRAWLER,
        *args,
        env=ENV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str]:
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode()


async def enqueue(url: str, job: str, lines: list[str], *opts: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER,
        "enqueue",
        "--redis",
        url,
        "--job",
        job,
        *opts,
        env=ENV,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate("\n".join(lines).encode() + b"\n")
    return proc.returncode or 0, err.decode()


def worker(url: str, job: str, *opts: str) -> Any:
    return start("worker", "--redis", url, "--job", job, *opts)


async def records(url: str, job: str) -> list[dict[str, Any]]:
    client = Redis.from_url(url)
    try:
        entries = await client.xrange(f"crawler:{{{job}}}:out")
    finally:
        await client.aclose()
    return [orjson.loads(fields[b"r"]) for _, fields in entries]


async def count_records(url: str, job: str) -> int:
    client = Redis.from_url(url)
    try:
        return int(await client.xlen(f"crawler:{{{job}}}:out"))
    finally:
        await client.aclose()


def urls_of(server: Server, n: int, path: str = "/slow/{i}?s=0.01") -> list[str]:
    return [server.url(path.format(i=i), HOSTS[i % 3]) for i in range(n)]


def once_each(recs: list[dict[str, Any]], urls: list[str]) -> None:
    counted = Counter(r["url"] for r in recs)
    assert set(counted) == set(urls)
    assert max(counted.values()) == 1, counted.most_common(3)


async def test_two_workers_every_url_once(server: Server, redis_url: str) -> None:  # noqa: F811
    urls = urls_of(server, 300)
    code, err = await enqueue(redis_url, "j", [*urls, urls[0], "not a url"], "--per-host", "2")
    assert code == 0, err
    assert "301 new, 1 duplicates" in err
    procs = [await worker(redis_url, "j", "--lease-ttl", "2") for _ in range(2)]
    for proc in procs:
        code, err = await finish(proc)
        assert code == 0, err
    recs = await records(redis_url, "j")
    once_each(recs, [*urls, "not a url"])
    assert all(r["ok"] for r in recs if r["url"] != "not a url")
    assert max(server.rec.peak.values()) <= 2


async def test_bad_redis_and_missing_job_one_line(redis_url: str) -> None:  # noqa: F811
    for args in (
        ["worker", "--redis", "http://x", "--job", "j"],
        ["worker", "--redis", "redis://127.0.0.1:1/0", "--job", "j"],
        ["worker", "--redis", redis_url, "--job", "missing"],
        ["worker", "--redis", redis_url, "--job", "bad name"],
    ):
        code, err = await finish(await start(*args))
        assert code == 2, err
        assert err.startswith("crawler: error: ") and err.count("\n") == 1, err


async def test_poison_url_dead_lettered(server: Server, redis_url: str) -> None:  # noqa: F811
    url = server.url("/ok/poison")
    code, err = await enqueue(redis_url, "p", [url])
    assert code == 0, err
    client = Redis.from_url(redis_url)
    try:
        streams = [k for k in await client.keys("crawler:{p}:q:*") if await client.xlen(k)]
        [key] = streams
        [[_, [(eid, _)]]] = await client.xreadgroup("g", "dead-1", {key: ">"})
        for n in range(2, 4):  # two more owners took it and died: delivered 3 times
            await client.xclaim(key, "g", f"dead-{n}", 0, [eid])
    finally:
        await client.aclose()
    code, err = await finish(await worker(redis_url, "p", "--max-deliveries", "3"))
    assert code == 0, err
    [rec] = await records(redis_url, "p")
    assert rec["error"]["kind"] == "dead_letter" and "4" in rec["error"]["message"]
    assert server.rec.hits["/ok/poison"] == 0


@pytest.mark.slow  # ~50 s on a loaded 2-core machine (leases of 256 shards at a 1 s TTL)
async def test_sigkill_a_worker_nothing_lost_or_doubled(
    server: Server,
    redis_url: str,  # noqa: F811
) -> None:
    urls = urls_of(server, 240, "/slow/{i}?s=0.02")
    code, err = await enqueue(redis_url, "k", urls, "--per-host", "2")
    assert code == 0, err
    ttl = ("--lease-ttl", "1")
    procs = [await worker(redis_url, "k", *ttl) for _ in range(3)]
    await until(lambda: sum(server.rec.hits.values()) >= 40, timeout=60)
    procs[0].kill()
    await procs[0].wait()
    procs.append(await worker(redis_url, "k", *ttl))
    for proc in procs[1:]:
        code, err = await finish(proc)
        assert code == 0, err
    once_each(await records(redis_url, "k"), urls)
    assert max(server.rec.peak.values()) <= 2
