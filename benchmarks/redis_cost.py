"""What a Redis job costs the Redis server, per URL and per million URLs (issue 17).

    python benchmarks/redis_cost.py [--sizes 100000x3,1000000x1] [--hosts 10000]

Starts its own redis-server (no persistence, a temp dir, a free port). For each size N, RUNS
times (``NxRUNS``; the server flushed in between):

1. enqueue N URLs over ``--hosts`` hosts in batches of 1000 through ``Job.enqueue`` (dedup
   + XADD, one script call per batch): server CPU per URL (INFO cpu, user+sys, and the
   script's own time from INFO commandstats);
2. the worker's side without HTTP: each shard's lease, XREADGROUP 1000 at a time, and
   ``Job.commit`` of a typical record (~280 bytes) per URL in batches of 100: server CPU
   per URL for read+commit, and the script's own time;
3. memory, from used_memory deltas as keys are deleted: the out stream (records not yet
   collected), the shard streams (queued entries; measured before the commit), the dedup
   buckets (their ``OBJECT ENCODING`` checked on a sample), and for comparison a plain
   Redis SET of the same fingerprints (SADD to one key).

CPU figures are medians over the runs (the machine is shared); memory does not vary.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crawler.redisjob import GROUP, Done, Job, Target, connect, shard_of

BATCH = 1000
COMMIT_BATCH = 100
SHARDS = 256


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", workdir, "--protected-mode", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def fingerprint(line: str) -> int:
    return int.from_bytes(hashlib.blake2b(line.encode(), digest_size=8).digest(), "little")


def targets(start: int, stop: int, hosts: int) -> list[Target]:
    out = []
    for i in range(start, stop):
        host = f"host{i % hosts}.example"
        line = f"https://{host}/page/{i}"
        out.append(Target(fp=fingerprint(line), shard=shard_of(host, SHARDS), line=line))
    return out


def record(line: str) -> bytes:
    return (
        orjson.dumps(
            {
                "url": line,
                "final_url": line,
                "status": 200,
                "ok": True,
                "error": None,
                "attempts": 1,
                "elapsed_ms": 12.345,
                "bytes": 5120,
                "content_type": "text/html",
                "redirects": [],
                "fetched_at": "2026-12-01T16:00:00.123456Z",
            }
        )
        + b"\n"
    )


async def cpu(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def script_usec(redis: Any) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def used(redis: Any) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def delete(redis: Any, pattern: str) -> None:
    keys = [k async for k in redis.scan_iter(match=pattern, count=5000)]
    for i in range(0, len(keys), 5000):
        await redis.delete(*keys[i : i + 5000])


async def one_run(url: str, n: int, hosts: int) -> dict[str, float]:
    redis = await connect(url)
    try:
        await redis.flushall()
        job = Job(redis, "bench")
        await job.create("fetch", {}, shards=SHARDS)
        base = await used(redis)

        await redis.config_resetstat()
        cpu0 = await cpu(redis)
        for start in range(0, n, BATCH):
            await job.enqueue(targets(start, min(n, start + BATCH), hosts))
        enq_cpu = await cpu(redis) - cpu0
        enq_script = await script_usec(redis)
        after_enqueue = await used(redis)
        sample = [k async for k in redis.scan_iter(match=job.key("d:*"), count=1000)][:200]
        encodings = {(await redis.object("encoding", k)).decode() for k in sample}
        # The shard streams' share, before the workers take them: their MEMORY USAGE.
        pipe = redis.pipeline(transaction=False)
        for shard in range(SHARDS):
            pipe.memory_usage(job.stream(shard), samples=0)
        streams = sum(int(s or 0) for s in await pipe.execute())

        await redis.config_resetstat()
        cpu0 = await cpu(redis)
        for shard in range(SHARDS):
            token = await job.acquire(shard, "w1", 600_000)
            assert token is not None
            while True:
                reply = await redis.xreadgroup(GROUP, "w1", {job.stream(shard): ">"}, count=BATCH)
                entries = reply[0][1] if reply else []
                if not entries:
                    break
                done = [Done(e.decode(), record(f[b"u"].decode()), ok=True) for e, f in entries]
                for i in range(0, len(done), COMMIT_BATCH):
                    await job.commit(shard, token, done[i : i + COMMIT_BATCH])
        commit_cpu = await cpu(redis) - cpu0
        commit_script = await script_usec(redis)
        counts = await job.counts()
        assert counts["done"] == n, counts

        m0 = await used(redis)
        await redis.delete(job.key("out"))
        m1 = await used(redis)
        await delete(redis, job.key("q:*"))
        m2 = await used(redis)
        await delete(redis, job.key("d:*"))
        m3 = await used(redis)
        for start in range(0, n, 10 * BATCH):
            fps = [t.args()[0] for t in targets(start, min(n, start + 10 * BATCH), hosts)]
            await redis.sadd("plainset", *fps)
        m4 = await used(redis)
        plain_encoding = (await redis.object("encoding", "plainset")).decode()
        return {
            "enqueue_cpu_us": enq_cpu * 1e6 / n,
            "enqueue_script_us": enq_script / n,
            "commit_cpu_us": commit_cpu * 1e6 / n,
            "commit_script_us": commit_script / n,
            "enqueue_total_b": (after_enqueue - base) / n,
            "streams_b": streams / n,
            "out_b": (m0 - m1) / n,
            "dedup_b": (m2 - m3) / n,
            "set_b": (m4 - m3) / n,
            "encodings": ",".join(sorted(encodings)),  # type: ignore[dict-item]
            "set_encoding": plain_encoding,  # type: ignore[dict-item]
            "stale_after_commit_b": (m1 - m2) / n,
        }
    finally:
        await redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000x3,1000000x1", help="N[xRUNS],...")
    ap.add_argument("--hosts", type=int, default=10_000)
    args = ap.parse_args()
    sizes = [(int(n), int(r or 1)) for n, _, r in (s.partition("x") for s in args.sizes.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            version = subprocess.run(
                ["redis-server", "--version"], capture_output=True, text=True, check=False
            ).stdout.split()[2]
            print(
                f"redis-server {version}; {SHARDS} shards; {args.hosts} hosts; batches of "
                f"{BATCH} (enqueue), {COMMIT_BATCH} (commit)"
            )
            for n, count in sizes:
                runs = [asyncio.run(one_run(url, n, args.hosts)) for _ in range(count)]
                report(n, runs)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def report(n: int, runs: list[dict[str, Any]]) -> None:
    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    last = runs[-1]
    per_m = 1e6  # per million URLs
    print(f"\nN = {n:,} URLs (median of {len(runs)} runs)")
    print(
        f"  enqueue: server CPU {med('enqueue_cpu_us'):.2f} us/URL "
        f"(script wall time {med('enqueue_script_us'):.2f}) "
        f"= {med('enqueue_cpu_us'):.2f} s per million"
    )
    print(
        f"  read+commit: server CPU {med('commit_cpu_us'):.2f} us/URL "
        f"(commit script wall time {med('commit_script_us'):.2f}) "
        f"= {med('commit_cpu_us'):.2f} s per million"
    )
    print(f"  memory after enqueue (dedup + queued streams): {med('enqueue_total_b'):.1f} B/URL")
    print(
        f"  dedup buckets: {med('dedup_b'):.1f} B/URL = {med('dedup_b') * per_m / 2**20:.1f} "
        f"MiB per million (encoding: {last['encodings']})"
    )
    print(
        f"  plain SET of the same fingerprints: {med('set_b'):.1f} B/URL = "
        f"{med('set_b') * per_m / 2**20:.1f} MiB per million ({last['set_encoding']})"
    )
    print(
        f"  shard streams (queued entries): {med('streams_b'):.1f} B/URL = "
        f"{med('streams_b') * per_m / 2**20:.1f} MiB per million"
    )
    print(
        f"  out stream (records not collected): {med('out_b'):.1f} B/URL = "
        f"{med('out_b') * per_m / 2**20:.1f} MiB per million"
    )
    print(f"  shard streams after commit (entries XDELed): {med('stale_after_commit_b'):.1f} B/URL")


if __name__ == "__main__":
    main()
