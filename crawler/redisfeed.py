"""``crawler enqueue``: lines to a job shared through Redis (crawler.redisjob), each with
its fingerprint (as the reader computes it: its dedup key), its host's shard and the line.
While it feeds the job it is a live feeder: workers do not end the job under it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final

from crawler.dedup import fingerprint
from crawler.errors import InvalidURL
from crawler.redisjob import Job, Target, shard_of
from crawler.redislease import redis_errors, stop_if_cancelled
from crawler.request import parse_request_line, request_key
from crawler.urls import parse_target

if TYPE_CHECKING:
    from crawler.inputs import Source

FEEDER_TTL_MS: Final = 10_000


def target(line: str, shards: int) -> Target:
    """``line`` as the job keeps it: an invalid one keyed as the reader keys it (it gets
    its ``invalid_url`` record from a worker, once per distinct line)."""
    try:
        if line[:1] == "{":
            text, request = parse_request_line(line)
            _, key, host = parse_target(text)
            fp = fingerprint(request_key(key, request.method, request.body))
        else:
            _, key, host = parse_target(line)
            fp = fingerprint(key)
    except InvalidURL:
        return Target(fingerprint("\0invalid\0" + line), shard_of(line, shards), line)
    return Target(fp, shard_of(host, shards), line)


async def feed(job: Job, source: Source, me: str) -> tuple[int, int]:
    """Enqueue every line of ``source``: (new, duplicates)."""
    new = seen = 0

    async def beat() -> None:
        while True:
            stop_if_cancelled()  # a cancel lost in a Redis call: see there
            await asyncio.sleep(FEEDER_TTL_MS / 3000)
            with contextlib.suppress(*redis_errors()):  # a blip must not end the beats
                await job.beat("feeders", me, FEEDER_TTL_MS)

    await job.beat("feeders", me, FEEDER_TTL_MS)
    beating = asyncio.ensure_future(beat())
    try:
        async for lines in source.batches():
            seen += len(lines)
            new += await job.enqueue(target(line, job.shards) for line in lines)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError, *redis_errors()):
            await beating
        with contextlib.suppress(*redis_errors()):  # else it lapses in FEEDER_TTL_MS
            await job.beat("feeders", me, 0)
    return new, seen - new
