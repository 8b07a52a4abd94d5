"""Crawl mode: what the pipeline adds to follow links.

    worker: page fetched -> links extracted (selectolax; big pages in a child process)
        -> admit: parse, scope, depth, --max-pages, dedup (all synchronous, no wait)
        -> LinkQueue (memory, spills to disk) -> feeder -> Frontier (bounded; the feeder
           waits there, never a worker)

The run ends when the feeder finds no link queued, the frontier idle (nothing queued, in
flight or waiting for a retry) and no sitemap being read: nothing can discover a link any
more. robots.txt comes from RobotsCache (once per origin); its Crawl-delay becomes the
host's pacer, its Sitemap: lines (with --sitemaps) more seeds.
"""

from __future__ import annotations

import asyncio
import functools
import io
import multiprocessing
import zlib
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Final
from xml.etree.ElementTree import ParseError

from defusedxml.ElementTree import iterparse

from crawler.config import CrawlConfig
from crawler.dedup import FingerprintSet
from crawler.linkqueue import Link, LinkQueue
from crawler.links import Candidate, Found, find, ignore_sigint, parse_candidates
from crawler.robots import RobotsCache
from crawler.scope import Scope

_SITEMAP_MAX_BYTES: Final = 50 * 1024 * 1024  # the sitemap protocol's own limit, unzipped
_SITEMAP_MAX_NESTING: Final = 4
_SITEMAP_MAX_FILES: Final = 10_000

_BIG_PAGE_WORKERS: Final = 1


class Crawl:
    def __init__(self, config: CrawlConfig, *, spill_dir: str | None, memory_links: int) -> None:
        self.config = config
        self.scope = Scope(config)
        self.seen = FingerprintSet()
        self.queue = LinkQueue(memory_links, spill_dir)
        self.robots: RobotsCache | None = None  # set by the engine (it owns the fetcher)
        self.admitted = 0  # URLs let into the crawl (counted against --max-pages)
        self.found = 0  # links seen on pages, before any filter
        self.jobs = 0  # sitemaps being read
        self.sitemap_errors = 0
        self.parse_errors = 0  # pages whose links could not be read
        self.wake = asyncio.Event()  # a link was queued, or the frontier went idle
        self._parse_pool = ThreadPoolExecutor(1, thread_name_prefix="crawler-sitemaps")
        # Big pages are parsed in a child process: a thread would hold the GIL for most of
        # the parse, and the event loop would wait for it at every syscall.
        self._big_pages: ProcessPoolExecutor | None = None
        self._sitemaps_seen: set[str] = set()

    @property
    def full(self) -> bool:
        limit = self.config.max_pages
        return limit is not None and self.admitted >= limit

    def add_seed(self, fp: int) -> bool:
        """A new seed from the input; False if --max-pages is reached."""
        self.seen.add(fp)
        if self.full:
            return False
        self.admitted += 1
        return True

    async def page_links(self, page_url: str, body: bytes) -> Found:
        """Links of an HTML body; a big body is parsed in a child process."""
        config = self.config
        if len(body) <= config.parse_inline_bytes:
            found = find(
                page_url, body, self.scope, assets=config.assets, obey_robots=config.obey_robots
            )
        else:
            if self._big_pages is None:
                self._big_pages = ProcessPoolExecutor(
                    _BIG_PAGE_WORKERS,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=ignore_sigint,
                )
            call = functools.partial(
                find,
                page_url,
                body,
                self.scope,
                assets=config.assets,
                obey_robots=config.obey_robots,
            )
            try:
                found = await asyncio.get_running_loop().run_in_executor(self._big_pages, call)
            except BrokenExecutor:
                # The parser process died (killed, out of memory): a new one next time;
                # this page is parsed here.
                self._big_pages = None
                found = call()
        self.found += found.total
        return found

    def admit(self, found: list[Candidate], depth: int, parent: str | None) -> list[Link]:
        """Queue the (in-scope) candidates this crawl follows; returns them (for --state)."""
        scope = self.scope
        if not scope.depth_ok(depth):
            return []
        seen = self.seen
        admitted: list[Link] = []
        for text, fp in found:
            if self.full:
                break
            if fp in seen:
                continue
            seen.add(fp)
            self.admitted += 1
            link = Link(text, depth, parent, fp)
            self.queue.push(link)
            admitted.append(link)
        if admitted:
            self.wake.set()
        return admitted

    def requeue(self, link: Link) -> None:
        """A link from the state's pending table (a resumed crawl)."""
        if self.seen.add(link.fp):
            self.admitted += 1
            self.queue.push(link)

    def close(self) -> None:
        self.queue.close()
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        if self._big_pages is not None:
            self._big_pages.shutdown(wait=True, cancel_futures=True)

    # -- sitemaps ------------------------------------------------------------------------
    def new_sitemaps(self, urls: list[str]) -> list[str]:
        """The sitemap URLs not read yet (each is read once per run)."""
        fresh = []
        for url in urls:
            if url not in self._sitemaps_seen and len(self._sitemaps_seen) < _SITEMAP_MAX_FILES:
                self._sitemaps_seen.add(url)
                fresh.append(url)
        return fresh

    async def read_sitemap(
        self,
        url: str,
        body: bytes,
        nesting: int,
        spawn: Callable[[str, int], None],
    ) -> None:
        """Index files spawn reads of their sitemaps; URL sets become seeds (depth 0)."""
        loop = asyncio.get_running_loop()
        is_index, locs = await loop.run_in_executor(self._parse_pool, parse_sitemap, body)
        if is_index:
            if nesting < _SITEMAP_MAX_NESTING:
                for loc in self.new_sitemaps(locs):
                    spawn(loc, nesting + 1)
            return
        self.admit(parse_candidates(locs, self.scope), 0, url)


def parse_sitemap(body: bytes) -> tuple[bool, list[str]]:
    """(is it a sitemap index, its <loc> URLs). Gzipped bodies are unpacked (to 50 MiB).

    defusedxml refuses entity declarations (billion laughs, external entities)."""
    if body[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, _SITEMAP_MAX_BYTES)
        except zlib.error:
            return False, []
    is_index = False
    locs: list[str] = []
    try:
        for _, elem in iterparse(io.BytesIO(body), events=("end",)):
            tag = elem.tag.rpartition("}")[2]
            if tag == "loc" and elem.text:
                locs.append(elem.text.strip())
            elif tag == "sitemapindex":
                is_index = True
            elif tag in ("url", "sitemap"):
                elem.clear()
    except (ParseError, ValueError):
        pass  # keep what came before the error, as search engines do
    return is_index, locs
