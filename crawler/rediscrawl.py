"""``crawler worker`` on a crawl job (``crawler crawl SEEDS --redis URL --job NAME``):
what differs from a fetch job, behind the crawl's WorkQueue seam.

    job's seeds --> the crawl's scope (every worker's)
    Intake (the shards held) --entries u, d, p--> CrawlIntake.take --Links--> frontier
    page's record + its admitted links --> RedisSink --> one commit: the record written,
        the links enqueued (dedup in Redis, in their hosts' shards, within the job's
        --max-pages budget), the entry acknowledged

Nothing comes from an input source (NoInput): every URL, seeds included, is an entry of
the job. A link found by two pages is enqueued once (the commit's dedup); a stale
owner's commit is refused, links included. --depth holds per entry (the depth rides
with it). --max-pages is the job's: the commit script enqueues links only while the job
has taken fewer URLs than it (the workers' own counters are off). The crawl ends when
the job is finished (nothing queued or pending) and nothing is in flight here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec.structs

from crawler.dedup import fingerprint
from crawler.errors import InvalidURL
from crawler.inputs import Uncounted
from crawler.linkqueue import Link
from crawler.redislease import check_job, redis_errors, stop_if_cancelled
from crawler.shards import target_of
from crawler.urls import parse_target

if TYPE_CHECKING:
    from crawler.config import RunConfig
    from crawler.crawling import Crawling

_TICK: Final = 0.2  # seconds between looks at the job while nothing is queued here


class Intake(Protocol):
    """What crawler.redisworker.Intake gives a crawl (not imported: it imports us)."""

    sink: Any  # its ``waiting``: fingerprint -> entries, for the records' commits
    job: Any  # its ``check()``: the job still there?

    async def read(self, count: int, block_ms: int) -> list[tuple[Any, dict[bytes, bytes]]]: ...

    async def finished(self) -> bool: ...


def crawl_config(config: RunConfig) -> RunConfig:
    """The worker's config: --max-pages is counted by the job, not by each worker."""
    assert config.crawl is not None  # noqa: S101
    crawl = msgspec.structs.replace(config.crawl, max_pages=None)
    return msgspec.structs.replace(config, crawl=crawl)


class NoInput(Uncounted):
    """A crawl job's worker reads no input: its seeds are entries of the job."""

    lines_total: int | None = 0
    lines_read = 0
    eof = True
    current: list[object] = []  # noqa: RUF012 - never filled

    async def batches(self) -> AsyncIterator[list[str]]:
        return
        yield


class CrawlIntake:
    """The crawl's WorkQueue: the entries of the shards held, as Links; what the crawl
    pushes is not kept here (a page's links go with its record, see RedisSink)."""

    spilled = 0

    def __init__(self, intake: Intake, seeds: list[str], *, wait: bool) -> None:
        self._intake = intake
        self._seeds = seeds
        self._wait = wait
        self._links: deque[Link] = deque()
        self._finished = False
        self._wake: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None

    def attach(self, pages: Crawling) -> None:
        """The run's parts exist: the seeds are its scope, and the crawl ends only when
        the job is finished."""
        for line in self._seeds:
            try:
                url, host = target_of(line)
            except InvalidURL:
                continue
            pages.seed(url, host)
        crawl = pages.crawl
        if crawl is not None:
            crawl.may_end = self.may_end
            self._wake = crawl.wake
            self._ticker = asyncio.ensure_future(self._tick())

    def may_end(self) -> bool:
        return self._finished and not self._links

    async def _tick(self) -> None:
        """Other workers may enqueue links into our shards: look again now and then."""
        while True:
            await asyncio.sleep(_TICK)
            if self._wake is not None:
                self._wake.set()

    def __len__(self) -> int:
        return len(self._links)

    def push(self, link: Link) -> None:
        pass  # enqueued with its page's record

    async def take(self, n: int) -> list[Link]:
        stop_if_cancelled()  # the stop cancelled the reader, in a Redis call: see there
        links = self._links
        if not links:
            await self._read(n)
        return [links.popleft() for _ in range(min(n, len(links)))]

    async def _read(self, n: int) -> None:
        intake = self._intake
        try:
            got = await intake.read(n, 0)
            if not got:
                self._finished = not self._wait and await intake.finished()
                return
        except redis_errors():
            await check_job(intake.job)  # the job gone: one line, exit 2
            return  # Redis away: the ticker looks again, the leases run out
        waiting = intake.sink.waiting
        for entry, fields in got:
            line = fields[b"u"].decode("utf-8", "surrogateescape")
            try:
                fp = fingerprint(parse_target(line)[1])
            except InvalidURL:
                fp = fingerprint("\0invalid\0" + line)
            parent = fields.get(b"p", b"").decode("utf-8", "surrogateescape") or None
            waiting[fp].append(entry)
            self._links.append(Link(line, int(fields.get(b"d", b"0")), parent, fp))

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        return
        yield

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
