"""The --state resume file on its own: claims, atomic checkpoints, what a resumed run
sees (committed offset, done URLs, durable crawl links), identity and the single-run lock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from crawler.dedup import fingerprint
from crawler.errors import UsageError
from crawler.linkqueue import Link
from crawler.state import StateStore
from crawler.stores import DONE_BEFORE, FRESH, REPEAT

IDENTITY: dict[str, Any] = {"input": "urls.txt", "output": None}
A, B, C, D = (fingerprint(f"http://a.test/{n}") for n in "abcd")


@asynccontextmanager
async def opened(path: Path, identity: dict[str, Any] = IDENTITY) -> AsyncIterator[StateStore]:
    store = StateStore(str(path), identity)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


async def test_a_new_file_claims_each_url_once_per_run(tmp_path: Path) -> None:
    async with opened(tmp_path / "s") as store:
        assert not store.resumed and store.committed_offset == 0
        assert await store.claim([A, B, A]) == [FRESH, FRESH, REPEAT]
        assert await store.claim([B, C]) == [REPEAT, FRESH]


async def test_resume_sees_exactly_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"x" * 120)
    async with opened(path) as store:
        await store.claim([A, B, C])
        fd = os.open(out, os.O_RDONLY)
        try:
            await store.commit([A, B], 100, fd)  # C claimed, its record not committed
        finally:
            os.close(fd)
        assert store.committed_offset == 100
    async with opened(path) as store:
        assert store.resumed
        assert store.committed_offset == 100
        assert store.done_before == 2
        # done by the first run: skipped; claimed but never committed: fetched again
        assert await store.claim([A, B, C, D]) == [DONE_BEFORE, DONE_BEFORE, FRESH, FRESH]
        await store.commit([C], 150, None)
    async with opened(path) as store:
        assert store.committed_offset == 150 and store.done_before == 3
        assert await store.claim([C, D]) == [DONE_BEFORE, FRESH]


async def test_released_claims_are_fresh_again(tmp_path: Path) -> None:
    async with opened(tmp_path / "s") as store:
        await store.claim([A, B])
        await store.commit([A], 10, None)
        await store.release([A, B])  # A is done: a release does not undo a commit
        assert await store.claim([A, B]) == [REPEAT, FRESH]


async def test_crawl_links_are_committed_with_their_page_and_resumed_in_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    links = [
        Link(f"http://a.test/{n}", 1, "http://a.test/", fp)
        for n, fp in zip("bcd", (B, C, D), strict=True)
    ]
    async with opened(path) as store:
        await store.claim([A])
        await store.commit([A], 10, None, links)
    async with opened(path) as store:
        rows = await store.pending(0, 10)
        assert [(fp, url, depth, parent) for _, fp, url, depth, parent in rows] == [
            (link.fp, link.url, 1, "http://a.test/") for link in links
        ]
        seqs = [seq for seq, *_ in rows]
        assert seqs == sorted(seqs)
        assert [r[1] for r in await store.pending(seqs[0], 10)] == [C, D]  # paging by seq
        await store.claim([C])
        await store.commit([C], 20, None)
    async with opened(path) as store:
        assert [r[1] for r in await store.pending(0, 10)] == [B, D]  # done links drop out


async def test_a_different_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with opened(path):
        pass
    with pytest.raises(UsageError, match="belongs to a different run: input"):
        async with opened(path, {**IDENTITY, "input": "other.txt"}):
            pass


async def test_one_run_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with opened(path):
        with pytest.raises(UsageError, match="--state"):
            async with opened(path):
                pass
    async with opened(path) as store:  # free again once the first is closed
        assert store.resumed


async def test_a_file_not_ours_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my notes\n")
    with pytest.raises(UsageError):
        async with opened(path):
            pass
    assert path.read_bytes() == b"my notes\n"


async def test_aclose_is_idempotent(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path / "s"), IDENTITY)
    await store.open()
    await store.aclose()
    await store.aclose()
