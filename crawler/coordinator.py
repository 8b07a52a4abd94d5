"""``--workers N``: the process the user started, coordinating N worker processes.

    input --lines--> route (host -> worker) --LINES--> worker 0..N-1 (crawler.shardworker:
        the whole pipeline on its hosts) --RECORDS (encoded, in batches)--> Sink
    claims: worker --CLAIM--> Seen (memory, or the --state file) --ANSWER--> worker

The coordinator reads the input lazily, routes each line to the worker that owns its
host (``crawler.shards.Router``) in batches, answers the workers' dedup claims, and is the
only writer of the output and the only owner of ``--state``: the records come back
ready-encoded with their fingerprints, and its Sink writes and commits them as in one
process. So a run resumed with another N still gives each URL exactly one record.

Signals are the coordinator's: the workers are in a session of their own and stop when
told (a first STOP stops intake, a second cuts the grace period), and stop at once when
the coordinator is gone. A worker that dies is replaced, and the lines it had not
finished go to its successor (``crawler.shardproc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from crawler import errors, shards, signals
from crawler.config import RunConfig
from crawler.crawling import io_message
from crawler.engine import RunResult
from crawler.inputs import Source
from crawler.progress import show_progress
from crawler.recordsink import SinkHooks
from crawler.shardcrawl import LinkRouter
from crawler.shardproc import (
    WORKER_COMMAND,
    ShardProc,
    claim_owed,
    how_it_ended,
    one_writer_each,
    say,
    start,
    worker_config,
)
from crawler.shardstats import RunStats
from crawler.sink import OutputClosed, Sink
from crawler.stores import Stores

if TYPE_CHECKING:
    from rich.console import Console

_MAX_DEATHS: Final = 3  # a worker that dies this many times ends the run (a poison URL?)
_AHEAD: Final = 4096  # lines a worker may hold beyond its queue before intake waits
_COUNT_WAIT: Final = 2.0  # seconds a stopped run waits, at most, to count the input left
_END_BOUND: Final = 10.0  # seconds past grace a stopped worker gets before it is killed
_EXIT_WAIT: Final = 5.0  # seconds a worker that reported its end gets to exit


class Coordinator:
    worker_command: tuple[str, ...] = WORKER_COMMAND  # how a worker process is started

    def __init__(
        self,
        config: RunConfig,
        source: Source,
        stores: Stores,
        *,
        handle_signals: bool = True,
        progress: Console | None = None,
        progress_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._n = config.workers
        self._source = source
        self._stores = stores
        self._handle_signals = handle_signals
        self._progress = progress
        self._progress_interval = progress_interval
        self._clock = clock
        self.stats = RunStats(clock, self, config.crawl is not None)
        self._router = shards.Router(self._n)
        self._links = (
            LinkRouter(config, stores, self._router, lambda: self._shards, lambda: self._sink)
            if config.crawl is not None
            else None
        )
        self._shards: list[ShardProc] = []
        self._gone: list[dict[str, Any]] = []  # last tallies of workers that died
        self._deaths: Counter[int] = Counter()
        self._owed: Counter[int] = Counter()  # fingerprints claimed by a dead worker
        self._next_batch = 0
        self._read_all = False  # END sent: every line went out
        self._stops = 0
        self._sent = 0  # lines routed to workers
        self._unsent = 0  # lines read for a worker that had already ended
        self._scope: list[str] = []  # crawl: the seed lines, for a successor's scope
        self._reader: asyncio.Task[None] | None = None
        self._all_done = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []
        self.interrupted = False
        self.timed_out = False
        self._sink: Sink

    # -- the run -----------------------------------------------------------------------------
    async def run(self) -> RunResult:
        config, ledger = self._config, self._stores.ledger
        loop = asyncio.get_running_loop()
        one_writer_each(config)
        await ledger.open()
        self.stats.done_before = ledger.done_before
        if self._links is not None:
            self._links.start(ledger.done_before)
        self._sink = sink = Sink(config.sink, ledger, SinkHooks())
        try:
            await sink.open()
        except BaseException as exc:
            await ledger.aclose()
            if isinstance(exc, OSError):
                output = config.sink.output
                raise errors.UsageError(f"cannot write output {output!r}: {exc.strerror}") from None
            raise
        self._setup_base = {
            "durable": ledger.durable,
            "resumed": ledger.resumed,
            "uvloop": type(loop).__module__.startswith("uvloop"),
        }
        previous: dict[int, Any] = {}
        output_closed = False
        try:
            if self._handle_signals:
                signals.take_over(loop, self.request_stop, previous)
            for index in range(self._n):  # one by one: a start that fails ends those started
                self._shards.append(await self._start(index))
            crawl = self._config.crawl
            if crawl is not None and crawl.sitemap_urls:  # worker 0 reads them
                self._scope += crawl.sitemap_urls
                scope = shards.lines_frame(0, list(crawl.sitemap_urls), shards.SCOPE)
                for shard in self._shards[1:]:
                    shard.send(scope)
            for _ in range(min(2, signals.take() if self._handle_signals else 0)):
                self.request_stop()
            try:
                await self._run_tasks()
                if (self._stops or self.timed_out) and not self._source.eof:
                    with contextlib.suppress(TimeoutError):  # how much input is left
                        async with asyncio.timeout(_COUNT_WAIT):
                            await self._source.counted()
            except* OutputClosed:
                output_closed = True
                self._tell_all(shards.STOP, 2)
            except* errors.UsageError as group:
                raise group.exceptions[0] from None
            except* (OSError, sqlite3.Error) as group:  # the output or the state file
                first = group.exceptions[0]
                raise errors.UsageError(f"cannot continue: {io_message(first)}") from None
        finally:
            self._source.stop_count()
            if self._links is not None:
                self._links.close()
            await self._end_workers()
            try:
                await asyncio.shield(sink.aclose())
            finally:
                await asyncio.shield(ledger.aclose())
                for timer in self._timers:
                    timer.cancel()
                signals.give_back(loop, previous)
        if self._stops or self.timed_out:
            self._count_unread()
        snap = self.stats.snapshot()
        return RunResult(snap, self.interrupted, output_closed or sink.broken, self.timed_out)

    async def _end_workers(self) -> None:
        """Workers that reported their end exit by themselves (given a moment to close
        their sessions); any other is killed: the run is over."""
        for shard in self._shards:
            if shard.done is None:
                shard.kill()
        for shard in self._shards:
            try:
                async with asyncio.timeout(_EXIT_WAIT):
                    await shard.proc.wait()
            except TimeoutError:
                shard.kill()
                await shard.proc.wait()

    async def _start(self, index: int) -> ShardProc:
        setup = {**self._setup_base, "config": worker_config(self._config, index, self._n)}
        shard = await start(index, setup, self.worker_command)
        if self._scope:  # a successor: the crawl's scope is every seed read so far
            for at in range(0, len(self._scope), 4096):
                shard.send(shards.lines_frame(0, self._scope[at : at + 4096], shards.SCOPE))
        return shard

    async def _run_tasks(self) -> None:
        async with asyncio.TaskGroup() as tg:
            background: list[asyncio.Task[Any]] = []
            if self._config.max_time is not None:
                # Each worker keeps its own --max-time; the coordinator stops reading.
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(self._config.max_time, self._time_up))
            if self._progress is not None:
                self._source.start_count()
                lines = show_progress(self.stats, self._progress, self._progress_interval)
                background.append(tg.create_task(lines))
            tg.create_task(self._sink.run())
            if self._links is not None:
                tg.create_task(self._carry_over(self._links))
            for shard in self._shards:
                tg.create_task(self._listen(shard))
            if self._stops:
                self._finish_input()
            else:
                self._reader = tg.create_task(self._read())
            await self._all_done.wait()
            self._sink.close()
            for task in background:
                task.cancel()

    # -- intake ------------------------------------------------------------------------------
    async def _read(self) -> None:
        n = self._n
        route = self._router.route
        try:
            async for lines in self._source.batches():
                if self._links is not None:  # crawl: every seed is in every worker's scope
                    self._scope += lines  # (kept for a worker started later)
                    scope = shards.lines_frame(0, lines, shards.SCOPE)
                    for shard in self._shards:
                        shard.send(scope)
                routed: list[list[str]] = [[] for _ in range(n)]
                for line in lines:
                    routed[route(line)].append(line)
                for index, batch in enumerate(routed):
                    if batch:
                        await self._send(index, batch)
        finally:
            self._finish_input()

    async def _send(self, index: int, lines: list[str]) -> None:
        limit = self._config.limits.queue_size + _AHEAD
        while True:
            shard = self._shards[index]  # a replaced worker: its successor
            if shard.outstanding < limit or shard.done is not None:
                break
            shard.room.clear()
            await shard.room.wait()
        if shard.done is not None:  # it ended (--max-time, a stop): the lines stay unread
            self._unsent += len(lines)
            return
        self._next_batch += 1
        shard.send_lines(self._next_batch, lines)
        self._sent += len(lines)
        await shard.drain()

    def _finish_input(self) -> None:
        if not self._read_all:
            self._read_all = True
            self._tell_all(shards.END)
            self._check_crawl()

    async def _carry_over(self, links: LinkRouter) -> None:
        await links.carry_over()
        self._check_crawl()

    def _check_crawl(self) -> None:
        """Crawl mode: end it once no worker can find a link any more."""
        if self._links is not None and self._links.may_finish(self._read_all):
            self._tell_all(shards.FINISH)

    def _tell_all(self, kind: int, times: int = 1) -> None:
        for shard in self._shards:
            for _ in range(times):
                shard.send(shards.frame(kind))

    # -- what the workers send ---------------------------------------------------------------
    async def _listen(self, shard: ShardProc) -> None:
        reader = shard.proc.stdout
        assert reader is not None  # noqa: S101 - started with a pipe
        sink, links = self._sink, self._links
        try:
            while True:
                kind, payload = await shards.read_frame(reader)
                if kind == shards.RECORDS:
                    fps, data = shards.read_records(payload)
                    sink.put_encoded(data, fps)
                    shard.recorded(fps)
                    if links is not None:
                        await links.deliver(shard.index)
                    if sink.behind:
                        await sink.backpressure()
                elif kind == shards.FORWARD and links is not None:
                    await links.forwarded(pickle.loads(payload))  # noqa: S301 - our child
                elif kind == shards.IDLE and links is not None:
                    links.idle(shard.index, shards.read_count(payload))
                    self._check_crawl()
                elif kind == shards.CLAIM:
                    batch, raw = shards.read_ids(payload)
                    fps = shards.read_fingerprints(raw)
                    answers, repaid = await self._claim(fps)
                    if links is not None:
                        answers = links.seeds(answers, repaid)
                    shard.claimed(batch, fps, answers)
                    shard.send(shards.ids_frame(shards.ANSWER, batch, bytes(answers)))
                elif kind == shards.STATS:
                    shard.tally = pickle.loads(payload)  # noqa: S301 - our own child
                elif kind == shards.DONE:
                    shard.done = pickle.loads(payload)  # noqa: S301 - our own child
                    shard.tally = shard.done["tally"]
                    self.timed_out = self.timed_out or shard.done["timed_out"]
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            await self._died(shard)
            return
        self._check_done()

    async def _claim(self, fps: list[int]) -> tuple[list[int], list[int]]:
        """The Seen's answers, but a line a dead worker left owed is new to its successor."""
        if not self._owed:
            return await self._stores.seen.claim(fps), []
        return await claim_owed(self._stores.seen, self._owed, fps)

    def _check_done(self) -> None:
        if self._read_all and all(s.done is not None for s in self._shards):
            self._all_done.set()

    async def _died(self, shard: ShardProc) -> None:
        """A worker ended without its final report: say so, and give its unfinished lines
        to a new worker (unless the run is stopping: then they are left undone)."""
        code = await shard.proc.wait()
        if shard.tally is not None:
            self._gone.append(shard.tally)
        index = shard.index
        self._deaths[index] += 1
        stopping = self._stops > 0 or self.timed_out
        if stopping or code == 2 or self._deaths[index] >= _MAX_DEATHS:
            lines, _ = shard.unsettled()
            say(
                f"worker {index} (pid {shard.pid}) ended ({how_it_ended(code)}); "
                f"{len(lines)} of its URLs are left without a record"
            )
            shard.done = {"tally": {}, "interrupted": True, "timed_out": False}
            shard.tally = None
            self.stats.left_by_coordinator += len(lines)
            if not stopping:  # a worker that cannot run (exit 2 said why) or a poison URL
                raise errors.UsageError(f"worker {index} failed: the run stops")
            self._check_done()
            return
        successor = await self._start(index)
        # From here on nothing awaits until the lines are handed over: intake sends to
        # the successor (and one waiting for room on the dead worker moves to it).
        self._shards[index] = successor
        shard.room.set()
        lines, owed = shard.unsettled()
        held = self._links.replaced(shard, successor) if self._links is not None else 0
        say(
            f"worker {index} (pid {shard.pid}) died ({how_it_ended(code)}); its "
            f"{len(lines) + held} unfinished URLs go to a new worker (pid {successor.pid})"
        )
        self._owed.update(owed)
        for at in range(0, len(lines), 1024):
            self._next_batch += 1
            successor.send_lines(self._next_batch, lines[at : at + 1024])
        if self._read_all:
            successor.send(shards.frame(shards.END))
        if self._links is not None and self._links.finished:  # it died after FINISH
            successor.send(shards.frame(shards.FINISH))
        if self._links is not None:
            await self._links.deliver(index)  # links that waited here for the dead one
        await self._listen(successor)
        self._check_crawl()

    # -- shutdown ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """As a run on its own: the first stops intake (the workers give their requests the
        grace period), the second cuts it short and gives up on an output nobody reads."""
        self._stops += 1
        self.interrupted = True
        if self._stops == 1:
            self.stats.stopping = "signal"
            self.stats.stop_deadline = self._clock() + self._config.grace
            if self._reader is not None:
                self._reader.cancel()
            self._source.start_count()
            loop = asyncio.get_running_loop()
            bound = self._config.grace + max(self._config.grace, 1.0) + _END_BOUND
            self._timers.append(loop.call_later(bound, self._kill_all))
        else:
            self.stats.stopping = "cut"
            if hasattr(self, "_sink"):
                self._sink.abandon()
        self._tell_all(shards.STOP)

    def _count_unread(self) -> None:
        """A stopped run: the lines never read, and those the workers never dealt with."""
        source, stats = self._source, self.stats
        held = sum(int((s.done or {}).get("unread", 0)) for s in self._shards)
        if source.eof:
            stats.not_read = held + self._unsent
        elif source.lines_total is not None:
            stats.not_read = max(0, source.lines_total - self._sent) + held
        else:
            stats.not_read, stats.rest_unread = None, True

    def _time_up(self) -> None:
        self.timed_out = True
        self._source.start_count()
        if self._reader is not None:
            self._reader.cancel()

    def _kill_all(self) -> None:
        """Workers that did not end after the grace period and the flush: killed."""
        for shard in self._shards:
            if shard.done is None:
                shard.kill()

    # -- statistics (crawler.shardstats.RunView) --------------------------------------------
    def input_lines(self) -> int | None:
        return self._source.lines_total

    def lost(self) -> int:
        return self._sink.lost if hasattr(self, "_sink") else 0

    def link_counts(self) -> dict[str, int]:
        return self._links.counts() if self._links is not None else {}

    def tallies(self) -> list[dict[str, Any]]:
        return [*self._gone, *(s.tally for s in self._shards if s.tally)]

    def worker_rows(self) -> list[dict[str, Any]]:
        keys = ("done", "ok", "in_flight", "queued", "peak_rss_mib")
        return [
            {
                "worker": s.index,
                "pid": s.pid,
                "restarts": self._deaths[s.index],
                **{k: (s.tally or {}).get(k, 0) for k in keys},
            }
            for s in self._shards
        ]
