"""crawler enqueue / crawler worker: a job shared through Redis, done by worker processes.

Real processes (the CLI) against the in-process test server and the test's own
redis-server. What is asserted are the guarantees: every URL's record exactly once in the
job's output stream, per-host limits held across workers, stale commits refused."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web
from redis.asyncio import Redis

from tests.conftest import HOSTS, Recorder, Server, serve_hosts, until
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


# -- crawl jobs ------------------------------------------------------------------------------
def tree_app(rec: Recorder, ports: dict[str, int], size: int) -> web.Application:
    """/p/N links to /p/2N+1 and /p/2N+2 (< size), each on host HOSTS[child % 3], and to
    /hub on the second host: the same links are found on many pages."""

    def at(n: int) -> str:
        host = HOSTS[n % 3]
        return f"http://{host}:{ports[host]}/p/{n}"

    async def page(request: web.Request) -> web.Response:
        rec.hits[f"{request.host.split(':')[0]}{request.path}"] += 1
        n = int(request.match_info["n"])
        kids = [at(c) for c in (2 * n + 1, 2 * n + 2) if c < size]
        hub = f"http://{HOSTS[1]}:{ports[HOSTS[1]]}/hub"
        body = "".join(f'<a href="{href}">x</a>' for href in [*kids, hub])
        return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")

    async def hub(request: web.Request) -> web.Response:
        rec.hits[f"{request.host.split(':')[0]}{request.path}"] += 1
        return web.Response(text="<html><body>hub</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/p/{n}", page)
    app.router.add_get("/hub", hub)
    return app


async def test_crawl_job_two_workers_each_page_once(redis_url: str) -> None:  # noqa: F811
    rec = Recorder()
    ports: dict[str, int] = {}
    async with serve_hosts(tree_app(rec, ports, 63), ports):

        def url(host: str, path: str) -> str:
            return f"http://{host}:{ports[host]}{path}"

        seeds = [url(HOSTS[0], "/p/0"), url(HOSTS[2], "/p/0"), url(HOSTS[1], "/hub")]
        # Job c: --depth 3; job m (at the same time): --max-pages 7.
        makers = [
            await start("crawl", *seeds, "--redis", redis_url, "--ignore-robots", *o)
            for o in (("--job", "c", "--depth", "3"), ("--job", "m", "--max-pages", "7"))
        ]
        made = await asyncio.gather(*(finish(proc) for proc in makers))
        for code, err in made:
            assert code == 0, err
            assert "3 seeds, 3 enqueued" in err
        procs = [await worker(redis_url, job, "--lease-ttl", "2") for job in ("c", "c", "m")]
        for proc in procs:
            code, err = await finish(proc)
            assert code == 0, err
        recs = await records(redis_url, "c")
        # Both /p/0 pages link /p/1 and /p/2; every page links /hub: each done once.
        want = [*seeds, *(url(HOSTS[n % 3], f"/p/{n}") for n in range(1, 15))]
        once_each(recs, want)
        assert all(r["ok"] for r in recs)
        assert max(r.get("depth", 0) for r in recs) == 3  # /p/15.. are at depth 4
        counts = await job_counts(redis_url, "c")
        assert counts["enqueued"] == counts["done"] == len(want)
        # --max-pages is the job's: exact however many pages the workers find at once.
        assert len(await records(redis_url, "m")) == 7


async def job_counts(url: str, job: str) -> dict[str, int]:
    client = Redis.from_url(url)
    try:
        raw = await client.hgetall(f"crawler:{{{job}}}:n")
    finally:
        await client.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


# -- leases ----------------------------------------------------------------------------------
async def lease_owners(url: str, job: str) -> list[str]:
    client = Redis.from_url(url)
    try:
        keys = await client.keys(f"crawler:{{{job}}}:lease:*")
        # A lease may lapse between KEYS and MGET: it has no owner then.
        values = await client.mget(keys) if keys else []
        return [v.decode() for v in values if v is not None]
    finally:
        await client.aclose()


async def test_sigstop_past_ttl_hands_shards_over(server: Server, redis_url: str) -> None:  # noqa: F811
    urls = urls_of(server, 90, "/slow/{i}?s=0.05")
    code, err = await enqueue(redis_url, "s", urls, "--per-host", "1")
    assert code == 0, err
    procs = [await worker(redis_url, "s", "--lease-ttl", "1") for _ in range(2)]
    stopped, other = procs
    await until(lambda: sum(server.rec.hits.values()) >= 6)
    stopped.send_signal(signal.SIGSTOP)
    try:
        mark = f"-{other.pid}-"

        async def taken_over() -> bool:
            owners = await lease_owners(redis_url, "s")
            return len(owners) == 256 and all(mark in o for o in owners)

        await until_async(taken_over)
    finally:
        stopped.send_signal(signal.SIGCONT)
        ended = [await finish(proc) for proc in procs]  # even on a failure: no leftovers
    for code, err in ended:
        assert code == 0, err
    once_each(await records(redis_url, "s"), urls)
    # Its frontier still held URLs of every host: on waking it sent none of them, the
    # hosts being the other worker's now.
    assert max(server.rec.peak.values()) <= 1


async def test_client_pause_longer_than_ttl(server: Server, redis_url: str) -> None:  # noqa: F811
    urls = urls_of(server, 90, "/slow/{i}?s=0.05")
    code, err = await enqueue(redis_url, "q", urls, "--per-host", "1")
    assert code == 0, err
    procs = [await worker(redis_url, "q", "--lease-ttl", "1") for _ in range(2)]
    await until(lambda: sum(server.rec.hits.values()) >= 6)
    client = Redis.from_url(redis_url)
    try:
        paused = time.monotonic()
        await client.execute_command("CLIENT", "PAUSE", 2500, "ALL")
    finally:
        await client.aclose()
    for proc in procs:
        code, err = await finish(proc)
        assert code == 0, err
    once_each(await records(redis_url, "q"), urls)
    # A lease renewed just before the pause ends on the worker's clock by TTL - TTL/5
    # after it: from then until Redis answers again, no request may start.
    starts = [t for times in server.rec.times.values() for t in times]
    during = [t - paused for t in starts if paused + 1.0 <= t < paused + 2.5]
    assert not during, during
    assert any(t > paused + 2.5 for t in starts)  # and they went on


async def until_async(predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)  # polling with a bound


async def test_request_in_flight_cut_at_lease_deadline(server: Server, redis_url: str) -> None:  # noqa: F811
    url = server.url("/hang/1")
    code, err = await enqueue(redis_url, "h", [url], "--timeout", "60")
    assert code == 0, err
    proc = await worker(redis_url, "h", "--lease-ttl", "1")
    await until(lambda: server.rec.hits["/hang/1"] == 1)
    client = Redis.from_url(redis_url)
    try:
        await client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
    finally:
        await client.aclose()
    # Cut at the lease's deadline (the host may be another worker's next), handed back
    # and sent again once the shard is surely this worker's again.
    await until(lambda: server.rec.hits["/hang/1"] == 2, timeout=20)
    server.rec.release.set()
    code, err = await finish(proc)
    assert code == 0, err
    [rec] = await records(redis_url, "h")
    assert rec["ok"]
