"""Crawl mode: what the pipeline adds to follow links.

    worker: page fetched -> links extracted (selectolax; big or deep pages in a child
           process, killed past its deadline: crawler/parser.py)
        -> admit: scope and depth, then one Seen claim for the page's links (the same
           dedup as the input's), --max-pages
        -> WorkQueue (memory, spills to disk; with --state, an earlier run's waiting
           links first) -> feeder -> Frontier (bounded; the feeder waits there, never a
           worker)

The run ends when the feeder finds no link queued, the frontier idle (nothing queued, in
flight or waiting for a retry) and no sitemap being read: nothing can discover a link any
more. robots.txt comes from RobotsCache (once per origin); its Crawl-delay becomes the
host's pacer, its Sitemap: lines (with --sitemaps) more seeds, read a step at a time in
another child (crawler/sitemaps.py).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from typing import Final

from crawler import sitemaps
from crawler.config import CrawlConfig
from crawler.linkqueue import Link
from crawler.links import Candidate, Found, find
from crawler.parser import ParserProcess
from crawler.robots import RobotsCache
from crawler.scope import Scope
from crawler.sitemaps import parse_sitemap as parse_sitemap  # re-exported for tests
from crawler.stats import Stats
from crawler.stores import DONE_BEFORE, FRESH, Seen, WorkQueue

_SITEMAP_MAX_NESTING: Final = 4
_SITEMAP_MAX_FILES: Final = 10_000
# Sitemaps fetched (their bodies held) at once; they are parsed one at a time.
_SITEMAP_FETCHES: Final = 4
# Address space of a parser child: a hostile page can make lexbor allocate ~700 MB/s
# within its deadline; past this, the parse fails (parse_errors) instead.
_PARSER_MEMORY: Final = 1 << 30
_SITEMAP_BATCH: Final = 2_000  # URLs per step of a sitemap: admitting them is one loop turn

# A page parsed inline blocks the loop while lexbor runs; lexbor is quadratic in the
# nesting depth (16k nested <ul> take 0.36 s), and the depth is at most the number of
# opening tags. A page with more than this many parses in the child, within its deadline
# (4096 nested levels: ~25 ms).
_INLINE_MAX_OPEN_TAGS: Final = 4096
# The other quadratic: formatting elements left open (<b x=1><b x=2>...) are rebuilt, all
# of them, after every tag that closed them (<p>x<p>x...): 2,000 of each in a 21 KB page
# build 4 million elements, 3 s and 1.5 GB. Rebuilt elements are at most (open formatting
# elements) x (opening tags); formatting elements without attributes count at most 3 of
# each kind (the HTML parser's "Noah's Ark" clause), so only those with attributes are
# counted. Past this product a page parses in the child.
_INLINE_MAX_REBUILT: Final = 1 << 18  # ~0.13 s, ~100 MB at worst (was 4096^2 / 4)
_PLAIN_FORMATTING: Final = 3 * 13
_FORMATTING_WITH_ATTRS: Final = re.compile(
    rb"<(?:[bisu]|em|tt|big|code|font|nobr|small|strike|strong)[\s/]", re.IGNORECASE
)


def _shallow(body: bytes) -> bool:
    """Cheap (two memchr-speed scans, a regex scan only for pages with many tags): can this
    page not make lexbor's work explode (deep nesting, formatting elements rebuilt)?"""
    opened = body.count(b"<") - body.count(b"</")
    if opened * (opened + _PLAIN_FORMATTING) <= _INLINE_MAX_REBUILT:
        return True
    if opened > _INLINE_MAX_OPEN_TAGS:
        return False
    formatting = len(_FORMATTING_WITH_ATTRS.findall(body)) + _PLAIN_FORMATTING
    return formatting * opened <= _INLINE_MAX_REBUILT


def _yes() -> bool:
    return True


class Crawl:
    def __init__(self, config: CrawlConfig, *, seen: Seen, queue: WorkQueue, stats: Stats) -> None:
        self.config = config
        self._stats = stats
        self.scope = Scope(config)
        self._seen = seen  # the run's, shared with the input's reader
        self.queue = queue
        self.robots: RobotsCache | None = None  # set by the engine (it owns the fetcher)
        self.admitted = 0  # URLs let into the crawl (counted against --max-pages)
        self.found = 0  # links seen on pages, before any filter
        self.jobs = 0  # sitemaps being read
        self.sitemap_errors = 0
        self.parse_errors = 0  # pages whose links could not be read
        self.wake = asyncio.Event()  # a link was queued, or the frontier went idle
        # Idle here: may the crawl end? (--workers: only once the coordinator says every
        # worker is idle and no link is on its way; it then sets wake.)
        self.may_end: Callable[[], bool] = _yes
        # Pages over parse_inline_bytes and sitemaps are parsed in child processes, each
        # call within config.parse_timeout (see crawler/parser.py): lexbor and expat can
        # be made to run for minutes, and a C call cannot be cancelled, only killed.
        self._pages = ParserProcess(config.parse_timeout, _PARSER_MEMORY)
        self._sitemaps = ParserProcess(config.parse_timeout, _PARSER_MEMORY)
        self._sitemap_turn = asyncio.Lock()  # the child reads one sitemap at a time
        self.sitemap_fetches = asyncio.Semaphore(_SITEMAP_FETCHES)
        self._sitemaps_seen: set[str] = set()

    @property
    def full(self) -> bool:
        limit = self.config.max_pages
        return limit is not None and self.admitted >= limit

    def add_seed(self) -> bool:
        """A new seed from the input (claimed by the reader); False if --max-pages is
        reached."""
        if self.full:
            return False
        self.admitted += 1
        return True

    async def page_links(self, page_url: str, body: bytes) -> Found:
        """Links of an HTML body; a big (or possibly deeply nested) one is parsed in the
        child. Raises ParserError if the child takes too long or dies: the page then has
        no links (and counts as a parse error)."""
        config = self.config
        if len(body) <= config.parse_inline_bytes and _shallow(body):
            found = find(
                page_url, body, self.scope, assets=config.assets, obey_robots=config.obey_robots
            )
        else:
            call = functools.partial(
                find,
                page_url,
                body,
                self.scope,
                assets=config.assets,
                obey_robots=config.obey_robots,
            )
            found = await self._pages.call(call)
        self.found += found.total
        return found

    async def admit(self, found: list[Candidate], depth: int, parent: str | None) -> list[Link]:
        """Claim the (in-scope) candidates and queue the new ones, up to --max-pages;
        returns them (committed with their page, with --state). One claim a page."""
        if not found or self.full or not self.scope.depth_ok(depth):
            return []
        marks = await self._seen.claim([fp for _, fp in found], remember_done=True)
        admitted: list[Link] = []
        for (text, fp), mark in zip(found, marks, strict=True):
            if mark != FRESH:
                if mark == DONE_BEFORE:  # said once a run (remember_done)
                    self._stats.skipped_done_before += 1
                continue
            if self.full:
                break
            self.admitted += 1
            link = Link(text, depth, parent, fp)
            self.queue.push(link)
            admitted.append(link)
        if admitted:
            self.wake.set()
        return admitted

    async def carry_over(self) -> None:
        """A resumed crawl: the links its earlier runs found and did not do, claimed
        again and queued before any this run finds."""
        async for links in self.queue.carried_over():
            found = [(link.url, link.fp) for link in links]
            marks = await self._seen.claim([fp for _, fp in found], remember_done=True)
            for link, mark in zip(links, marks, strict=True):
                if mark == FRESH:  # admitted by the earlier run, within --max-pages
                    self.admitted += 1
                    self.queue.push(link)
            self.wake.set()

    def close(self) -> None:
        """Never waits for a parser: a child still parsing is killed."""
        self.queue.close()
        self._pages.close()
        self._sitemaps.close()

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
        """Index files spawn reads of their sitemaps; URL sets become seeds (depth 0),
        admitted a batch at a time as the child reads them. Raises ParserError (a step
        past its deadline, the child gone)."""
        parser = self._sitemaps
        async with self._sitemap_turn:
            await parser.call(sitemaps.begin, body, self.scope)
            del body  # the child has it
            while True:
                batch = await parser.call(sitemaps.step, _SITEMAP_BATCH)
                if batch.is_index:
                    if nesting < _SITEMAP_MAX_NESTING:
                        for loc in self.new_sitemaps(batch.locs):
                            spawn(loc, nesting + 1)
                else:
                    await self.admit(batch.candidates, 0, url)
                    if self.full:
                        return
                if batch.done:
                    return
