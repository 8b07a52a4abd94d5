"""The state of a Redis job (``crawler status``), read without changing it: counts, queued
and in-flight entries, who holds which shard, what collect has not taken yet, memory.

Every per-shard query goes in one pipeline (one round trip for the S shards). The memory of
the dedup buckets of a big job is estimated from a sample of them: fingerprints spread
evenly over the buckets, so a few hundred of the 65,536 tell the total within a few per
cent.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Final

from crawler.redisjob import BUCKET_SHIFT, GROUP, Job

if TYPE_CHECKING:
    from redis.asyncio import Redis

BUCKETS: Final = 1 << (64 - BUCKET_SHIFT)
BUCKET_SAMPLE: Final = 256
SMALL_DB: Final = 20_000  # keys: below this, every dedup bucket is measured


async def job_status(job: Job, *, sample: int = BUCKET_SAMPLE) -> dict[str, Any]:
    """The job's state as plain data (what ``crawler status --json`` prints)."""
    redis: Redis = job.redis
    counts = await job.counts()
    pipe = redis.pipeline(transaction=False)
    for shard in range(job.shards):
        pipe.xlen(job.stream(shard))
        pipe.xpending(job.stream(shard), GROUP)
        pipe.get(job.key(f"lease:{shard}"))
    per_shard = await pipe.execute()

    entries = pending = 0
    owners: dict[str, list[int]] = {}
    in_flight: dict[str, int] = {}
    for shard in range(job.shards):
        length, summary, token = per_shard[3 * shard : 3 * shard + 3]
        entries += int(length)
        pending += int(summary["pending"])
        for consumer in summary.get("consumers") or ():
            name = _text(consumer["name"])
            in_flight[name] = in_flight.get(name, 0) + int(consumer["pending"])
        if token is not None:
            owner = _text(token).rpartition(":")[0]
            owners.setdefault(owner, []).append(shard)

    now_ms = await _now_ms(redis)
    members: list[Any] = await redis.zrange(job.key("workers"), now_ms, "+inf", byscore=True)
    live = [_text(m) for m in members]
    feeders = await redis.zcount(job.key("feeders"), now_ms, "+inf")
    workers = [
        {
            "id": worker,
            "live": worker in live,
            "shards": sorted(owners.get(worker, ())),
            "in_flight": sum(n for c, n in in_flight.items() if _owner(c, live) == worker),
        }
        for worker in sorted(set(live) | set(owners) | _workers_of(in_flight, live))
    ]

    out_len = int(await redis.xlen(job.key("out")))
    return {
        "job": job.name,
        "mode": job.mode,
        "shards": job.shards,
        "enqueued": counts["enqueued"],
        "done": counts["done"],
        "failed": counts["failed"],
        "dead_lettered": counts["dead"],
        "refused": counts["refused"],
        "queued": entries - pending,
        "in_flight": pending,
        "workers": workers,
        "feeders": int(feeders),
        "not_collected": out_len,
        "memory": await _memory(job, sample),
        "finished": await job.finished(),
    }


async def _now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _owner(consumer: str, live: list[str]) -> str:
    """The worker a consumer of the group belongs to: its name, or a live worker's id
    that its name starts with (a consumer named per lease, ``worker:epoch``)."""
    if consumer in live:
        return consumer
    base = consumer.rpartition(":")[0]
    return base if base in live else consumer


def _workers_of(in_flight: dict[str, int], live: list[str]) -> set[str]:
    return {_owner(c, live) for c, n in in_flight.items() if n}


async def _memory(job: Job, sample: int) -> dict[str, int]:
    """Bytes: the server's total, and the job's dedup buckets, queues and output stream.
    The buckets are all measured on a small server, else estimated from a sample."""
    redis = job.redis
    info = await redis.info("memory")
    if await redis.dbsize() <= SMALL_DB:
        buckets = [k async for k in redis.scan_iter(match=job.key("d:*"), count=1000)]
        scale = 1.0
    else:
        picked = random.sample(range(BUCKETS), min(sample, BUCKETS))
        buckets = [job.key(f"d:{bucket}") for bucket in picked]
        scale = BUCKETS / max(1, len(picked))
    pipe = redis.pipeline(transaction=False)
    for key in buckets:
        pipe.memory_usage(key)
    for shard in range(job.shards):
        pipe.memory_usage(job.key(f"q:{shard}"))
    pipe.memory_usage(job.key("out"))
    sizes = [int(s or 0) for s in await pipe.execute()]
    return {
        "used_memory": int(info["used_memory"]),
        "dedup": round(sum(sizes[: len(buckets)]) * scale),
        "queues": sum(sizes[len(buckets) : len(buckets) + job.shards]),
        "out": sizes[-1],
    }
