"""The pipeline, under one TaskGroup: reader -> frontier -> workers -> sink.

    LineSource --lines--> reader: parse, validate, dedup --Item--> Frontier (bounded)
        --> worker x C: DynamicSemaphore permit, host slot (and pacers: the frontier
                        hands out a URL only when its request may start), then
                        Attempts (attempts.py: breaker, deadline, Fetcher, retry
                        decision; a back-off waits in the frontier)
        --> Record (records.py) --> RecordSink: Sink, the only writer of the output, or
                        the Python API's channel (recordsink.py)
    Crawl mode and --save-dir/--warc are wired in by crawling.py.

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
import contextlib
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Console
from yarl import URL

from crawler import errors, signals
from crawler.attempts import Attempts
from crawler.config import RunConfig
from crawler.crawling import Crawling, Kept, io_message
from crawler.dedup import FingerprintSet, fingerprint
from crawler.fetcher import (
    Fetcher,
    make_session,
)
from crawler.frontier import Frontier, Item
from crawler.inputs import Source
from crawler.limiter import DynamicSemaphore, HostTable
from crawler.progress import show_progress
from crawler.records import Answer, Record, Records
from crawler.recordsink import RecordSink, SinkFactory
from crawler.sink import OutputClosed, Sink
from crawler.state import DONE_BEFORE, StateStore
from crawler.stats import Snapshot, Stats
from crawler.urls import parse_target

_SWEEP_INTERVAL: Final = 1.0
_MAX_CRAWL_DELAY: Final = 60.0
_MIN_FLUSH_BOUND: Final = 1.0  # seconds the final flush gets after the grace period, at least
_COUNT_WAIT: Final = 2.0  # seconds a stopped run waits, at most, to count the input left unread


@dataclass(frozen=True, slots=True)
class RunResult:
    snapshot: Snapshot
    interrupted: bool
    output_closed: bool
    timed_out: bool = False  # crawl mode: --max-time ran out


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
        state: StateStore | None = None,
        notice: Callable[[], None] | None = None,
        sink: SinkFactory = Sink,
    ) -> None:
        self._config = config
        self._sink_factory = sink  # where records go: the output's bytes, or the API's channel
        self._notice = notice  # the per-host limit binds (see Frontier.on_host_bound)
        self._source = source
        self._state = state
        self._progress = progress
        self._progress_interval = progress_interval  # status lines when not a terminal
        self._install_signals = install_signal_handlers
        # Deadlines, breakers, pacers and stats use this clock (uvloop's loop.time() has
        # only millisecond resolution); only the frontier's back-off timers use the loop's
        # (its pacing timer waits on the loop for a delay measured on this clock).
        self._clock = clock
        self._records = Records()
        self._rand = random.random
        self.interrupted = False
        self.timed_out = False
        self._stopping = False  # intake stopped (signal or --max-time)
        self._cutting = False  # the grace period is over: in-flight workers are cancelled
        self._signals = 0
        self._busy: dict[asyncio.Task[None], Item] = {}
        self._reader: asyncio.Task[None] | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._record_unstarted = True  # a signal, not --max-time: unsent URLs get records
        self._robots_waits: set[asyncio.Task[None]] = set()  # workers waiting for robots.txt
        self._cut_early: set[asyncio.Task[None]] = set()  # ...cancelled when intake stopped
        self._workers_left = 0
        self._taken = 0  # input lines the reader has dealt with (record, queued or skipped)
        self._background: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        # Set up in run(), inside the event loop.
        self.stats: Stats
        self._hosts: HostTable
        self._frontier: Frontier
        self._sink: RecordSink
        self._fetcher: Fetcher
        self._pages: Crawling  # crawl mode and storage
        self._attempts: Attempts
        self._permits: DynamicSemaphore

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> RunResult:
        config = self._config
        loop = asyncio.get_running_loop()
        clock = self._clock
        self.stats = stats = Stats(clock)
        self._hosts = HostTable(config.limits, config.breaker, clock)
        self._frontier = frontier = Frontier(config.limits.queue_size, self._hosts)
        frontier.on_host_bound = self._notice
        self._permits = DynamicSemaphore(config.limits.concurrency)
        stats.in_flight = lambda: frontier.in_flight
        stats.queued = lambda: frontier.queued + frontier.delayed
        source = self._source
        stats.input_lines = lambda: source.lines_total
        state = self._state
        if state is not None:
            await state.open()
        self._sink = sink = self._sink_factory(config.sink, state)
        stats.lost = lambda: sink.lost
        try:
            await sink.open()
        except OSError as exc:
            if state is not None:
                await state.aclose()
            raise errors.UsageError(
                f"cannot write output {config.sink.output!r}: {exc.strerror}"
            ) from None
        except BaseException:
            if state is not None:
                await state.aclose()
            raise
        if state is not None:
            stats.done_before = state.done_before
        output_closed = False
        self._pages = pages = Crawling(config, state, stats, self._hosts, frontier, clock)
        previous: dict[int, Any] = {}  # handlers replaced by ours, put back at the end
        try:
            self._take_signals(loop, previous)
            if config.store.active or config.crawl is not None:
                signals.start_resource_tracker()  # before any process pool: see there
            pages.open_stores(sink)
            async with make_session(config.fetch) as session:
                self._fetcher = Fetcher(session, config.fetch)
                self._attempts = Attempts(
                    self._fetcher,
                    config.retry,
                    self._hosts,
                    stats,
                    clock=clock,
                    rand=self._rand,
                    keep=pages.keep,
                    follow=pages.follow,
                )
                pages.start(self._fetcher)
                try:
                    await self._run_tasks()
                    if self._stopping and not source.eof and self._signals < 2:
                        # How much input the stop left unread (counted since the stop;
                        # not waited for after a second signal).
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(_COUNT_WAIT):
                                await source.counted()
                except* OutputClosed:
                    output_closed = True
                except* errors.UsageError as group:
                    # e.g. the input became unreadable mid-run: one clear message.
                    raise group.exceptions[0] from None
                except* (OSError, sqlite3.Error) as group:
                    # The output or the state file failed (disk full, I/O error, locked).
                    first = group.exceptions[0]
                    raise errors.UsageError(f"cannot continue: {io_message(first)}") from None
        finally:
            source.stop_count()
            for timer in self._timers:
                timer.cancel()
            pages.close()
            # The sink first (it waits for the body files its records name), then the
            # writers; one failing does not keep the others from closing.
            closers = [sink.aclose]
            closers += [w.aclose for w in pages.writers]
            failure: BaseException | None = None
            try:
                for close in closers:
                    try:
                        await asyncio.shield(close())
                    except (OSError, sqlite3.Error) as exc:
                        failure = failure or exc
            finally:
                try:
                    if state is not None:
                        await asyncio.shield(state.aclose())
                finally:
                    # Only now: a signal during the final flush still gives up on a
                    # blocked output (see _cut_grace).
                    for handle in (self._grace_timer, self._flush_timer):
                        if handle is not None:
                            handle.cancel()
                    self._give_back_signals(loop, previous)
            if failure is not None:
                raise errors.UsageError(f"cannot continue: {io_message(failure)}") from None
        self._count_unread()
        return RunResult(
            stats.snapshot(), self.interrupted, output_closed or sink.broken, self.timed_out
        )

    def _count_unread(self) -> None:
        """A stopped run: the input lines it never read got no record (nor any count)."""
        source, stats = self._source, self.stats
        if not self._stopping or source.eof:
            return
        if source.lines_total is not None:
            stats.not_read = max(0, source.lines_total - self._taken)
        else:  # standard input or a pipe: what is left cannot be known without reading it
            stats.not_read = None
            stats.rest_unread = True

    def _take_signals(self, loop: asyncio.AbstractEventLoop, previous: dict[int, Any]) -> None:
        """Handle the stop signals (those not ignored) in the loop; act on the ones that
        came before (deferred by crawler.signals). ``previous``: the handlers replaced."""
        if not self._install_signals:
            return
        for sig in signals.STOP_SIGNALS:
            if signals.handled(sig):
                handler = signal.getsignal(sig)
                loop.add_signal_handler(sig, self.request_stop)
                previous[sig] = handler
        for _ in range(min(2, signals.take())):
            self.request_stop()

    @staticmethod
    def _give_back_signals(loop: asyncio.AbstractEventLoop, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)

    async def _run_tasks(self) -> None:
        concurrency = self._config.limits.concurrency
        crawl = self._config.crawl
        async with asyncio.TaskGroup() as tg:
            if crawl is not None and crawl.max_time is not None:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(crawl.max_time, self._time_up))
            self._pages.begin(tg)
            self._background = [
                tg.create_task(self.stats.watch_loop_lag()),
                tg.create_task(self._maintain()),
            ]
            if self._progress is not None:
                self._source.start_count()  # for the progress line's input % and ETA
                task = tg.create_task(
                    show_progress(self.stats, self._progress, self._progress_interval)
                )
                self._background.append(task)
            tg.create_task(self._sink.run())
            if self._stopping:
                # A signal arrived while the run was being set up: read nothing.
                self._frontier.close_input()
            else:
                self._reader = tg.create_task(self._read())
            self._workers_left = concurrency
            for _ in range(concurrency):
                tg.create_task(self._worker())
        # Leaving the group: the last worker closed the sink (the writer then wrote the
        # rest and returned) and cancelled the background tasks; see _worker_left().

    def _worker_left(self) -> None:
        self._workers_left -= 1
        if self._workers_left == 0:
            self._sink.close()
            for task in [*self._background, *self._pages.jobs]:
                task.cancel()

    # -- reader ----------------------------------------------------------------------------
    async def _read(self) -> None:
        """Parse, validate and deduplicate the input, one batch at a time."""
        frontier, sink, stats, state = self._frontier, self._sink, self.stats, self._state
        dedup = self._config.input.dedup
        crawl = self._pages.crawl
        seen = None  # with --state, the state file is the dedup store
        if dedup and state is None:
            seen = crawl.seen if crawl is not None else FingerprintSet()
        try:
            async for lines in self._source.batches():
                parsed: list[tuple[str, URL | errors.InvalidURL, str, int]] = []
                for raw in lines:
                    try:
                        url, key, host = parse_target(raw)
                    except errors.InvalidURL as exc:
                        fp = fingerprint("\0invalid\0" + raw) if dedup else 0
                        parsed.append((raw, exc, "", fp))
                    else:
                        parsed.append((raw, url, host, fingerprint(key) if dedup else 0))
                        self._pages.seed(url, host)  # done seeds too: they define the scope
                fresh: Sequence[int]  # FRESH (or True), REPEAT (or False), DONE_BEFORE
                if state is not None:
                    # One round trip to the state thread per batch, never per URL.
                    fresh = await state.claim([entry[3] for entry in parsed])
                elif seen is not None:
                    fresh = seen.add_many([entry[3] for entry in parsed])
                else:
                    fresh = [True] * len(parsed)
                # Each line counts as taken once it has its record, is queued or is
                # skipped: a line cut off by the stop is in none of them (_count_unread).
                for (raw, target, host, fp), new in zip(parsed, fresh, strict=True):
                    if not new:  # False, or REPEAT
                        stats.skipped_duplicates += 1
                    elif new == DONE_BEFORE:
                        stats.skipped_done_before += 1
                    elif isinstance(target, errors.InvalidURL):
                        sink.put_nowait(self._invalid_record(raw, target), fp)
                        self._taken += 1
                        if sink.behind:
                            await sink.backpressure()
                        continue
                    elif crawl is None or crawl.add_seed(fp):
                        item = Item(raw, target, host, fp)
                        if not frontier.offer(item):
                            await frontier.put(item)
                    self._taken += 1
            if crawl is not None:
                await self._pages.feed_links(crawl)
        finally:
            frontier.close_input()

    # -- workers ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        frontier, busy = self._frontier, self._busy
        # Without --adaptive the limit stays at the number of workers, so no permit can
        # ever be refused: the semaphore is consulted only where it can say no.
        permits = self._permits if self._config.limits.adaptive else None
        task = asyncio.current_task()
        assert task is not None  # noqa: S101
        try:
            while True:
                # Synchronous fast paths first: awaiting a coroutine per URL is not free.
                if permits is not None and not permits.try_acquire():
                    await permits.acquire()
                try:
                    item = frontier.get_nowait()
                    if item is None:
                        item = await frontier.get()
                        if item is None:
                            return
                    busy[task] = item
                    try:
                        await self._process(item)
                    except asyncio.CancelledError:
                        # Cancelled by the end of the grace period: the URL gets its
                        # `cancelled` record and the worker ends quietly. Any other
                        # cancellation (the group is failing) still propagates.
                        if not item.finished:
                            if item.attempts == 0:
                                self._unsent(item)  # e.g. still waiting for robots.txt
                            else:
                                self._cancel(item)
                                frontier.done(item)
                        cut = self._cutting or task in self._cut_early
                        if cut and task.cancelling() <= 1:
                            task.uncancel()
                            return
                        raise
                    finally:
                        del busy[task]
                finally:
                    if permits is not None:
                        permits.release()
        finally:
            self._worker_left()

    async def _process(self, item: Item) -> None:
        """Attempts for one URL until it has a record or goes back to wait for a retry."""
        host = item.host
        assert host is not None  # noqa: S101 - the frontier hands out items with a slot
        config = self._config
        robots = self._pages.robots_rules
        if robots is not None and item.attempts == 0 and not item.checked:
            # Not started yet while it waits for robots.txt: a stop cancels the wait.
            task = asyncio.current_task()
            assert task is not None  # noqa: S101
            self._robots_waits.add(task)
            try:
                rules = await robots(item.url)
            finally:
                self._robots_waits.discard(task)
            if not rules.allows(item.raw, config.fetch.user_agent):
                reason = rules.disallow_all or "disallowed by robots.txt"
                self._final(item, None, errors.RobotsDisallowed(reason))
                return
            item.checked = True
            if self._hosts.waits_for_pacer(host):
                # The frontier handed it out for this check without its pacer (a URL
                # robots.txt refuses must not use up a Crawl-delay turn, and the
                # Crawl-delay may have only now been read): back to the frontier, which
                # hands it out again when its request may start.
                if not self._frontier.requeue(item):
                    self._given_back_unsent(item)
                return
        # Whether its requests may carry credentials: decided once per URL, here.
        resp, error, wait = await self._attempts.run(item, self._pages.credentials(item))
        if wait is not None:
            if not self._frontier.retry_later(item, wait):
                self._cancel(item)  # the run is stopping: no more attempts
            return
        kept = None
        if resp is not None and resp.body is not None and error is None:
            kept = await self._pages.keep_body(item, resp, resp.body)
        self._final(item, resp, error, kept)
        if self._sink.behind:
            await self._sink.backpressure()

    def _unsent(self, item: Item) -> None:
        """The run stopped before ``item``'s next attempt was sent: like a URL still
        queued. On a signal it gets a ``cancelled`` record (none with --state); at
        --max-time a URL never sent gets no record (with --state it stays pending for the
        next run), one already tried gets ``cancelled`` (attempts as sent)."""
        if self._record_unstarted or item.attempts:
            self._cancel(item)
        else:
            self._not_sent()
        item.finished = True
        self._frontier.done(item)

    def _given_back_unsent(self, item: Item) -> None:
        """Like ``_unsent``, for a URL the stopped frontier would not take back (its slot
        and its place among the requests in flight are already given up)."""
        if self._record_unstarted:
            self._cancel(item)
        else:
            self._not_sent()
        item.finished = True

    # -- records ---------------------------------------------------------------------------
    def _final(
        self,
        item: Item,
        resp: Answer | None,
        error: errors.FetchError | None,
        kept: Kept | None = None,
    ) -> None:
        """Write the URL's one record and release it (synchronously: a cancellation can
        neither lose nor duplicate the record)."""
        if resp is None and error is not None:
            resp = error.response  # e.g. too_large: the status line did arrive
        if resp is not None and error is None and resp.status >= 400:
            error = errors.HTTPStatusError(f"HTTP {resp.status}")
        if resp is None:
            record = self._records.unanswered(item, error)
        else:
            record = self._records.answered(item, resp, error)
        links = None
        if kept is not None:
            record.body_path = kept.body_path
            record.sha256 = kept.sha256
            links = self._pages.admit(kept, item)
        self.stats.record(record.ok, record.status, error.kind if error else None, record.bytes)
        item.finished = True
        self._sink.put_nowait(record, item.fp, links)
        self._frontier.done(item)

    def _invalid_record(self, raw: str, error: errors.InvalidURL) -> Record:
        """An input line that is not a URL we can fetch: counted and stamped here."""
        self.stats.record(False, None, error.kind, 0)
        return self._records.invalid(raw, error)

    def _cancel(self, item: Item) -> None:
        """The run was interrupted before ``item`` finished. Without --state it gets a
        ``cancelled`` record; with --state it gets none and is fetched on resume (so it
        is not counted as a record, a failure or a finished URL: see Stats.cancel)."""
        if self._state is None:
            error = errors.Cancelled("the run was interrupted before this URL finished")
            self.stats.cancel(recorded=True)
            self._sink.put_nowait(self._records.unanswered(item, error))
        else:
            self.stats.cancel(recorded=False)

    def _not_sent(self) -> None:
        """--max-time: a URL never sent gets no record: with --state it is left for the
        next run, without it is dropped (counted, so the summary can say so)."""
        if self._state is not None:
            self.stats.cancel(recorded=False)
        else:
            self.stats.dropped += 1

    # -- background --------------------------------------------------------------------------
    async def _maintain(self) -> None:
        """Forget idle hosts; with --adaptive, shrink global concurrency when the loop lags."""
        adaptive = self._config.limits.adaptive
        ceiling = self._config.limits.concurrency
        lag = self.stats.loop_lag
        seen = 0  # loop-lag samples already looked at
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self._hosts.sweep()
            if adaptive and lag.count > seen:
                seen = lag.count
                permits = self._permits
                # Lag over 50 ms means our own process is the bottleneck: fewer requests
                # in flight would only queue longer in the event loop.
                if self.stats.recent_lag > 0.05 and permits.limit > 1:
                    permits.resize(int(permits.limit * 0.9))
                elif permits.limit < ceiling:
                    permits.resize(permits.limit + 1)

    # -- shutdown ----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """A stop signal: the first stops intake and starts the grace period; the second
        cuts it and gives up on an output nobody reads (the run ends now)."""
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
        self._record_unstarted = record_unstarted
        grace = self._config.grace
        # For the progress line: "stopping: waiting up to N s for K requests".
        self.stats.stopping = "signal" if record_unstarted else "max_time"
        self.stats.stop_deadline = self._clock() + grace
        self._source.start_count()  # how much input is left unread: for the summary
        for task in self._robots_waits:  # not started yet: see _process() and _worker()
            self._cut_early.add(task)
            task.cancel()
        if self._reader is not None:
            self._reader.cancel()
        self._pages.stop()
        for item in self._frontier.stop():
            if record_unstarted or item.attempts:  # a retry waiting to be due has started
                self._cancel(item)
            else:
                self._not_sent()
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(grace, self._cut_grace)

    def _cut_grace(self) -> None:
        self._cutting = True
        self.stats.stopping = "cut"
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for task in list(self._busy):
            task.cancel()
        if self._flush_timer is None:
            # The records are all in the sink now; writing them gets a bound too.
            bound = max(self._config.grace, _MIN_FLUSH_BOUND)
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(bound, self._sink.abandon)
