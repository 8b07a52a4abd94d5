"""--workers N: the coordinator at the edges of a worker's life.

The claim for a dead worker's successor (a URL the dead worker owed is new once, a
repeat of it stays a repeat), a crawl's --max-pages across a death, links handed out
while a worker is replaced, a worker that dies after the crawl was told to finish, lines
read for a worker that has ended, and a worker that cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
from aiohttp import web

from crawler import shards
from crawler.config import SinkConfig
from crawler.coordinator import Coordinator
from crawler.inputs import LineSource, SeedSource
from crawler.linkqueue import Link
from crawler.options import run_config
from crawler.shardcrawl import LinkRouter
from crawler.shardproc import claim_owed
from crawler.stores import FRESH, REPEAT, MemoryQueue, memory
from tests.conftest import serve_app, until


async def test_an_owed_url_is_new_once_and_a_repeat_of_it_stays_a_repeat() -> None:
    """A dead worker claimed 42 and left it without a record; its successor gets 42's
    line again, with another line of 42 from a batch the dead one never claimed: one of
    them is fetched, not both."""
    seen = memory().seen
    assert await seen.claim([42, 7]) == [FRESH, FRESH]  # the dead worker's claim
    owed = Counter({42: 1})
    answers, repaid = await claim_owed(seen, owed, [42, 42, 7, 9])
    assert answers == [FRESH, REPEAT, REPEAT, FRESH]
    assert repaid == [0]
    assert not owed


def _router(max_pages: int | None, workers: list[Any]) -> LinkRouter:
    options: dict[str, Any] = {"workers": 2}
    if max_pages is not None:
        options["max_pages"] = max_pages
    config = run_config(options, crawl=True)
    return LinkRouter(config, memory(), shards.Router(2), lambda: workers, lambda: None)  # type: ignore[arg-type,return-value]


def test_a_seed_taken_over_from_a_dead_worker_is_not_counted_twice() -> None:
    router = _router(2, [])
    assert router.seeds([FRESH, FRESH]) == [FRESH, FRESH]  # the budget is full
    # A dead worker's successor claims one of those seeds again: it was admitted, so it
    # is still fresh (it gets its record), and it is not counted a second time.
    assert router.seeds([FRESH], [0]) == [FRESH]
    assert router.admitted == 2 and router.over_budget == 0
    assert router.seeds([FRESH]) == [REPEAT] and router.over_budget == 1


class _Worker:
    """What LinkRouter needs of a worker process: its index, the links it holds, frames."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.links_out: dict[int, Link] = {}
        self.done: dict[str, Any] | None = None
        self.frames: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.frames.append(data)


class _SlowQueue(MemoryQueue):
    """Waiting links whose take() waits (as one from a spill file does)."""

    def __init__(self) -> None:
        super().__init__(16)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def take(self, n: int) -> list[Link]:
        self.entered.set()
        await self.gate.wait()
        return await super().take(n)


async def test_links_taken_while_their_worker_is_replaced_go_to_the_successor() -> None:
    dead, other = _Worker(0), _Worker(1)
    workers: list[Any] = [dead, other]
    router = _router(None, workers)
    queue = router._waiting[0] = _SlowQueue()
    link = Link("http://127.0.0.1:1/a", 1, None, 77)
    queue.push(link)
    delivering = asyncio.create_task(router.deliver(0))
    await asyncio.wait_for(queue.entered.wait(), 10)
    successor = _Worker(0)  # the coordinator's _died: the successor takes the slot
    workers[0] = successor
    router.replaced(dead, successor)  # type: ignore[arg-type]
    queue.gate.set()
    await asyncio.wait_for(delivering, 10)
    assert successor.links_out == {77: link} and len(successor.frames) == 1
    assert not dead.links_out and not dead.frames
    # The crawl can end: the successor, idle, has received every link sent to it.
    router.carrying = False
    router.idle(0, 1)
    router.idle(1, 0)
    successor.outstanding = other.outstanding = 0  # type: ignore[attr-defined]
    assert router.may_finish(read_all=True)


@contextlib.asynccontextmanager
async def _site(release: asyncio.Event, hits: list[str]) -> AsyncIterator[str]:
    """127.0.0.1: / links to /slow, which answers once ``release`` is set."""

    async def page(request: web.Request) -> web.Response:
        hits.append(request.path)
        if request.path == "/slow":
            await release.wait()
            return web.Response(text="<html>slow</html>", content_type="text/html")
        return web.Response(text='<html><a href="/slow">s</a></html>', content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    async with serve_app(app) as base:
        try:
            yield base
        finally:
            release.set()  # a request still held ends, so the server can close


async def test_a_worker_that_dies_after_finish_does_not_hang_the_crawl(tmp_path: Path) -> None:
    """FINISH went out while worker 1 was stopped; it is then killed. Its successor must
    be told FINISH too, or the crawl waits for it for ever."""
    release, hits = asyncio.Event(), list[str]()
    out = tmp_path / "out.jsonl"
    async with _site(release, hits) as base:
        config = run_config(
            {"workers": 2, "ignore_robots": True, "grace": 1.0},
            crawl=True,
            sink=SinkConfig(output=str(out)),
        )
        source = SeedSource([f"{base}/"], [])
        source.open()
        coordinator = Coordinator(config, source, memory(), handle_signals=False)
        links = coordinator._links
        assert links is not None
        run = asyncio.create_task(coordinator.run())
        try:
            # Worker 0 owns 127.0.0.1 and waits on /slow; worker 1 has nothing: idle.
            await until(lambda: "/slow" in hits and links._idle[1] == 0, 30)
            stopped = coordinator._shards[1].pid
            os.kill(stopped, signal.SIGSTOP)
            release.set()
            await until(lambda: links.finished, 30)  # FINISH sent; worker 1 never read it
            os.kill(stopped, signal.SIGKILL)
            result = await asyncio.wait_for(run, 30)
        finally:
            if not run.done():
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await run
    assert not result.interrupted
    urls = [orjson.loads(line)["url"] for line in out.read_bytes().splitlines()]
    assert sorted(urls) == [f"{base}/", f"{base}/slow"]
    assert coordinator._shards[1].pid != stopped  # it was replaced


class _Ended:
    """A worker that sent its final report (--max-time ran out for it)."""

    index = 0
    outstanding = 0
    done: ClassVar[dict[str, Any]] = {"tally": {}, "interrupted": False, "timed_out": True}

    def send_lines(self, batch_id: int, lines: list[str]) -> None:
        raise AssertionError("lines sent to a worker that has ended")


async def test_lines_for_a_worker_that_ended_are_counted_unread(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:1/a\nhttp://127.0.0.1:1/b\n")
    config = run_config({"workers": 2}, crawl=False)
    source = LineSource(str(urls))
    coordinator = Coordinator(config, source, memory(), handle_signals=False)
    coordinator._shards = [_Ended()]  # type: ignore[list-item]
    await coordinator._send(0, ["http://127.0.0.1:1/a", "http://127.0.0.1:1/b"])
    source.eof = True
    coordinator._count_unread()
    assert coordinator._sent == 0
    assert coordinator.stats.not_read == 2


async def test_workers_started_before_one_that_cannot_start_are_ended(tmp_path: Path) -> None:
    started: list[asyncio.subprocess.Process] = []

    class SecondFails(Coordinator):
        async def _start(self, index: int) -> Any:
            if index == 1:
                raise OSError("no worker 1")
            shard = await super()._start(index)
            started.append(shard.proc)
            return shard

    config = run_config({"workers": 2}, crawl=False, sink=SinkConfig(output=os.devnull))
    source = LineSource(os.devnull)
    source.open()
    coordinator = SecondFails(config, source, memory(), handle_signals=False)
    with contextlib.suppress(OSError):
        await asyncio.wait_for(coordinator.run(), 30)
    assert len(started) == 1
    assert started[0].returncode is not None  # ended by the run, not left behind
