"""Crawl mode and storage, as wired into a run: robots.txt, sitemaps, the links and the
storage of kept bodies, link admission, the crawl counters.

The engine calls in at fixed points: ``open_stores`` before the run (the hooks its sink
is made with), ``start`` once the fetcher exists, ``begin`` inside the run's TaskGroup,
``keep_body`` and ``admit`` for each page, ``feed_links`` from the reader (discovered
links into the frontier), ``stop`` when intake stops, ``close`` at the end. What it gives
the frontier (``on_idle``, ``checks_first``) is known when it is made. Sitemap reads are
tasks of the run's TaskGroup, kept in ``jobs`` so a stop can cancel them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from msgspec import Struct
from yarl import URL

from crawler import errors
from crawler.config import RunConfig
from crawler.fetcher import Fetcher
from crawler.frontier import Frontier
from crawler.limiter import HostTable
from crawler.recordsink import SinkHooks
from crawler.response import HTML_TYPES, KEEP_ALL, KEEP_HTML, KEEP_NONE, Detail, Exchange, Response
from crawler.stats import Stats
from crawler.stores import Stores
from crawler.task import Item
from crawler.urls import host_key, parse_url

if TYPE_CHECKING:
    from crawler.bodies import BodyStore
    from crawler.following import Crawl
    from crawler.linkqueue import Link
    from crawler.links import Candidate
    from crawler.robots import Rules
    from crawler.warc import WarcArchive

_MAX_CRAWL_DELAY: Final = 60.0


class Kept(Struct):
    """What became of a kept body: links found on it, where it is stored."""

    found: list[Candidate] | None = None
    body_path: str | None = None
    sha256: str | None = None


def io_message(exc: BaseException) -> str:
    """An I/O error in one line: "No space left on device: 'out.jsonl'"."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename!r}" if exc.filename else "")
    return str(exc) or type(exc).__name__


async def _start_writer(writer: BodyStore | WarcArchive, what: str) -> None:
    """Start a storage writer; a failure is one clear line before the run starts."""
    try:
        await writer.start()
    except OSError as exc:
        raise errors.UsageError(f"{what}: {io_message(exc)}") from None


class Crawling:
    """Crawl mode (``crawl``) and --save-dir/--warc (``bodies``, ``warc``) for one run."""

    def __init__(
        self,
        config: RunConfig,
        stores: Stores,
        stats: Stats,
        hosts: HostTable,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._stores = stores  # the ledger open: what an earlier run did is known
        self.stats = stats
        self._hosts = hosts
        self._clock = clock
        self._crawl: Crawl | None = None
        self._fetcher: Fetcher | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._stopping = False
        self.jobs: set[asyncio.Task[None]] = set()  # sitemap reads
        self.robots_rules: Callable[[URL], Awaitable[Rules]] | None = None
        self._bodies: BodyStore | None = None
        self._warc: WarcArchive | None = None
        self.keep = KEEP_NONE  # which bodies the fetcher keeps
        self.follow: Callable[[URL], bool] | None = None  # redirects of discovered URLs
        # Crawl mode with credentials (-H Authorization, --secret-header): the origins of
        # the seeds, the only ones a discovered URL may send them to ("scheme://host:port").
        self.seed_origins: set[str] | None = None
        self._setup_crawl()

    @property
    def crawl(self) -> Crawl | None:
        return self._crawl

    @property
    def on_idle(self) -> Callable[[], None] | None:
        """For the frontier, when the last request in flight ends: links may wait."""
        return self._crawl.wake.set if self._crawl is not None else None

    @property
    def checks_first(self) -> bool:
        """For the frontier: a URL is handed out first for its robots.txt check, then
        (given back) for its request, paced (see _process in worker.py)."""
        crawl = self._crawl
        return crawl is not None and crawl.config.obey_robots

    @property
    def writers(self) -> list[BodyStore | WarcArchive]:
        return [w for w in (self._bodies, self._warc) if w is not None]

    def start(self, fetcher: Fetcher) -> None:
        """The run's fetcher exists: robots.txt can be read (and sitemaps, once begun)."""
        self._fetcher = fetcher
        if self._crawl is not None and fetcher.has_credentials:
            self.seed_origins = set()
        self._setup_robots(fetcher)

    def begin(self, tg: asyncio.TaskGroup) -> None:
        """Inside the run's TaskGroup: read the sitemaps given by --sitemap."""
        self._tg = tg
        crawl = self._crawl
        if crawl is not None:
            for url in crawl.new_sitemaps(list(crawl.config.sitemap_urls)):
                with contextlib.suppress(errors.InvalidURL):
                    crawl.scope.add_seed(parse_url(url))  # its site is in scope
                self._spawn_sitemap(url, 0)

    def stop(self) -> None:
        """Intake stopped: no more sitemaps; those being read are cancelled."""
        self._stopping = True
        for job in self.jobs:
            job.cancel()

    def close(self) -> None:
        if self._crawl is not None:
            self._crawl.close()

    def seed(self, url: URL, host: str) -> None:
        """An input URL (done before or not): it defines the scope, and its origin may
        get credentials."""
        crawl = self._crawl
        if crawl is not None:
            crawl.scope.add_seed(url)
            if self.seed_origins is not None:
                self.seed_origins.add(f"{url.scheme}://{host}")

    def credentials(self, item: Item) -> bool:
        """Credentials go to an input URL's (a seed's) own origin, and in crawl mode to a
        discovered URL only on a seed's origin."""
        origins = self.seed_origins
        return item.parent is None or (
            origins is not None and f"{item.url.scheme}://{item.host_key}" in origins
        )

    async def admit(self, kept: Kept, item: Item) -> list[Link] | None:
        """The links found on ``item``'s page that this crawl follows, queued (before the
        page is done: the crawl cannot look finished in between)."""
        if kept.found and self._crawl is not None:
            return await self._crawl.admit(kept.found, item.depth + 1, item.raw)
        return None

    def _setup_crawl(self) -> None:
        config = self._config
        if config.crawl is not None:
            from crawler.following import Crawl

            stores = self._stores
            crawl = self._crawl = Crawl(
                config.crawl, seen=stores.seen, queue=stores.queue, stats=self.stats
            )
            crawl.admitted = stores.ledger.done_before  # --max-pages counts resumed runs too
            self.keep = KEEP_HTML
            scope = crawl.scope
            self.follow = lambda url: scope.allows(url, str(url))
        if config.store.active:
            self.keep = KEEP_ALL

    def counts(self) -> dict[str, int] | None:
        """Crawl mode and storage counters, for the stats (None: neither is on)."""
        if not (self._config.crawl is not None or self._config.store.active):
            return None
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

    async def open_stores(self) -> SinkHooks:
        """--save-dir and --warc: fail with one clear line before the run starts. Returns
        what the run's sink awaits: the bodies land before their records, and before a
        --state checkpoint commits, the bodies and WARC records are on disk."""
        store = self._config.store
        ledger = self._stores.ledger
        if store.save_dir is not None:
            from crawler.bodies import BodyStore

            self._bodies = BodyStore(store.save_dir)
            await _start_writer(self._bodies, f"cannot use --save-dir {store.save_dir!r}")
        if store.warc is not None:
            from crawler.warc import WarcArchive

            self._warc = WarcArchive(store.warc, store.warc_max_size, append=ledger.resumed)
            await _start_writer(self._warc, f"cannot write --warc {store.warc!r}")
        durable = ledger.durable and (self._bodies is not None or self._warc is not None)
        return SinkHooks(
            before_write=self._bodies.flush if self._bodies is not None else None,
            before_commit=self._sync_stores if durable else None,
        )

    async def _sync_stores(self) -> None:
        """Before a checkpoint commits URLs: their body files and WARC records on disk
        (a writer that failed raises here, and nothing is committed)."""
        for writer in (self._bodies, self._warc):
            if writer is not None:
                await writer.sync()

    def _setup_robots(self, fetcher: Fetcher) -> None:
        crawl = self._crawl
        if crawl is None or not crawl.config.obey_robots:
            return
        from crawler.robots import ROBOTS_MAX_BYTES, RobotsCache

        timeout = self._config.retry.timeout

        def fetch(url: URL) -> Awaitable[Response]:
            return fetcher.fetch(
                url, timeout, KEEP_ALL, None, self._seed_origin(url), cap=ROBOTS_MAX_BYTES
            )

        crawl.robots = RobotsCache(
            fetch,
            ttl=crawl.config.robots_ttl,
            clock=self._clock,
            on_new=self._on_robots,
            on_evict=self._on_robots_gone,
        )
        self.robots_rules = crawl.robots.rules

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

    def _on_robots_gone(self, origin: str, rules: Rules) -> None:
        """A robots.txt left the cache (bounded): the Crawl-delay it set is released."""
        delay = rules.crawl_delay(self._config.fetch.user_agent)
        if delay is not None and delay > 0:
            self._hosts.forget_crawl_delay(host_key(URL(origin)))

    async def keep_body(self, item: Item, resp: Response, body: bytes) -> Kept:
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
            exchange: Exchange | Detail | None = resp.exchange
            if isinstance(exchange, Detail):  # --include-*: the heads WARC needs are inside
                exchange = exchange.exchange
            if isinstance(exchange, Exchange):
                warc.add(resp.final_url, exchange, body)
            if warc.behind:
                await warc.backpressure()
        return kept

    async def feed_links(self, frontier: Frontier) -> None:
        """Crawl mode: move discovered links into the frontier until nothing can find more.

        This task, not a worker, waits for room in the frontier: a worker that waited there
        could wait on itself."""
        crawl = self._crawl
        if crawl is None:
            return
        queue = crawl.queue
        await crawl.carry_over()  # a resumed crawl: what the earlier runs left waiting
        while True:
            links = await queue.take(256)
            if not links:
                # A sitemap still being read cannot add a URL once --max-pages is reached:
                # not waited for (a slow one held the run up to --timeout per sitemap).
                if frontier.idle and (crawl.jobs == 0 or crawl.full) and crawl.may_end():
                    return
                crawl.wake.clear()
                idle = frontier.idle and (crawl.jobs == 0 or crawl.full)
                if not len(queue) and not (idle and crawl.may_end()):
                    await crawl.wake.wait()
                continue
            for link in links:
                target = URL(link.url)
                item = Item(link.url, target, host_key(target), link.fp, link.depth, link.parent)
                await frontier.put(item)

    def _seed_origin(self, url: URL) -> bool:
        """Whether ``url`` (robots.txt, a sitemap) is on a seed's origin (credentials)."""
        origins = self.seed_origins
        return origins is not None and f"{url.scheme}://{host_key(url)}" in origins

    # -- sitemaps ----------------------------------------------------------------------------
    def _spawn_sitemap(self, url: str, nesting: int) -> None:
        crawl, tg = self._crawl, self._tg
        if crawl is None or tg is None or self._stopping:
            return
        crawl.jobs += 1
        task = tg.create_task(self._read_sitemap(crawl, url, nesting))
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def _read_sitemap(self, crawl: Crawl, url: str, nesting: int) -> None:
        """One sitemap (or index): fetched outside the pacer, its URLs become seeds."""
        # A few sitemaps at a time: an index naming 10,000 of them must not hold 10,000
        # bodies at once.
        try:
            await crawl.sitemap_fetches.acquire()
        except BaseException:
            crawl.jobs -= 1
            raise
        fetcher = self._fetcher
        assert fetcher is not None  # noqa: S101 - sitemaps are read once the run started
        try:
            if crawl.full:
                return  # nothing it names could be admitted
            try:
                target = parse_url(url)
                resp = await fetcher.fetch(
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
