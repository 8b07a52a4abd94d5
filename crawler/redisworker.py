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
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from crawler.errors import DeadLetter
from crawler.inputs import Uncounted
from crawler.records import Records, encode
from crawler.redisjob import GROUP, Done, Job, Target, shard_of
from crawler.redislease import GatedFetcher, Leases, check_job, redis_errors, stop_if_cancelled
from crawler.stores import FRESH
from crawler.urls import host_key

if TYPE_CHECKING:
    from crawler.config import RunConfig
    from crawler.engine import RunResult
    from crawler.linkqueue import Link
    from crawler.records import Record

_POLL_MS: Final = 250  # XREADGROUP's wait when nothing is queued
_SWEEP: Final = 1.0  # seconds between looks for stray pending entries
_RETRY: Final = 0.25  # seconds between tries while Redis does not answer
_BATCH: Final = 256  # entries read at a time
Entry = tuple[int, str]  # (shard, stream entry id)


class Intake:
    """Entries of the shards this worker holds: a newly held shard's pending entries
    first (XAUTOCLAIM: a previous owner's), then new ones (XREADGROUP). When it finds
    nothing, it looks (at most every _SWEEP s) for entries pending on a held shard it is
    not working on (handed back, or delivered to a stale owner's late read) and takes
    them again."""

    def __init__(self, leases: Leases, sink: RedisSink, *, max_deliveries: int) -> None:
        self.leases = leases
        self.job = leases.job
        self.sink = sink
        self.max_deliveries = max_deliveries
        self.mine: set[Entry] = set()  # read and not yet committed or handed back
        self._records = Records()
        self._swept = 0.0

    async def read(self, count: int, block_ms: int) -> list[tuple[Entry, dict[bytes, bytes]]]:
        """Up to ``count`` entries (maybe none, after waiting up to ``block_ms``)."""
        leases = self.leases
        while leases.claims:
            shard = leases.claims[0]
            got = await self._reclaim(shard, count) if leases.valid(shard) else []
            if got:
                return got
            leases.claims.pop(0)
        readable = leases.readable()
        if readable:
            # Not past the earliest lease deadline: a read answered after it would
            # give entries to a stale owner.
            left = min(leases.held[s][1] for s in readable) - time.monotonic()
            block = max(1, min(block_ms, int(left * 1000) - 1)) if block_ms else None
            streams: dict[Any, Any] = {self.job.stream(s): ">" for s in readable}
            read: Any = await self.job.redis.xreadgroup(
                # COUNT is per stream: an equal part of the batch from each shard, or
                # a few hosts' URLs fill the frontier and the job runs at their pace.
                GROUP,
                leases.me,
                streams,
                count=max(1, count // len(streams)),
                block=block,
            )
            if read:
                return self._take(read)
            await self._sweep(readable)
        elif block_ms:
            leases.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block_ms / 1000):
                    await leases.changed.wait()
        return []

    async def finished(self) -> bool:
        return not self.mine and await self.job.finished()

    async def _sweep(self, readable: list[int]) -> None:
        now = time.monotonic()
        if now - self._swept < _SWEEP:
            return
        self._swept = now
        idle = [s for s in readable if self.leases.outstanding[s] <= 0]
        if not idle:
            return
        pipe = self.job.redis.pipeline(transaction=False)
        for shard in idle:
            pipe.xpending(self.job.stream(shard), GROUP)
        for shard, summary in zip(idle, await pipe.execute(), strict=True):
            if summary["pending"]:
                self.leases.claims.append(shard)

    def _take(self, got: Any) -> list[tuple[Entry, dict[bytes, bytes]]]:
        taken: list[tuple[Entry, dict[bytes, bytes]]] = []
        prefix = len(self.job.stream(0)) - 1
        for name, entries in got:
            shard = int(name[prefix:])
            for eid, fields in entries:
                entry = (shard, eid.decode())
                if entry in self.mine or b"u" not in fields:
                    continue
                self._mine(entry)
                taken.append((entry, fields))
        return taken

    def _mine(self, entry: Entry) -> None:
        self.mine.add(entry)
        self.leases.outstanding[entry[0]] += 1

    def forget(self, entry: Entry) -> None:
        self.mine.discard(entry)
        self.leases.outstanding[entry[0]] -= 1

    async def _reclaim(self, shard: int, count: int) -> list[tuple[Entry, dict[bytes, bytes]]]:
        """Up to ``count`` pending entries of ``shard`` not being done here, oldest first
        (the lease is ours, so any idle time is safe). They are listed first (XPENDING
        changes nothing) and only those taken are claimed: XCLAIM counts a delivery, so
        an entry being done here is never claimed again. A delivery counts when the
        worker that had the entry is gone (its heartbeat lapsed: it died, was stopped or
        lost Redis); an entry a live worker handed back (its lease lapsed or moved) is
        taken again with its count as it was. Past ``max_deliveries`` an entry gets a
        dead-letter record instead."""
        redis, key, me = self.job.redis, self.job.stream(shard), self.leases.me
        mine = self.mine
        # The entries being done here are at most outstanding[shard] of those listed.
        listed: list[dict[str, Any]] = await redis.xpending_range(
            key, GROUP, "-", "+", count + max(0, self.leases.outstanding[shard])
        )
        todo = [p for p in listed if (shard, p["message_id"].decode()) not in mine][:count]
        if not todo:
            return []
        live = {*await self.job.live("workers"), me}
        by_count: defaultdict[int, list[Any]] = defaultdict(list)
        for p in todo:
            n = int(p["times_delivered"])
            gone = _text(p["consumer"]) not in live
            by_count[n + 1 if gone else n].append(p["message_id"])
        pipe = redis.pipeline(transaction=False)
        for n, ids in by_count.items():
            pipe.xclaim(key, GROUP, me, 0, ids, retrycount=n)
        fresh: list[tuple[bytes, dict[bytes, bytes]]] = []
        for delivered, claimed in zip(by_count, await pipe.execute(), strict=True):
            for eid, fields in claimed:
                if not fields:
                    continue  # deleted meanwhile
                if delivered > self.max_deliveries:
                    entry = (shard, eid.decode())
                    self._mine(entry)
                    line = fields[b"u"].decode("utf-8", "surrogateescape")
                    error = DeadLetter(
                        f"delivered {delivered} times (--max-deliveries "
                        f"{self.max_deliveries}) without a record: each worker died or "
                        "lost Redis"
                    )
                    self.sink.dead(entry, self._records.invalid(line, error))
                else:
                    fresh.append((eid, fields))
        fresh.sort(key=lambda item: _stream_id(item[0]))
        return self._take([(key.encode(), fresh)]) if fresh else []


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _stream_id(eid: bytes) -> tuple[int, int]:
    ms, _, seq = eid.partition(b"-")
    return int(ms), int(seq or 0)


class RedisSource(Uncounted):
    """Fetch mode: the lines of the entries the intake reads, batch by batch; ``current``
    says which (shard, entry) each line of the batch is."""

    lines_total: int | None = None
    eof = False

    def __init__(self, intake: Intake, *, batch: int, wait: bool) -> None:
        self.intake = intake
        self.batch = batch
        self.wait = wait
        self.lines_read = 0
        self.current: list[Entry] = []

    async def batches(self) -> AsyncIterator[list[str]]:
        intake = self.intake
        while True:
            stop_if_cancelled()  # the stop cancelled the reader, in a Redis call: see there
            try:
                got = await intake.read(self.batch, _POLL_MS)
                if not got and not self.wait and await intake.finished():
                    break
            except redis_errors():
                await check_job(intake.job)  # the job gone: one line, exit 2
                await asyncio.sleep(_RETRY)  # Redis away: try again, the leases run out
                continue
            if got:
                self.current = [entry for entry, _ in got]
                lines = [f[b"u"].decode("utf-8", "surrogateescape") for _, f in got]
                self.lines_read += len(lines)
                yield lines
        self.eof = True


class RedisSeen:
    """Every line is new (dedup happened at enqueue); notes which entry each
    fingerprint of the batch is, for the record's commit."""

    def __init__(self, source: Any, sink: RedisSink) -> None:
        self._source = source  # its ``current``: the entries of the batch read
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
        self.intake: Intake | None = None
        self.shards = leases.job.shards
        self.waiting: defaultdict[int, list[Entry]] = defaultdict(list)  # fp -> entries
        self._done: defaultdict[int, list[Done]] = defaultdict(list)
        self._interval = interval
        self._kick = asyncio.Event()
        self._closing = False
        self._stop_by: float | None = None  # loop time the last commits give up at
        self._attempt: asyncio.Timeout | None = None  # the commit under way
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
        targets = [self._target(link) for link in links] if links else ()
        self._done[shard].append(Done(eid, encode(record), record.ok, targets))
        self._kick.set()

    def _target(self, link: Link) -> Target:
        """A link as the job enqueues it (in its host's shard), with its page's record."""
        from yarl import URL

        shard = shard_of(host_key(URL(link.url)), self.shards)
        return Target(link.fp, shard, link.url, link.depth, link.parent)

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
        if self.intake is not None:
            self.intake.forget(entry)

    async def backpressure(self) -> None:
        pass

    async def _flush(self) -> None:
        """Commit the records done since the last flush: every shard of the batch in one
        script call (crawler.redisjob.Job.commit_all), each fenced by its own lease."""
        done, self._done = self._done, defaultdict(list)
        batch: list[tuple[int, str, list[Done]]] = []
        for shard, items in done.items():
            token = self.leases.token(shard)
            if token is not None:
                batch.append((shard, token, items))
        while batch:
            try:
                async with asyncio.timeout_at(self._stop_by) as self._attempt:
                    answers = await self.leases.job.commit_all(batch)
            except redis_errors():  # TimeoutError (the goodbye's bound) too
                if self._closing:  # ending: only the shards still surely ours, in time
                    late = asyncio.get_running_loop().time() >= (self._stop_by or 0.0)
                    batch = [] if late else [b for b in batch if self.leases.valid(b[0])]
                if batch:
                    await asyncio.sleep(_RETRY)  # a repeated commit writes nothing twice
                continue
            finally:
                self._attempt = None
            for (_, _, items), n in zip(batch, answers, strict=True):
                if n < 0:
                    self.refused += len(items)
                else:
                    self.committed += len(items)
            break
        for shard, items in done.items():
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
        self._goodbye()
        self._kick.set()

    def abandon(self) -> None:
        pass

    async def aclose(self) -> None:
        self._goodbye()
        await self._flush()

    def _goodbye(self) -> None:
        """Ending: the commits from now on (and one under way) get the leases'
        ``goodbye`` seconds; records not committed by then stay pending in Redis, and
        the shards' next owners do those URLs again (a Redis gone or hanging no longer
        holds the stop for its socket timeouts, or until the leases lapse)."""
        self._closing = True
        self._stop_by = asyncio.get_running_loop().time() + self.leases.goodbye
        if self._attempt is not None:
            self._attempt.reschedule(self._stop_by)


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
    from crawler.recordsink import SinkHooks
    from crawler.runner import Runner
    from crawler.shardio import StandInLedger
    from crawler.stores import Ledger, MemoryQueue, Stores, WorkQueue

    leases = Leases(job, me, ttl)
    sink = RedisSink(leases)
    intake = sink.intake = Intake(leases, sink, max_deliveries=max_deliveries)
    source: Any
    queue: WorkQueue
    crawl = None
    if config.crawl is not None:
        from crawler.rediscrawl import CrawlIntake, NoInput, crawl_config

        config = crawl_config(config)
        source = NoInput()
        queue = crawl = CrawlIntake(intake, await job.seeds(), wait=wait)
    else:
        source = RedisSource(intake, batch=_BATCH, wait=wait)
        queue = MemoryQueue(config.limits.queue_size)
    # Durable: a URL the stop cuts off gets no record, it stays pending for another owner.
    stores = Stores(RedisSeen(source, sink), StandInLedger(True, False), queue)

    def make_sink(cfg: Any, ledger: Ledger, hooks: SinkHooks) -> RedisSink:
        if crawl is not None:
            crawl.attach(engine.parts.pages)
        return sink

    runner = Runner(
        config,
        source,
        stores=stores,
        sink=make_sink,
        handle_signals=True,
        gate=lambda fetcher: GatedFetcher(fetcher, leases),
    )
    made = runner.engine
    assert isinstance(made, Engine)  # noqa: S101 - a worker's config has workers=1
    engine = made
    beating = asyncio.ensure_future(leases.run())
    try:
        result = await runner.run()
    finally:
        beating.cancel()
        if crawl is not None:
            crawl.close()
        await leases.leave()
    return result, sink
