"""The pipeline, under one TaskGroup: reader -> frontier -> workers -> sink.

    LineSource --lines--> Reader (reader.py: parse, validate, dedup) --Item-->
        Frontier (bounded; host slots and pacers: it hands out a URL only when its
        request may start) --> Workers x C (worker.py: Attempts, attempts.py, then the
        URL's Record, records.py) --> RecordSink: Sink, the only writer of the output,
        or the Python API's channel (recordsink.py)
    Crawl mode and --save-dir/--warc are wired in by crawling.py; the parts are made (and
    closed) by assembly.py. What the run remembers (Seen: dedup; Ledger: commits;
    WorkQueue: links waiting) is handed in as ``Stores`` (stores.py): in memory, or the
    --state file; the engine does not ask which.

Lifetimes. Every task (reader, workers, sink writer, loop-lag probe, host sweeper,
progress) belongs to one TaskGroup. The run ends when the input is exhausted, the
frontier is empty and nothing is in flight: the frontier then hands every worker None,
and the last worker to leave closes the sink (whose writer writes the rest and returns)
and cancels the background tasks, so the group ends. Closing the session and flushing
the sink happen outside the group, in ``finally`` blocks, shielded from cancellation.

Shutdown (SIGINT, SIGTERM, SIGHUP, SIGQUIT). The first signal stops intake: the reader is
cancelled and the frontier stops handing out URLs; URLs queued but not started get
``cancelled`` records (those waiting for their host's pacer among them: they wait in the
frontier, not in a worker), and so do URLs whose worker waits for their robots.txt (not
sent yet: the wait is cut short). Requests in flight get ``grace`` seconds to finish;
then (or at a second signal) their workers are cancelled and write ``cancelled`` records
for them. With ``--state`` no ``cancelled`` record is written: those URLs are left for
the resumed run. ``--max-time`` stops the same way, but URLs never sent get no record.

Nothing waits without a bound once the run is told to stop: the final flush of the output
gets ``max(grace, 1)`` seconds after the grace period (none after a second signal); then
a standard output nobody reads is given up on (``Sink.abandon``) and the records that did
not fit are counted as lost (not marked done with ``--state``: the resumed run redoes them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from msgspec import Struct

from crawler import errors, signals
from crawler.assembly import Parts
from crawler.attempts import Fetches
from crawler.config import RunConfig
from crawler.crawling import Crawling, io_message
from crawler.fetcher import Fetcher
from crawler.fetchers import open_fetcher
from crawler.frontier import Frontier
from crawler.inputs import Source
from crawler.reader import Reader
from crawler.recordsink import RecordSink, SinkFactory
from crawler.session import make_session
from crawler.sink import OutputClosed, Sink
from crawler.stats import Snapshot, Stats
from crawler.stores import Stores, memory
from crawler.worker import Workers

if TYPE_CHECKING:
    from rich.console import Console

_MIN_FLUSH_BOUND: Final = 1.0  # seconds the final flush gets after the grace period, at least


class RunResult(Struct, frozen=True):
    snapshot: Snapshot
    interrupted: bool
    output_closed: bool
    timed_out: bool = False  # --max-time ran out


class Engine:
    def __init__(
        self,
        config: RunConfig,
        source: Source,
        *,
        progress: Console | None = None,
        progress_interval: float = 5.0,
        install_signal_handlers: bool = True,
        clock: Callable[[], float] = time.monotonic,
        stores: Stores | None = None,
        notice: Callable[[], None] | None = None,
        sink: SinkFactory = Sink,
        gate: Callable[[Fetcher], Fetches] | None = None,
    ) -> None:
        self._config = config
        self._gate = gate  # what the workers fetch through instead (a shared job's worker)
        self._sink_factory = sink  # where records go: the output's bytes, or the API's channel
        self._notice = notice  # the per-host limit binds (see Frontier.on_host_bound)
        self._source = source
        if stores is None:  # a run on its own, remembering nothing past its end
            stores = memory(dedup=config.input.dedup, queue_memory=config.limits.queue_size)
        self._stores = stores
        self._progress = progress
        self._progress_interval = progress_interval  # status lines when not a terminal
        self._install_signals = install_signal_handlers
        # Deadlines, breakers, pacers and stats use this clock (uvloop's loop.time() has
        # only millisecond resolution); only the frontier's back-off timers use the loop's
        # (its pacing timer waits on the loop for a delay measured on this clock).
        self._clock = clock
        self.interrupted = False
        self.timed_out = False
        self._stopping = False  # intake stopped (signal or --max-time)
        self._signals = 0
        self._early_stops = 0  # stops asked for before the run was set up
        self._reader: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._background: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        # Set up in run(), inside the event loop (see assembly.py).
        self._parts: Parts
        self.stats: Stats
        self._frontier: Frontier
        self._sink: RecordSink
        self._pages: Crawling  # crawl mode and storage
        self._reading: Reader
        self._workers: Workers

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> RunResult:
        config = self._config
        loop = asyncio.get_running_loop()
        clock = self._clock
        source = self._source
        parts = self._parts = Parts(config, self._stores, source, clock)
        self.stats = stats = parts.stats
        await parts.open(self._sink_factory, self._notice, self._workers_gone)
        frontier, sink, pages = parts.frontier, parts.sink, parts.pages
        self._frontier, self._sink, self._pages = frontier, sink, pages
        self._reading, self._workers = parts.reader, parts.workers
        output_closed = False
        previous: dict[int, Any] = {}  # handlers replaced by ours, put back at the end
        try:
            early = self._early_stops
            if self._install_signals:
                signals.take_over(loop, self.request_stop, previous)
                early += signals.take()  # deferred by crawler.signals
            for _ in range(min(2, early)):
                self.request_stop()
            async with (
                make_session(config.fetch) as session,
                open_fetcher(session, config.fetch, config.breaker, clock) as fetcher,
            ):
                pages.start(fetcher)
                fetcher.keep_idle_for(frontier)  # idle connections: hosts with work only
                try:
                    await self._run_tasks(fetcher)
                    if self._stopping and not source.eof and self._signals < 2:
                        await self._reading.wait_count()  # not after a second signal
                except* OutputClosed:
                    output_closed = True
                except* errors.UsageError as group:
                    # e.g. the input became unreadable mid-run: one clear message.
                    raise group.exceptions[0] from None
                except* errors.storage_errors() as group:
                    # The output or the state file failed (disk full, I/O error, locked).
                    first = group.exceptions[0]
                    raise errors.UsageError(f"cannot continue: {io_message(first)}") from None
        finally:
            source.stop_count()
            for timer in self._timers:
                timer.cancel()
            try:
                await parts.release(sink)
            finally:
                # Only now: a signal during the final flush still gives up on a
                # blocked output (see _cut_grace).
                for handle in (self._grace_timer, self._flush_timer):
                    if handle is not None:
                        handle.cancel()
                signals.give_back(loop, previous)
        if self._stopping:
            self._reading.count_unread()
        return RunResult(
            stats.snapshot(), self.interrupted, output_closed or sink.broken, self.timed_out
        )

    @property
    def parts(self) -> Parts:
        """The run's parts (once ``run()`` has made them)."""
        return self._parts

    @property
    def lines_taken(self) -> int:
        """Input lines dealt with: a record, queued, or skipped (see Reader.taken)."""
        return self._reading.taken if hasattr(self, "_reading") else 0

    async def _run_tasks(self, fetcher: Fetcher) -> None:
        max_time = self._config.max_time
        async with asyncio.TaskGroup() as tg:
            if max_time is not None:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(max_time, self._time_up))
            self._pages.begin(tg)
            self._background = [
                tg.create_task(self.stats.watch_loop_lag()),
                tg.create_task(self._workers.maintain()),
            ]
            if self._progress is not None:
                from crawler.progress import show_progress  # rich's live display: only here

                self._source.start_count()  # for the progress line's input % and ETA
                lines = show_progress(self.stats, self._progress, self._progress_interval)
                self._background.append(tg.create_task(lines))
            tg.create_task(self._sink.run())
            if self._stopping:
                # A signal arrived while the run was being set up: read nothing.
                self._frontier.close_input()
            else:
                self._reader = tg.create_task(self._reading.run())
            self._workers.start(tg, fetcher if self._gate is None else self._gate(fetcher))
        # Leaving the group: the last worker closed the sink (the writer then wrote the
        # rest and returned) and cancelled the background tasks; see _workers_gone().

    def _workers_gone(self) -> None:
        """The last worker left: the sink writes the rest, the background tasks end."""
        self._sink.close()
        for task in [*self._background, *self._pages.jobs]:
            task.cancel()

    # -- shutdown ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """A stop signal: the first stops intake and starts the grace period; the second
        cuts it and gives up on an output nobody reads (the run ends now)."""
        if not hasattr(self, "_workers"):  # still being set up: done once it is
            self._early_stops += 1
            return
        self._signals += 1
        self.interrupted = True
        if self._signals > 1:
            self.stats.stopping = "cut"
            self._cut_grace()
            self._sink.abandon()
            return
        self._stop_intake(record_unstarted=True)

    def _time_up(self) -> None:
        """--max-time: stop like a first signal, but it is the run's planned end (exit 0).
        URLs not started yet get no record (they stay pending with --state)."""
        self.timed_out = True
        self._stop_intake(record_unstarted=False)

    def _stop_intake(self, *, record_unstarted: bool) -> None:
        if self._stopping:
            return
        self._stopping = True
        grace = self._config.grace
        # For the progress line: "stopping: waiting up to N s for K requests".
        self.stats.stopping = "signal" if record_unstarted else "max_time"
        self.stats.stop_deadline = self._clock() + grace
        self._source.start_count()  # how much input is left unread: for the summary
        self._workers.stop(record_unstarted=record_unstarted)  # cuts robots.txt waits
        if self._reader is not None:
            self._reader.cancel()
        self._pages.stop()
        self._workers.settle(self._frontier.stop())
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(grace, self._cut_grace)

    def _cut_grace(self) -> None:
        self.stats.stopping = "cut"
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._workers.cut()
        if self._flush_timer is None:
            # The records are all in the sink now; writing them gets a bound too.
            bound = max(self._config.grace, _MIN_FLUSH_BOUND)
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(bound, self._sink.abandon)
