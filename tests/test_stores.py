"""The engine's seams (crawler/stores.py): Seen, Ledger and WorkQueue are handed in, and
the engine works with any implementation of them, in memory, SQLite or one of a test's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from crawler.config import CrawlConfig
from crawler.dedup import fingerprint
from crawler.engine import Engine
from crawler.following import Crawl
from crawler.inputs import LineSource, SeedSource
from crawler.linkqueue import Link
from crawler.state import StateStore
from crawler.stats import Stats
from crawler.stores import (
    DONE_BEFORE,
    FRESH,
    REPEAT,
    MemoryLedger,
    MemoryQueue,
    MemorySeen,
    NoSeen,
    Stores,
)
from crawler.urls import parse_target
from tests.conftest import Server, make_config, read_records
from tests.site import A, serve_site


def key_fp(url: str) -> int:
    return fingerprint(parse_target(url)[1])


class ElsewhereSeen(MemorySeen):
    """A shared store's view: some URLs were done by another worker of the job."""

    def __init__(self, done_elsewhere: set[int]) -> None:
        super().__init__()
        self.done_elsewhere = done_elsewhere
        self.claimed: list[int] = []

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        self.claimed += fps
        marks = await super().claim(fps, remember_done=remember_done)
        elsewhere = self.done_elsewhere
        return [DONE_BEFORE if fp in elsewhere else m for fp, m in zip(fps, marks, strict=True)]


class RecordingLedger(MemoryLedger):
    durable = True  # a shared ledger: it keeps the marks (and a stop leaves URLs to it)

    def __init__(self) -> None:
        super().__init__()
        self.done: list[int] = []
        self.links: list[Link] = []
        self.opened = self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def commit(
        self, fps: list[int], offset: int, sync_fd: int | None, links: Sequence[Link] = ()
    ) -> None:
        assert not self.closed
        self.done += fps
        self.links += links
        self.committed_offset = offset

    async def aclose(self) -> None:
        self.closed = True


async def test_memory_seen_and_no_seen() -> None:
    seen = MemorySeen()
    assert await seen.claim([1, 2, 1]) == [FRESH, FRESH, REPEAT]
    assert await seen.claim([2, 3]) == [REPEAT, FRESH]
    assert await NoSeen().claim([1, 1]) == [FRESH, FRESH]


async def test_the_engine_runs_on_seams_it_does_not_know(server: Server, tmp_path: Path) -> None:
    urls = [server.url(f"/ok/{i}") for i in range(20)]
    (tmp_path / "urls.txt").write_text("\n".join([*urls, urls[0]]) + "\n")
    seen = ElsewhereSeen({key_fp(urls[3]), key_fp(urls[4])})
    ledger = RecordingLedger()
    stores = Stores(seen, ledger, MemoryQueue(512))
    config = make_config(tmp_path, concurrency=4)
    engine = Engine(
        config, LineSource(str(tmp_path / "urls.txt")), install_signal_handlers=False, stores=stores
    )
    result = await engine.run()
    records = read_records(tmp_path / "out.jsonl")
    # The two the shared store says are done elsewhere get no record and no request.
    assert sorted(r["url"] for r in records) == sorted(u for u in urls if u not in urls[3:5])
    assert result.snapshot.skipped_done_before == 2 and result.snapshot.skipped_duplicates == 1
    assert sum(server.rec.hits.values()) == 18
    assert len(seen.claimed) == 21  # every input line went through the one Seen
    # Every record's URL was committed once, with the output's whole length.
    assert sorted(ledger.done) == sorted(key_fp(r["url"]) for r in records)
    assert ledger.committed_offset == (tmp_path / "out.jsonl").stat().st_size
    assert ledger.opened and ledger.closed


async def test_a_crawl_claims_its_links_through_the_same_seen(tmp_path: Path) -> None:
    async with serve_site() as site:
        seed = site.url("/")
        # A link the shared store says another worker did: never fetched here.
        seen = ElsewhereSeen({key_fp(site.url("/b"))})
        ledger = RecordingLedger()
        config = make_config(tmp_path, crawl=CrawlConfig(max_depth=1), concurrency=2)
        engine = Engine(
            config,
            SeedSource([seed], []),
            install_signal_handlers=False,
            stores=Stores(seen, ledger, MemoryQueue(512)),
        )
        result = await engine.run()
        assert site.hits[f"{A}/b"] == 0
    records = read_records(tmp_path / "out.jsonl")
    fetched = {r["url"] for r in records}
    assert seed in fetched and site.url("/a") in fetched and site.url("/b") not in fetched
    assert key_fp(seed) in seen.claimed and key_fp(site.url("/a")) in seen.claimed
    assert result.snapshot.skipped_done_before == 1
    # The seed's links were committed with it (a shared ledger can resume the crawl).
    assert site.url("/a") in {link.url for link in ledger.links}


class CarryingQueue(MemoryQueue):
    """A work queue that holds links an earlier run of the job left waiting."""

    def __init__(self, left: list[Link]) -> None:
        super().__init__(512)
        self.left = left

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        yield self.left


async def test_links_carried_over_are_fetched_once(tmp_path: Path) -> None:
    async with serve_site() as site:
        seed, a = site.url("/"), site.url("/a")
        # /a waits from an earlier run; the seed links to it again: fetched once.
        queue = CarryingQueue([Link(a, 1, seed, key_fp(a))])
        config = make_config(tmp_path, crawl=CrawlConfig(max_depth=1), concurrency=2)
        engine = Engine(
            config,
            SeedSource([seed], []),
            install_signal_handlers=False,
            stores=Stores(MemorySeen(), MemoryLedger(), queue),
        )
        await engine.run()
        assert site.hits[f"{A}/a"] == 1
    by_url = {r["url"]: r for r in read_records(tmp_path / "out.jsonl")}
    assert by_url[a]["depth"] == 1 and by_url[a]["parent"] == seed


async def test_a_resumed_crawl_says_a_done_link_is_done_once(tmp_path: Path) -> None:
    c, d = "http://a.test/c", "http://a.test/d"
    identity: dict[str, Any] = {"mode": "crawl"}
    store = StateStore(str(tmp_path / "s"), identity)
    await store.open()
    await store.claim([key_fp(c)])
    await store.commit([key_fp(c)], 0, None)
    await store.aclose()

    store = StateStore(str(tmp_path / "s"), identity)
    await store.open()
    stats = Stats(lambda: 0.0)
    queue = MemoryQueue(512)
    crawl = Crawl(CrawlConfig(), seen=store, queue=queue, stats=stats)
    try:
        found = [(c, key_fp(c)), (d, key_fp(d))]
        first = await crawl.admit(found, 1, "http://a.test/")
        again = await crawl.admit(found, 1, "http://a.test/x")  # found on another page
        assert [link.url for link in first] == [d] and again == []
        assert stats.skipped_done_before == 1 and len(queue) == 1
        # Input lines, unlike links, are said done each time they come.
        assert await store.claim([key_fp(c), key_fp(c)]) == [DONE_BEFORE, DONE_BEFORE]
    finally:
        crawl.close()
        await store.aclose()
