"""The pipeline, under one TaskGroup: reader -> frontier -> workers -> sink.

    LineSource --lines--> reader: parse, validate, dedup --Item--> Frontier (bounded)
        --> worker x C: DynamicSemaphore permit, host slot (and pacers: the frontier
                        hands out a URL only when its request may start), breaker,
                        Fetcher attempt, retry (back-off via the frontier)
        --> Record --> Sink (the only writer of the output)

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
import os
import random
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rich.console import Console
from yarl import URL

from crawler import errors, signals
from crawler.config import RunConfig
from crawler.dedup import FingerprintSet, fingerprint
from crawler.fetcher import (
    HTML_TYPES,
    KEEP_ALL,
    KEEP_HTML,
    KEEP_NONE,
    Fetcher,
    Response,
    make_session,
)
from crawler.frontier import Frontier, Item
from crawler.inputs import Source
from crawler.limiter import AIMD, DynamicSemaphore, HostState, HostTable
from crawler.progress import show_progress
from crawler.records import Error, ErrorKind, Record, UTCStamp
from crawler.recordsink import RecordSink, SinkFactory
from crawler.retry import RETRY_STATUSES, Deadline, backoff_delay, parse_retry_after
from crawler.sink import OutputClosed, Sink
from crawler.state import DONE_BEFORE, FRESH, StateStore
from crawler.stats import Snapshot, Stats
from crawler.urls import host_key, parse_target, parse_url

if TYPE_CHECKING:
    from crawler.crawl import Crawl
    from crawler.links import Candidate
    from crawler.robots import Rules
    from crawler.storage import BodyStore, WarcArchive

# Outcomes that count against a host's breaker: the host itself looks unwell. 4xx do not.
_HOST_FAILURES: Final = (
    errors.ConnectError,
    errors.DNSError,
    errors.Timeout,
    errors.TLSError,
    errors.ProtocolError,
)
_CONGESTION_STATUSES: Final = frozenset((429, 503))
_SWEEP_INTERVAL: Final = 1.0
_MAX_CRAWL_DELAY: Final = 60.0
_MIN_FLUSH_BOUND: Final = 1.0  # seconds the final flush gets after the grace period, at least
_COUNT_WAIT: Final = 2.0  # seconds a stopped run waits, at most, to count the input left unread


@dataclass(slots=True)
class Kept:
    """What became of a kept body: links found on it, where it is stored."""

    found: list[Candidate] | None = None
    body_path: str | None = None
    sha256: str | None = None


def _start_writer(writer: BodyStore | WarcArchive, what: str) -> None:
    """Start a storage writer; a failure is one clear line before the run starts."""
    try:
        writer.start()
    except OSError as exc:
        raise errors.UsageError(f"{what}: {_io_message(exc)}") from None


def _described(error: errors.FetchError | None) -> Error | None:
    """A record's ``error`` field."""
    return Error(ErrorKind(error.kind), error.message) if error is not None else None


def _elapsed_ms(deadline: Deadline | None) -> float:
    """A record's ``elapsed_ms``: from the URL's first attempt (its deadline's start)."""
    return int(deadline.elapsed() * 1_000_000) / 1000 if deadline is not None else 0.0


def _io_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename!r}" if exc.filename else "")
    return str(exc) or type(exc).__name__


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
        self._stamp = UTCStamp()
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
        self._jobs: set[asyncio.Task[None]] = set()  # sitemap reads
        self._tg: asyncio.TaskGroup | None = None
        self._timers: list[asyncio.TimerHandle] = []
        # Crawl mode and storage (set up in run()).
        self._crawl: Crawl | None = None
        self._robots_rules: Callable[[URL], Awaitable[Rules]] | None = None
        self._bodies: BodyStore | None = None
        self._warc: WarcArchive | None = None
        self._keep = KEEP_NONE
        self._follow: Callable[[URL], bool] | None = None
        # Crawl mode with credentials (-H Authorization, --secret-header): the origins of
        # the seeds, the only ones a discovered URL may send them to ("scheme://host:port").
        self._seed_origins: set[str] | None = None
        # Set up in run(), inside the event loop.
        self.stats: Stats
        self._hosts: HostTable
        self._frontier: Frontier
        self._sink: RecordSink
        self._fetcher: Fetcher
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
        self._setup_crawl()
        previous: dict[int, Any] = {}  # handlers replaced by ours, put back at the end
        try:
            self._take_signals(loop, previous)
            if config.store.active or config.crawl is not None:
                signals.start_resource_tracker()  # before any process pool: see there
            self._open_stores()
            async with make_session(config.fetch) as session:
                self._fetcher = Fetcher(session, config.fetch)
                if self._crawl is not None and self._fetcher.has_credentials:
                    self._seed_origins = set()
                self._setup_robots()
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
                    raise errors.UsageError(f"cannot continue: {_io_message(first)}") from None
        finally:
            source.stop_count()
            for timer in self._timers:
                timer.cancel()
            if self._crawl is not None:
                self._crawl.close()
            # The sink first (it waits for the body files its records name), then the
            # writers; one failing does not keep the others from closing.
            closers = [sink.aclose]
            closers += [w.aclose for w in (self._bodies, self._warc) if w is not None]
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
                raise errors.UsageError(f"cannot continue: {_io_message(failure)}") from None
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

    def _setup_crawl(self) -> None:
        config = self._config
        if config.crawl is not None:
            from crawler.crawl import Crawl

            state = self._state
            crawl = self._crawl = Crawl(
                config.crawl,
                spill_dir=os.path.dirname(os.path.abspath(state.path)) if state else None,
                memory_links=config.limits.queue_size,  # at least 512: see LinkQueue
            )
            if state is not None:
                crawl.admitted = state.done_before  # --max-pages counts resumed runs too
            self._frontier.on_idle = crawl.wake.set
            self._keep = KEEP_HTML
            scope = crawl.scope
            self._follow = lambda url: scope.allows(url, str(url))
        if config.store.active:
            self._keep = KEEP_ALL
        if config.crawl is not None or config.store.active:
            self.stats.crawl = self._crawl_counts

    def _crawl_counts(self) -> dict[str, int]:
        crawl, warc = self._crawl, self._warc
        counts: dict[str, int] = {}
        if crawl is not None:
            counts["links_found"] = crawl.found
            counts["admitted"] = crawl.admitted
            counts["links_waiting"] = len(crawl.queue)
            counts["links_spilled"] = crawl.queue.spilled
            counts["robots_fetched"] = crawl.robots.fetched if crawl.robots else 0
            counts["sitemap_errors"] = crawl.sitemap_errors
            counts["parse_errors"] = crawl.parse_errors
        if warc is not None:
            counts["warc_records"] = warc.records
        return counts

    def _open_stores(self) -> None:
        """--save-dir and --warc: fail with one clear line before the run starts."""
        store = self._config.store
        if store.save_dir is not None:
            from crawler.storage import BodyStore

            self._bodies = BodyStore(store.save_dir)
            self._sink.before_write = self._bodies.flush  # bodies land before their records
            _start_writer(self._bodies, f"cannot use --save-dir {store.save_dir!r}")
        if store.warc is not None:
            from crawler.storage import WarcArchive

            resumed = self._state is not None and self._state.resumed
            self._warc = WarcArchive(store.warc, store.warc_max_size, append=resumed)
            _start_writer(self._warc, f"cannot write --warc {store.warc!r}")
        if self._bodies is not None or self._warc is not None:
            self._sink.before_commit = self._sync_stores

    async def _sync_stores(self) -> None:
        """Before a checkpoint commits URLs: their body files and WARC records on disk
        (a writer that failed raises here, and nothing is committed)."""
        for writer in (self._bodies, self._warc):
            if writer is not None:
                await writer.sync()

    def _setup_robots(self) -> None:
        crawl = self._crawl
        if crawl is None or not crawl.config.obey_robots:
            return
        from crawler.robots import ROBOTS_MAX_BYTES, RobotsCache

        fetcher, timeout = self._fetcher, self._config.retry.timeout

        def fetch(url: URL) -> Awaitable[Response]:
            return fetcher.fetch(
                url, timeout, KEEP_ALL, None, self._seed_origin(url), cap=ROBOTS_MAX_BYTES
            )

        crawl.robots = RobotsCache(
            fetch, ttl=crawl.config.robots_ttl, clock=self._clock, on_new=self._on_robots
        )
        self._robots_rules = crawl.robots.rules
        self._frontier.checks_first = True  # see _process: robots.txt, then the pacer

    def _on_robots(self, origin: str, rules: Rules) -> None:
        """A robots.txt was read: its Crawl-delay paces the host, its sitemaps are seeds."""
        crawl = self._crawl
        assert crawl is not None  # noqa: S101
        delay = rules.crawl_delay(self._config.fetch.user_agent)
        if delay is not None and delay > 0:
            self._hosts.set_crawl_delay(host_key(URL(origin)), min(delay, _MAX_CRAWL_DELAY))
        if crawl.config.sitemaps:
            for url in crawl.new_sitemaps(rules.sitemaps):
                self._spawn_sitemap(url, 0)

    async def _run_tasks(self) -> None:
        concurrency = self._config.limits.concurrency
        crawl = self._crawl
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if crawl is not None:
                if crawl.config.max_time is not None:
                    loop = asyncio.get_running_loop()
                    self._timers.append(loop.call_later(crawl.config.max_time, self._time_up))
                for url in crawl.new_sitemaps(list(crawl.config.sitemap_urls)):
                    with contextlib.suppress(errors.InvalidURL):
                        crawl.scope.add_seed(parse_url(url))  # its site is in scope
                    self._spawn_sitemap(url, 0)
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
            for task in [*self._background, *self._jobs]:
                task.cancel()

    # -- reader ----------------------------------------------------------------------------
    async def _read(self) -> None:
        """Parse, validate and deduplicate the input, one batch at a time."""
        frontier, sink, stats, state = self._frontier, self._sink, self.stats, self._state
        dedup = self._config.input.dedup
        crawl = self._crawl
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
                        if crawl is not None:
                            crawl.scope.add_seed(url)  # done seeds too: they define the scope
                            if self._seed_origins is not None:
                                self._seed_origins.add(f"{url.scheme}://{host}")
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
                await self._feed_links(crawl)
        finally:
            frontier.close_input()

    async def _feed_links(self, crawl: Crawl) -> None:
        """Crawl mode: move discovered links into the frontier until nothing can find more.

        This task, not a worker, waits for room in the frontier: a worker that waited there
        could wait on itself."""
        from crawler.linkqueue import Link

        frontier, state, queue = self._frontier, self._state, crawl.queue
        if state is not None and state.resumed:
            after = 0
            while rows := await state.pending(after, 4096):
                after = rows[-1][0]
                for _, fp, url, depth, parent in rows:
                    crawl.requeue(Link(url, depth, parent, fp))
        while True:
            links = await queue.take(256)
            if not links:
                # A sitemap still being read cannot add a URL once --max-pages is reached:
                # not waited for (a slow one held the run up to --timeout per sitemap).
                if frontier.idle and (crawl.jobs == 0 or crawl.full):
                    return
                crawl.wake.clear()
                if not len(queue) and not (frontier.idle and (crawl.jobs == 0 or crawl.full)):
                    await crawl.wake.wait()
                continue
            fresh: Sequence[int]
            if state is not None:
                fresh = await state.claim([link.fp for link in links])
            else:
                fresh = [FRESH] * len(links)
            for link, new in zip(links, fresh, strict=True):
                if new != FRESH:  # done in an earlier run of this crawl
                    crawl.admitted -= 1
                    if new == DONE_BEFORE:
                        self.stats.skipped_done_before += 1
                    else:
                        self.stats.skipped_duplicates += 1
                    continue
                target = URL(link.url)
                item = Item(link.url, target, host_key(target), link.fp, link.depth, link.parent)
                await frontier.put(item)

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
        stats = self.stats
        clock = self._clock
        robots = self._robots_rules
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
            if self._paced_host(host):
                # The frontier handed it out for this check without its pacer (a URL
                # robots.txt refuses must not use up a Crawl-delay turn, and the
                # Crawl-delay may have only now been read): back to the frontier, which
                # hands it out again when its request may start.
                if not self._frontier.requeue(item):
                    self._given_back_unsent(item)
                return
        # Credentials go to an input URL's (a seed's) own origin, and in crawl mode to a
        # discovered URL only on a seed's origin: decided once per URL, here.
        origins = self._seed_origins
        credentials = item.parent is None or (
            origins is not None and f"{item.url.scheme}://{item.host_key}" in origins
        )
        while True:
            breaker = host.breaker
            if breaker is not None and not breaker.allow():
                why = f"circuit open for {host.key} {breaker.reason()}"
                self._final(item, None, errors.CircuitOpen(why))
                break
            deadline = item.deadline
            if deadline is None:  # the first attempt starts the URL's deadline
                deadline = item.deadline = Deadline(config.retry.timeout, clock)
                started, budget = deadline.started, config.retry.timeout
            else:
                started = clock()
                budget = deadline.expires - started
                if budget <= 0:
                    # A retry that waited in the frontier (parked behind its host or its
                    # pacer, or for a worker) past the URL's deadline.
                    if breaker is not None:
                        breaker.release_probe()  # allow() may have made it the probe
                    self._final(item, None, errors.Timeout("deadline exceeded"))
                    break
            item.attempts += 1
            stats.requests += 1
            resp: Response | None = None
            error: errors.FetchError | None = None
            try:
                resp = await self._fetcher.fetch(
                    item.url,
                    budget,
                    self._keep,
                    self._follow if item.parent is not None else None,  # seeds: see below
                    credentials,
                )
            except errors.FetchError as exc:
                error = exc
            except asyncio.CancelledError:
                if breaker is not None:
                    breaker.release_probe()
                raise
            latency = clock() - started
            stats.latency.add(latency)
            # The outcome feeds the host's breaker and, with --adaptive, its AIMD limit.
            status = resp.status if resp is not None else 0
            if breaker is not None:
                if isinstance(error, _HOST_FAILURES):
                    breaker.record(True, error.kind, error.message)
                elif status >= 500:
                    breaker.record(True, "http", f"HTTP {status}")
                else:
                    breaker.record(False)
            if host.aimd is not None:
                self._observe_aimd(host.aimd, status, error, latency)

            retryable = error.retryable if error is not None else status in RETRY_STATUSES
            if retryable and item.attempts <= config.retry.retries:
                wait = backoff_delay(
                    item.attempts, config.retry.backoff_base, config.retry.backoff_cap, self._rand()
                )
                hint = parse_retry_after(resp.retry_after) if resp is not None else None
                if hint is not None:
                    wait = max(wait, hint)
                if deadline.allows_wait(wait):
                    stats.retries += 1
                    if wait < 0.001 and not self._paced_host(host):
                        continue
                    if not self._frontier.retry_later(item, wait):
                        self._cancel(item)  # the run is stopping: no more attempts
                    return
            kept = None
            if resp is not None and resp.body is not None and error is None:
                kept = await self._keep_body(item, resp, resp.body)
            self._final(item, resp, error, kept)
            break
        if self._sink.behind:
            await self._sink.backpressure()

    def _paced_host(self, host: HostState) -> bool:
        """Whether a request to ``host`` waits for a pacer (the frontier's to decide)."""
        return host.pacer is not None or self._hosts.global_pacer is not None

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

    @staticmethod
    def _observe_aimd(
        aimd: AIMD, status: int, error: errors.FetchError | None, latency: float
    ) -> None:
        """--adaptive: congestion (429/503, timeouts, failed connects) halves the host's
        limit; a success raises it, unless latency is climbing (see AIMD)."""
        if status in _CONGESTION_STATUSES or isinstance(
            error, errors.Timeout | errors.ConnectError
        ):
            aimd.on_congestion()
        elif error is None and status < 400:
            aimd.on_success(latency)

    async def _keep_body(self, item: Item, resp: Response, body: bytes) -> Kept:
        """Crawl mode: the page's links. --save-dir / --warc: store the body (unless the
        page says noindex)."""
        kept = Kept()
        crawl = self._crawl
        noindex = False
        if crawl is not None and item.parent is None and resp.final_url != str(item.url):
            # A seed that redirects (http -> https, example.com -> www.…) lands where the
            # site really is: that is in scope too.
            crawl.scope.add_seed(URL(resp.final_url))
        if (
            crawl is not None
            and 200 <= resp.status < 300
            and resp.content_type in HTML_TYPES
            and crawl.scope.depth_ok(item.depth + 1)
        ):
            try:
                found = await crawl.page_links(resp.final_url, body)
            except Exception:  # noqa: BLE001 - a page we cannot read has no links, that is all
                crawl.parse_errors += 1
            else:
                kept.found, noindex = found.candidates, found.noindex
        if noindex:
            return kept
        bodies = self._bodies
        if bodies is not None:
            kept.body_path, kept.sha256 = await bodies.put(body)
            if bodies.behind:
                await bodies.backpressure()
        warc = self._warc
        if warc is not None and resp.exchange is not None:
            warc.add(resp.final_url, resp.exchange, body)
            if warc.behind:
                await warc.backpressure()
        return kept

    # -- records ---------------------------------------------------------------------------
    def _final(
        self,
        item: Item,
        resp: Response | None,
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
            record = self._unanswered(item, error)
        else:  # one positional constructor call (keywords cost a third more): once per URL
            record = Record(
                item.raw,  # url
                resp.final_url,
                resp.status,
                error is None,  # ok
                _described(error),  # error
                item.attempts,
                _elapsed_ms(item.deadline),
                resp.nbytes,  # bytes
                resp.content_type,
                resp.redirects,
                self._stamp(),  # fetched_at
                item.depth,
                item.parent,
            )
        links = None
        if kept is not None:
            record.body_path = kept.body_path
            record.sha256 = kept.sha256
            if kept.found and self._crawl is not None:
                # Queued before done(): the crawl cannot look finished in between.
                links = self._crawl.admit(kept.found, item.depth + 1, item.raw)
        self.stats.record(record.ok, record.status, error.kind if error else None, record.bytes)
        item.finished = True
        self._sink.put_nowait(record, item.fp, links)
        self._frontier.done(item)

    def _unanswered(self, item: Item, error: errors.FetchError | None) -> Record:
        """The record of a URL that got no response (failed, refused or cancelled)."""
        return Record(
            url=item.raw,
            error=_described(error),
            attempts=item.attempts,
            elapsed_ms=_elapsed_ms(item.deadline),
            fetched_at=self._stamp(),
            depth=item.depth,
            parent=item.parent,
        )

    def _invalid_record(self, raw: str, error: errors.InvalidURL) -> Record:
        """An input line that is not a URL we can fetch: counted and stamped here."""
        self.stats.record(False, None, error.kind, 0)
        return Record(url=raw, error=_described(error), fetched_at=self._stamp())

    def _cancel(self, item: Item) -> None:
        """The run was interrupted before ``item`` finished. Without --state it gets a
        ``cancelled`` record; with --state it gets none and is fetched on resume (so it
        is not counted as a record, a failure or a finished URL: see Stats.cancel)."""
        if self._state is None:
            error = errors.Cancelled("the run was interrupted before this URL finished")
            self.stats.cancel(recorded=True)
            self._sink.put_nowait(self._unanswered(item, error))
        else:
            self.stats.cancel(recorded=False)

    def _not_sent(self) -> None:
        """--max-time: a URL never sent gets no record: with --state it is left for the
        next run, without it is dropped (counted, so the summary can say so)."""
        if self._state is not None:
            self.stats.cancel(recorded=False)
        else:
            self.stats.dropped += 1

    def _seed_origin(self, url: URL) -> bool:
        """Whether ``url`` (robots.txt, a sitemap) is on a seed's origin (credentials)."""
        origins = self._seed_origins
        return origins is not None and f"{url.scheme}://{host_key(url)}" in origins

    # -- sitemaps ----------------------------------------------------------------------------
    def _spawn_sitemap(self, url: str, nesting: int) -> None:
        crawl, tg = self._crawl, self._tg
        if crawl is None or tg is None or self._stopping:
            return
        crawl.jobs += 1
        task = tg.create_task(self._read_sitemap(crawl, url, nesting))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _read_sitemap(self, crawl: Crawl, url: str, nesting: int) -> None:
        """One sitemap (or index): fetched outside the pacer, its URLs become seeds."""
        # A few sitemaps at a time: an index naming 10,000 of them must not hold 10,000
        # bodies at once.
        try:
            await crawl.sitemap_fetches.acquire()
        except BaseException:
            crawl.jobs -= 1
            raise
        try:
            if crawl.full:
                return  # nothing it names could be admitted
            try:
                target = parse_url(url)
                resp = await self._fetcher.fetch(
                    target, self._config.retry.timeout, KEEP_ALL, None, self._seed_origin(target)
                )
            except errors.TooLarge:
                crawl.sitemap_errors += 1  # a sitemap that was there but could not be read
                return
            except errors.FetchError:
                return
            if resp.status < 400 and resp.body:
                await crawl.read_sitemap(url, resp.body, nesting, self._spawn_sitemap)
        except Exception:  # noqa: BLE001 - a broken sitemap ends itself, never the crawl
            crawl.sitemap_errors += 1
        finally:
            crawl.sitemap_fetches.release()
            crawl.jobs -= 1
            crawl.wake.set()

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
        for job in self._jobs:
            job.cancel()
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
