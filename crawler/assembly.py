"""The parts of one run, made in the order they need each other, and taken apart again.

    Stats, HostTable --> Ledger.open (what earlier runs did) --> Crawling (the crawl and
    the stores: it reads the ledger) --> Frontier (given the crawl's hooks) --> the
    RecordSink (given the ledger and the stores' hooks) --> Reader, Workers

Every collaborator is handed over when its user is made; nothing is wired in afterwards.
``Parts`` is also what the stats read their levels from (``crawler.stats.Gauges``): the
frontier's, the input's and the sink's, which exist only once the run is set up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from crawler import errors, signals
from crawler.config import FetchConfig, RunConfig
from crawler.crawling import Crawling, io_message
from crawler.frontier import Frontier
from crawler.inputs import Source
from crawler.limiter import DynamicSemaphore, HostTable
from crawler.reader import Reader
from crawler.records import Records
from crawler.recordsink import RecordSink, SinkFactory
from crawler.request import run_request
from crawler.stats import Stats
from crawler.stores import Stores
from crawler.worker import Workers


class Parts:
    def __init__(
        self, config: RunConfig, stores: Stores, source: Source, clock: Callable[[], float]
    ) -> None:
        self._config = config
        self._stores = stores
        self._source = source
        self._clock = clock
        self.stats = Stats(clock, self)
        self.hosts = HostTable(config.limits, config.breaker, clock)
        self.records = _records(config.fetch)  # reader and workers share it
        # Made by open():
        self.pages: Crawling  # crawl mode and storage
        self.frontier: Frontier
        self.sink: RecordSink
        self.reader: Reader
        self.workers: Workers

    async def open(
        self,
        sink_factory: SinkFactory,
        notice: Callable[[], None] | None,
        on_last_left: Callable[[], None],
    ) -> None:
        """Open the ledger and the outputs (a failure is one clear line, and whatever was
        opened is closed again), and make the rest."""
        config, stores, stats = self._config, self._stores, self.stats
        ledger = stores.ledger
        if config.store.active or config.crawl is not None:
            signals.start_resource_tracker()  # before any process pool: see there
        await ledger.open()
        stats.done_before = ledger.done_before
        self.pages = pages = Crawling(config, stores, stats, self.hosts, self._clock)
        self.frontier = frontier = Frontier(
            config.limits.queue_size,
            self.hosts,
            on_idle=pages.on_idle,
            on_host_bound=notice,
            checks_first=pages.checks_first,
        )
        try:
            hooks = await pages.open_stores()
            self.sink = sink = sink_factory(config.sink, ledger, hooks)
            await sink.open()
        except BaseException as exc:
            await self.release(None)
            if isinstance(exc, OSError):
                output = config.sink.output
                raise errors.UsageError(f"cannot write output {output!r}: {exc.strerror}") from None
            raise
        records = self.records
        self.reader = Reader(
            self._source,
            frontier,
            sink,
            stats,
            records,
            pages,
            stores.seen,
            dedup=config.input.dedup,
            request=run_request(config.fetch),
        )
        self.workers = Workers(
            config,
            frontier,
            self.hosts,
            DynamicSemaphore(config.limits.concurrency),
            pages,
            sink,
            stats,
            records,
            ledger.durable,
            self._clock,
            on_last_left,
        )

    async def release(self, sink: RecordSink | None) -> None:
        """Close what the run opened: the sink first (it waits for the body files its
        records name), then the storage writers, then the ledger; one failing does not
        keep the others from closing (shielded: a cancellation cannot cut this short)."""
        pages = self.pages
        pages.close()
        closers = [*([sink.aclose] if sink is not None else []), *(w.aclose for w in pages.writers)]
        failure: BaseException | None = None
        try:
            for close in closers:
                try:
                    await asyncio.shield(close())
                except errors.storage_errors() as exc:
                    failure = failure or exc
        finally:
            await asyncio.shield(self._stores.ledger.aclose())
        if failure is not None:
            raise errors.UsageError(f"cannot continue: {io_message(failure)}") from None

    # -- gauges, for the stats (crawler.stats.Gauges) ----------------------------------------
    def in_flight(self) -> int:
        return self.frontier.in_flight

    def queued(self) -> int:
        return self.frontier.queued + self.frontier.delayed

    def input_lines(self) -> int | None:
        return self._source.lines_total

    def lost(self) -> int:
        return self.sink.lost

    def crawl_counts(self) -> dict[str, int] | None:
        return self.pages.counts()


def _records(config: FetchConfig) -> Records:
    """The records builder of the run, decided once, not per URL: a plain run builds
    plain records; --include-*/--no-follow add what the fetcher kept, proxies name the
    proxy, --etags says whether the answer was 304."""
    kinds: list[type[Records]] = []
    if config.detail:  # each imported only for runs that use it (as crawler.fetchers does)
        from crawler.detail import DetailRecords

        kinds.append(DetailRecords)  # first: its __init__ takes include_body
    if config.proxied:
        from crawler.proxied import ProxiedRecords

        kinds.append(ProxiedRecords)
    if config.etags is not None:
        from crawler.sessions import RevisitRecords

        kinds.append(RevisitRecords)
    if not kinds:
        return Records(config.method)
    kind: type[Records] = kinds[0]
    if len(kinds) > 1:
        kind = type("Records", tuple(kinds), {"__slots__": ()})
    if config.detail:
        from crawler.detail import DetailRecords

        if issubclass(kind, DetailRecords):  # it came first: its __init__ is the one run
            return kind(config.method, config.include_body)
    return kind(config.method)
