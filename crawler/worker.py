"""The workers: one URL at a time from the frontier, through Attempts, to its record.

    Frontier --Item--> worker x C: permit (--adaptive), robots.txt wait (crawl mode),
        Attempts.run (attempts.py) --> a record to the RecordSink, or back to the
        frontier to wait for a retry

Every URL the workers take gets exactly one record (or, with --state, none and stays
pending), written synchronously once its outcome is known, so a cancellation can neither
lose nor duplicate it. The engine (engine.py) decides when the run stops; ``Workers``
carries that out for the URLs it holds: ``stop`` cuts robots.txt waits short and settles
the URLs the frontier gave back, ``cut`` cancels the requests in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

from crawler import errors
from crawler.attempts import Attempts, Fetches, attempts_for
from crawler.config import RunConfig
from crawler.crawling import Crawling, Kept
from crawler.frontier import Frontier
from crawler.limiter import DynamicSemaphore, HostTable
from crawler.linkqueue import Link
from crawler.records import Answer, Record, Records
from crawler.recordsink import RecordSink
from crawler.request import Request
from crawler.stats import Stats
from crawler.task import Item

_SWEEP_INTERVAL: Final = 1.0


class Workers:
    """The workers' shared state: what each holds, and how a stop settles it."""

    def __init__(
        self,
        config: RunConfig,
        frontier: Frontier,
        hosts: HostTable,
        permits: DynamicSemaphore,
        pages: Crawling,
        sink: RecordSink,
        stats: Stats,
        records: Records,
        durable: bool,
        clock: Callable[[], float],
        on_last_left: Callable[[], None],
    ) -> None:
        self._config = config
        self._frontier = frontier
        self._hosts = hosts
        self._permits = permits  # the global limit: consulted only with --adaptive
        self._pages = pages
        self._sink = sink
        self.stats = stats
        self._records = records
        # --state: a URL left without a record is done by the next run (no `cancelled`).
        self._durable = durable
        self._clock = clock
        self._on_last_left = on_last_left
        self.cutting = False  # the grace period is over: in-flight workers are cancelled
        self._record_unstarted = True  # a signal, not --max-time: unsent URLs get records
        self._busy: dict[asyncio.Task[None], Item] = {}
        self._robots_waits: set[asyncio.Task[None]] = set()  # waiting for robots.txt
        self._cut_early: set[asyncio.Task[None]] = set()  # ...cancelled when intake stopped
        self._left = config.limits.concurrency

    # -- the loop --------------------------------------------------------------------------
    def start(self, tg: asyncio.TaskGroup, fetcher: Fetches) -> None:
        """The workers, in ``tg``, sharing one attempt loop over ``fetcher``."""
        pages = self._pages
        attempts = attempts_for(self._config.retry)(
            fetcher,
            self._config.retry,
            self._hosts,
            self.stats,
            clock=self._clock,
            keep=pages.keep,
            follow=pages.follow,
            retry_unsafe=self._config.fetch.retry_unsafe,
        )
        for _ in range(self._config.limits.concurrency):
            tg.create_task(self.run(attempts))

    async def run(self, attempts: Attempts) -> None:
        """One worker, until the frontier hands it None (or the grace period ends)."""
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
                        await self._process(item, attempts)
                    except errors.HandBack:  # a shared job's host no longer ours
                        self._handed_back(item)
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
                        cut = self.cutting or task in self._cut_early
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
            self._left -= 1
            if self._left == 0:
                self._on_last_left()

    async def _process(self, item: Item, attempts: Attempts) -> None:
        """Attempts for one URL until it has a record or goes back to wait for a retry."""
        host = item.host
        assert host is not None  # noqa: S101 - the frontier hands out items with a slot
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
            if not rules.allows(item.raw, self._config.fetch.user_agent):
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
        resp, error, wait = await attempts.run(item, self._pages.credentials(item))
        if wait is not None:
            if not self._frontier.retry_later(item, wait):
                self._cancel(item)  # the run is stopping: no more attempts
            return
        kept = links = None
        if resp is not None and resp.body is not None and error is None:
            pages = self._pages
            kept = await pages.keep_body(item, resp, resp.body)
            links = await pages.admit(kept, item)  # queued before the page is done
        self._final(item, resp, error, kept, links)
        if self._sink.behind:
            await self._sink.backpressure()

    # -- stopping --------------------------------------------------------------------------
    def stop(self, *, record_unstarted: bool) -> None:
        """Intake stopped: the workers waiting for robots.txt are cancelled (their URLs
        were not sent yet); ``record_unstarted`` (a signal, not --max-time): unsent URLs
        get ``cancelled`` records."""
        self._record_unstarted = record_unstarted
        for task in self._robots_waits:  # not started yet: see _process() and run()
            self._cut_early.add(task)
            task.cancel()

    def settle(self, unstarted: Iterable[Item]) -> None:
        """The URLs the stopped frontier gave back, never handed to a worker."""
        for item in unstarted:
            if self._record_unstarted or item.attempts:  # a retry waiting has started
                self._cancel(item)
            else:
                self._not_sent()

    def cut(self) -> None:
        """The grace period is over: the requests in flight are cancelled."""
        self.cutting = True
        for task in list(self._busy):
            task.cancel()

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
        links: list[Link] | None = None,
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
        if kept is not None:
            record.body_path = kept.body_path
            record.sha256 = kept.sha256
        if item.request is not None:
            _of_request(record, item.request)
        self.stats.record(record.ok, record.status, error.kind if error else None, record.bytes)
        item.finished = True
        self._sink.put_nowait(record, item.fp, links)
        self._frontier.done(item)

    def _cancel(self, item: Item) -> None:
        """The run was interrupted before ``item`` finished. Without --state it gets a
        ``cancelled`` record; with --state it gets none and is fetched on resume (so it
        is not counted as a record, a failure or a finished URL: see Stats.cancel)."""
        if not self._durable:
            error = errors.Cancelled("the run was interrupted before this URL finished")
            self.stats.cancel(recorded=True)
            record = self._records.unanswered(item, error)
            if item.request is not None:
                _of_request(record, item.request)
            self._sink.put_nowait(record)
        else:
            self.stats.cancel(recorded=False)

    def _handed_back(self, item: Item) -> None:
        """Its host is no longer this process's to fetch (crawler.errors.HandBack): no
        record; the sink is told, if it wants to know (a shared job's: the URL stays
        pending for the host's next owner)."""
        item.finished = True
        if item.host is not None:
            item.host.abandon()  # the attempt never went: no verdict for its breaker
        self.stats.cancel(recorded=False)
        left = getattr(self._sink, "left", None)
        if left is not None:
            left(item.fp)
        self._frontier.done(item)

    def _not_sent(self) -> None:
        """--max-time: a URL never sent gets no record: with --state it is left for the
        next run, without it is dropped (counted, so the summary can say so)."""
        if self._durable:
            self.stats.cancel(recorded=False)
        else:
            self.stats.dropped += 1

    # -- background --------------------------------------------------------------------------
    async def maintain(self) -> None:
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


def _of_request(record: Record, request: Request) -> None:
    """What a record says of its request: the method sent, and the line's ``meta``."""
    record.method = request.method
    record.meta = request.meta
