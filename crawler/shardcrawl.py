"""``crawl --workers N``: the coordinator's side of following links across workers.

    worker: page -> links (scope, --depth) --FORWARD--> coordinator: one Seen claim per
        batch (the run's dedup: exact, whoever found the link), --max-pages, then each
        new link to the queue of the worker that owns its host --LINKS--> that worker

A worker forwards the links of a page before the page's record (one ordered pipe), so a
page whose record came back had its links claimed. A link delivered to a worker waits
there until its record comes back; if the worker dies, its successor gets it again.
Waiting links beyond what a worker holds (``--queue-size`` each) stay here, spilling to
disk like a crawl's own queue.

The crawl ends when every worker said it is idle (nothing queued, in flight or being
read) after receiving every link delivered to it, the input is read and the links an
earlier run left (``--state``) are handed out: then no link can be on its way. Each
worker is then told FINISH.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from crawler import shards
from crawler.config import RunConfig
from crawler.linkqueue import Link
from crawler.shardproc import ShardProc
from crawler.sink import Sink
from crawler.stores import DONE_BEFORE, FRESH, MemoryQueue, Stores

_HELD: Final = 1024  # links a worker holds beyond --queue-size before delivery waits


class LinkRouter:
    def __init__(
        self,
        config: RunConfig,
        stores: Stores,
        router: shards.Router,
        workers: Callable[[], list[ShardProc]],
        sink: Callable[[], Sink],
    ) -> None:
        assert config.crawl is not None  # noqa: S101 - crawl mode only
        self._n = config.workers
        self._stores = stores
        self._router = router
        self._workers = workers
        self._sink = sink
        self._budget = config.crawl.max_pages
        self._hold = config.limits.queue_size + _HELD
        memory = config.limits.queue_size
        self._waiting = [MemoryQueue(memory) for _ in range(self._n)]
        self._delivered = [0] * self._n  # links sent to each worker (its current process)
        self._idle: list[int | None] = [None] * self._n  # links it had at its last IDLE
        self._turn = [asyncio.Lock() for _ in range(self._n)]
        self.admitted = 0  # --max-pages counts seeds and links, resumed runs too
        self.done_before = 0  # links skipped: done by an earlier run (said once)
        self.over_budget = 0  # seeds past --max-pages (a worker counts them as repeats)
        self.carrying = True  # an earlier run's waiting links are being handed out
        self.finished = False  # FINISH sent

    def start(self, done_before: int) -> None:
        self.admitted = done_before

    @property
    def full(self) -> bool:
        return self._budget is not None and self.admitted >= self._budget

    # -- seeds -------------------------------------------------------------------------------
    def seeds(self, answers: list[int], repaid: Sequence[int] = ()) -> list[int]:
        """Input lines' claims in crawl mode: fresh seeds count against --max-pages; past
        it, a seed is answered as a repeat (and not counted as one: ``over_budget``).
        ``repaid``: positions of seeds a dead worker had claimed, counted then already."""
        if self._budget is None:
            self.admitted += answers.count(FRESH) - len(repaid)
            return answers
        out = []
        skip = set(repaid)
        for at, answer in enumerate(answers):
            if answer == FRESH and at not in skip:
                if self.full:
                    self.over_budget += 1
                    answer = 0
                else:
                    self.admitted += 1
            out.append(answer)
        return out

    # -- links -------------------------------------------------------------------------------
    async def forwarded(self, links: Sequence[tuple[str, int, str | None, int]]) -> None:
        """Links a worker found: claimed, counted, queued for their hosts' workers."""
        marks = await self._stores.seen.claim([link[3] for link in links], remember_done=True)
        fresh: list[Link] = []
        for link, mark in zip(links, marks, strict=True):
            if mark == FRESH:
                if self.full:
                    continue
                self.admitted += 1
                fresh.append(Link(*link))
            elif mark == DONE_BEFORE:
                self.done_before += 1
        await self._admit(fresh)

    async def carry_over(self) -> None:
        """A resumed crawl: the links earlier runs left waiting, claimed again first."""
        try:
            async for links in self._stores.queue.carried_over():
                marks = await self._stores.seen.claim([x.fp for x in links], remember_done=True)
                fresh = [x for x, mark in zip(links, marks, strict=True) if mark == FRESH]
                self.admitted += len(fresh)
                await self._admit(fresh, durable=False)  # the state holds them already
        finally:
            self.carrying = False

    async def _admit(self, fresh: list[Link], *, durable: bool = True) -> None:
        if not fresh:
            return
        if durable:
            self._sink().put_links(fresh)  # --state: they wait there, with what found them
        route = self._router.route
        touched = set()
        for link in fresh:
            index = route(link.url)
            self._waiting[index].push(link)
            touched.add(index)
        for index in touched:
            await self.deliver(index)

    async def deliver(self, index: int) -> None:
        """Hand worker ``index`` waiting links, as many as it may hold."""
        queue = self._waiting[index]
        if not len(queue):
            return
        async with self._turn[index]:
            shard = self._workers()[index]
            room = self._hold - len(shard.links_out)
            if room <= 0 or shard.done is not None:
                return
            links = await queue.take(room)  # (from disk once spilled: the worker may die)
            if links:
                self._send(self._workers()[index], links)  # its successor, if it did

    def _send(self, shard: ShardProc, links: list[Link]) -> None:
        for link in links:
            shard.links_out[link.fp] = link
        self._delivered[shard.index] += len(links)
        shard.send(shards.pickled(shards.LINKS, [tuple(link) for link in links]))

    def replaced(self, dead: ShardProc, successor: ShardProc) -> int:
        """A worker died: its successor gets the links it held without a record."""
        self._delivered[dead.index] = 0
        self._idle[dead.index] = None
        links = list(dead.links_out.values())
        if links:
            self._send(successor, links)
        return len(links)

    # -- the end -----------------------------------------------------------------------------
    def idle(self, index: int, received: int) -> None:
        self._idle[index] = received

    def may_finish(self, read_all: bool) -> bool:
        """Every worker idle with every link delivered to it, nothing waiting here."""
        if self.finished or not read_all or self.carrying:
            return False
        for index, shard in enumerate(self._workers()):
            if shard.done is not None:
                continue
            if (
                self._idle[index] != self._delivered[index]
                or len(self._waiting[index])
                or shard.outstanding
            ):
                return False
        self.finished = True
        return True

    def counts(self) -> dict[str, int]:
        """For the run's statistics (crawler.shardstats)."""
        return {
            "admitted": self.admitted,
            "links_waiting": sum(map(len, self._waiting)),  # here, for their worker
            "links_spilled": sum(q.spilled for q in self._waiting),
            "over_budget": self.over_budget,
            "done_before": self.done_before,
        }

    def close(self) -> None:
        for queue in self._waiting:
            queue.close()
