"""``crawler worker --redis URL --job NAME``: one worker of a job shared through Redis
(crawler.redisjob), the same pipeline as a run on its own with another world behind the
engine's seams (as ``crawler.shardworker`` is for ``--workers N``):

    Leases (heartbeat) --which shards are ours--> RedisSource: XAUTOCLAIM (a previous
        owner's pending entries first), then XREADGROUP --lines--> Reader --claim-->
        RedisSeen (every line FRESH: dedup happened at enqueue; it notes fp -> entry)
    Frontier --> Workers --GatedFetcher: the host's shard lease still valid?-->
        RedisSink: records grouped by shard, one commit script per shard per batch

A URL is never popped: it stays pending until a commit with the shard's current lease
token writes its record (a stale owner's commit is refused), so a worker that dies, is
paused past its lease or loses Redis loses nothing; the next owner does those URLs again
and their records are written once. Before each attempt the gate checks that the lease
on the URL's shard is still valid on this process's own monotonic clock (its deadline is
the start of the acquire/renew call + TTL - a margin): if not, the URL is handed back
(no record; crawler.errors.HandBack).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Final

from crawler.errors import DeadLetter, HandBack
from crawler.inputs import Uncounted
from crawler.records import Records, encode
from crawler.redisjob import GROUP, Done, Job, rendezvous
from crawler.stores import FRESH
from crawler.urls import host_key

if TYPE_CHECKING:
    from yarl import URL

    from crawler.config import RunConfig
    from crawler.engine import RunResult
    from crawler.fetcher import Fetcher
    from crawler.linkqueue import Link
    from crawler.records import Record

_BLOCK_MS: Final = 500  # XREADGROUP's wait when nothing is queued
_RETRY: Final = 0.25  # seconds between tries while Redis does not answer
_BATCH: Final = 256  # entries read at a time
Entry = tuple[int, str]  # (shard, stream entry id)


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class Leases:
    """The shards this worker owns, renewed by ``run()`` every TTL/3; rendezvous hashing
    over the live workers says which it should own."""

    def __init__(self, job: Job, me: str, ttl: float) -> None:
        self.job = job
        self.me = me
        self.ttl = ttl
        self.margin = ttl / 5
        self.held: dict[int, tuple[str, float]] = {}  # shard -> (token, deadline)
        self.outstanding: defaultdict[int, int] = defaultdict(int)  # entries being done
        self.claims: list[int] = []  # shards acquired whose old pending entries to take
        self.changed = asyncio.Event()
        self.stopping = False

    def valid(self, shard: int) -> bool:
        held = self.held.get(shard)
        return held is not None and time.monotonic() < held[1]

    def token(self, shard: int) -> str | None:
        held = self.held.get(shard)
        return None if held is None else held[0]

    async def beat(self) -> None:
        job, me, ttl_ms = self.job, self.me, int(self.ttl * 1000)
        live = await job.beat("workers", me, ttl_ms)
        if me not in live:
            live.append(me)
        for shard in range(job.shards):
            wanted = rendezvous(shard, live) == me and not self.stopping
            held = self.held.get(shard)
            started = time.monotonic()
            if held is not None:
                if not wanted and self.outstanding[shard] <= 0:
                    del self.held[shard]
                    await job.release(shard, held[0])
                elif await job.renew(shard, held[0], ttl_ms):
                    self.held[shard] = (held[0], started + self.ttl - self.margin)
                else:
                    del self.held[shard]  # lost: the gate hands its URLs back
            elif wanted:
                token = await job.acquire(shard, me, ttl_ms)
                if token is not None:
                    self.held[shard] = (token, started + self.ttl - self.margin)
                    self.claims.append(shard)
                    self.changed.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(*_redis_errors()):
                await self.beat()
            await asyncio.sleep(self.ttl / 3)

    async def leave(self) -> None:
        """Give every shard back and leave the live workers."""
        for shard, (token, _) in list(self.held.items()):
            with contextlib.suppress(*_redis_errors()):
                await self.job.release(shard, token)
        self.held.clear()
        with contextlib.suppress(*_redis_errors()):
            await self.job.beat("workers", self.me, 0)


class RedisSource(Uncounted):
    """The lines of the shards this worker holds, batch by batch; ``current`` says which
    (shard, entry) each line of the batch is."""

    lines_total: int | None = None
    eof = False

    def __init__(
        self,
        leases: Leases,
        sink: RedisSink,
        *,
        batch: int,
        wait: bool,
        max_deliveries: int,
    ) -> None:
        self.leases = leases
        self.job = leases.job
        self.sink = sink
        self.batch = batch
        self.wait = wait
        self.max_deliveries = max_deliveries
        self.lines_read = 0
        self.current: list[Entry] = []
        self.mine: set[Entry] = set()  # read and not yet committed or handed back
        self._records = Records()

    async def batches(self) -> AsyncIterator[list[str]]:
        while True:
            try:
                got = await self._next()
            except _redis_errors():
                await asyncio.sleep(_RETRY)  # Redis away: try again, the leases run out
                continue
            if got is None:
                break
            if got:
                self.lines_read += len(got)
                yield got
        self.eof = True

    async def _next(self) -> list[str] | None:
        """A batch (maybe empty), or None: the job is finished."""
        leases = self.leases
        while leases.claims:
            shard = leases.claims[0]
            lines = await self._reclaim(shard) if leases.valid(shard) else []
            if lines:
                return lines
            leases.claims.pop(0)
        held = [s for s in leases.held if leases.valid(s)]
        if held:
            redis = self.job.redis
            streams: dict[Any, Any] = {self.job.stream(s): ">" for s in held}
            got = await redis.xreadgroup(
                GROUP, leases.me, streams, count=self.batch, block=_BLOCK_MS
            )
            if got:
                return self._take(got)
        else:
            leases.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_BLOCK_MS / 1000):
                    await leases.changed.wait()
        if not self.wait and not self.mine and await self.job.finished():
            return None
        return []

    def _take(self, got: Any) -> list[str]:
        lines: list[str] = []
        current: list[Entry] = []
        prefix = len(self.job.stream(0)) - 1
        for name, entries in got:
            shard = int(name[prefix:])
            for eid, fields in entries:
                entry = (shard, eid.decode())
                if entry in self.mine or b"u" not in fields:
                    continue
                self._mine(entry)
                current.append(entry)
                lines.append(fields[b"u"].decode("utf-8", "surrogateescape"))
        self.current = current
        return lines

    def _mine(self, entry: Entry) -> None:
        self.mine.add(entry)
        self.leases.outstanding[entry[0]] += 1

    async def _reclaim(self, shard: int) -> list[str]:
        """The previous owner's pending entries of ``shard`` (the lease is ours, so any
        idle time is safe); those delivered too often get a dead-letter record."""
        redis, key, me = self.job.redis, self.job.stream(shard), self.leases.me
        _, entries, *_ = await redis.xautoclaim(key, GROUP, me, 0, "0-0", count=self.batch)
        entries = [(eid, fields) for eid, fields in entries if fields]
        if not entries:
            return []
        ids = [eid for eid, _ in entries]
        pending = await redis.xpending_range(key, GROUP, ids[0], ids[-1], len(ids) * 2, me)
        counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        fresh: list[tuple[bytes, dict[bytes, bytes]]] = []
        for eid, fields in entries:
            entry = (shard, eid.decode())
            if entry in self.mine:
                continue
            delivered: int = counts.get(eid, 1)
            if delivered > self.max_deliveries:
                self._mine(entry)
                line = fields[b"u"].decode("utf-8", "surrogateescape")
                error = DeadLetter(
                    f"delivered {delivered} times (--max-deliveries {self.max_deliveries})"
                    " without a record: each worker died or lost its shard"
                )
                self.sink.dead(entry, self._records.invalid(line, error))
            else:
                fresh.append((eid, fields))
        return self._take([(key.encode(), fresh)]) if fresh else []


class RedisSeen:
    """Every line is new (dedup happened at enqueue); notes which entry each
    fingerprint of the batch is, for the record's commit."""

    def __init__(self, source: RedisSource, sink: RedisSink) -> None:
        self._source = source
        self._sink = sink

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        if not remember_done:
            entries = self._source.current
            waiting = self._sink.waiting
            for fp, entry in zip(fps, entries, strict=True):
                waiting[fp].append(entry)
        return [FRESH] * len(fps)


class RedisSink:
    """Records to the job's ``out`` stream, committed per shard with the lease token
    (crawler.redisjob.Job.commit); a refused commit drops its records (the shard's new
    owner does those URLs again)."""

    broken = False
    lost = 0
    behind = False

    def __init__(self, leases: Leases, interval: float = 0.05) -> None:
        self.leases = leases
        self.source: RedisSource | None = None
        self.waiting: defaultdict[int, list[Entry]] = defaultdict(list)  # fp -> entries
        self._done: defaultdict[int, list[Done]] = defaultdict(list)
        self._interval = interval
        self._kick = asyncio.Event()
        self._closing = False
        self.committed = 0
        self.refused = 0

    async def open(self) -> None:
        pass

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        entries = self.waiting.get(fp or 0)
        if not entries:  # no entry (a record with no fingerprint): not the job's
            self.lost += 1
            return
        shard, eid = entries.pop(0)
        if not entries:
            del self.waiting[fp or 0]
        self._done[shard].append(Done(eid, encode(record), record.ok))
        self._kick.set()

    def dead(self, entry: Entry, record: Record) -> None:
        self._done[entry[0]].append(Done(entry[1], encode(record), False, dead=True))
        self._kick.set()

    def left(self, fp: int) -> None:
        """A URL handed back (its shard is no longer ours): it stays pending."""
        entries = self.waiting.get(fp)
        if entries:
            self._forget(entries.pop(0))
            if not entries:
                del self.waiting[fp]

    def _forget(self, entry: Entry) -> None:
        if self.source is not None:
            self.source.mine.discard(entry)
        self.leases.outstanding[entry[0]] -= 1

    async def backpressure(self) -> None:
        pass

    async def _flush(self) -> None:
        done, self._done = self._done, defaultdict(list)
        for shard, items in done.items():
            token = self.leases.token(shard)
            while token is not None:
                try:
                    n = await self.leases.job.commit(shard, token, items)
                except _redis_errors():
                    if self._closing and not self.leases.valid(shard):
                        break  # ending, and the shard is no longer surely ours
                    await asyncio.sleep(_RETRY)  # a repeated commit writes nothing twice
                    continue
                if n < 0:
                    self.refused += len(items)
                else:
                    self.committed += len(items)
                break
            for item in items:
                self._forget((shard, item.entry))

    async def run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self._closing:
                await asyncio.sleep(self._interval)  # gather a batch
            await self._flush()
            if self._closing:
                return

    def close(self) -> None:
        self._closing = True
        self._kick.set()

    def abandon(self) -> None:
        pass

    async def aclose(self) -> None:
        self._closing = True
        await self._flush()


class GatedFetcher:
    """The run's fetcher behind the leases: an attempt at a host whose shard lease is not
    valid now is not sent (HandBack)."""

    def __init__(self, inner: Fetcher, leases: Leases) -> None:
        self._inner = inner
        self._leases = leases
        self._shards: dict[str, int] = {}

    def fetch(
        self,
        url: URL,
        budget: float,
        keep: int,
        follow: Callable[[URL], bool] | None,
        credentials: bool,
        request: Any,
    ) -> Any:
        key = host_key(url)
        shard = self._shards.get(key)
        if shard is None:
            from crawler.redisjob import shard_of

            shard = self._shards[key] = shard_of(key, self._leases.job.shards)
        if not self._leases.valid(shard):
            raise HandBack(key)
        return self._inner.fetch(url, budget, keep, follow, credentials, request)


async def work(
    job: Job,
    me: str,
    config: RunConfig,
    *,
    wait: bool,
    ttl: float,
    max_deliveries: int,
) -> tuple[RunResult, RedisSink]:
    """Work on ``job`` until it is finished (``wait``: until stopped); the run's result
    and its sink (what it committed)."""
    from crawler.engine import Engine
    from crawler.shardio import StandInLedger
    from crawler.stores import MemoryQueue, Stores

    leases = Leases(job, me, ttl)
    sink = RedisSink(leases)
    source = RedisSource(leases, sink, batch=_BATCH, wait=wait, max_deliveries=max_deliveries)
    sink.source = source
    # Durable: a URL the stop cuts off gets no record, it stays pending for another owner.
    stores = Stores(
        RedisSeen(source, sink), StandInLedger(True, False), MemoryQueue(config.limits.queue_size)
    )
    engine = Engine(
        config,
        source,
        stores=stores,
        sink=lambda cfg, ledger, hooks: sink,
        gate=lambda fetcher: GatedFetcher(fetcher, leases),
    )
    beating = asyncio.ensure_future(leases.run())
    try:
        result = await engine.run()
    finally:
        beating.cancel()
        leases.stopping = True
        await leases.leave()
    return result, sink
