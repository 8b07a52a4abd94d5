"""Discovered links waiting for the frontier: FIFO (so the crawl goes breadth-first),
bounded in memory, overflow spilled to a SQLite file.

Workers ``push`` without ever waiting (a worker that waited for room in a queue only
workers drain could wait on itself); the crawl's feeder ``take``s and does the waiting
on the frontier's bound instead. The oldest links stay in memory (``head``); once it is
full, newer links collect in ``tail`` and go to disk in chunks, and come back from disk
in the order they went, before anything newer::

    push -> head (memory, oldest) ... disk (SQLite, in order) ... tail (memory, newest)
    take <- head, else disk, else tail

All SQLite work runs on one thread of its own, so writes and reads stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Final, NamedTuple

from crawler.dedup import from_sql, to_sql

if TYPE_CHECKING:
    import sqlite3

_CHUNK: Final = 512


class Link(NamedTuple):
    url: str
    depth: int
    parent: str | None
    fp: int


class LinkQueue:
    def __init__(self, memory: int, spill_dir: str | None = None) -> None:
        self._memory = max(memory, _CHUNK)
        self._spill_dir = spill_dir
        self._head: deque[Link] = deque()
        self._tail: list[Link] = []
        self._on_disk = 0
        self._db: sqlite3.Connection | None = None
        self._path: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._writes: list[Future[None]] = []
        self.spilled = 0  # links that went to disk, for stats and tests

    def __len__(self) -> int:
        return len(self._head) + self._on_disk + len(self._tail)

    def push(self, link: Link) -> None:
        if not self._on_disk and not self._tail and len(self._head) < self._memory:
            self._head.append(link)
            return
        self._tail.append(link)
        if len(self._tail) >= _CHUNK:
            self._spill()

    async def take(self, n: int) -> list[Link]:
        """Up to ``n`` links, oldest first; [] when the queue is empty."""
        head = self._head
        if not head and self._on_disk:
            await self._check_writes()
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(self._executor, self._read, self._memory // 2)
            self._on_disk -= len(rows)
            head.extend(rows)
        if not head and self._tail:
            head.extend(self._tail)
            self._tail = []
        out: list[Link] = []
        while head and len(out) < n:
            out.append(head.popleft())
        return out

    # -- the spill file ------------------------------------------------------------------
    def _spill(self) -> None:
        rows, self._tail = self._tail, []
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="crawler-spill")
        self._on_disk += len(rows)
        self.spilled += len(rows)
        self._writes.append(self._executor.submit(self._write, rows))

    async def _check_writes(self) -> None:
        writes, self._writes = self._writes, []
        for fut in writes:
            await asyncio.wrap_future(fut)  # a failed write (disk full) surfaces here

    def _open(self) -> sqlite3.Connection:
        import sqlite3  # only when links spill to disk: 3 ms of every other run's start

        fd, self._path = tempfile.mkstemp(
            prefix="crawler-frontier-", suffix=".db", dir=self._spill_dir
        )
        os.close(fd)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE links (seq INTEGER PRIMARY KEY, url TEXT, depth INTEGER,"
            " parent TEXT, fp INTEGER)"
        )
        # SQLite keeps its descriptor: the name can go now, so nothing is left behind
        # even by a SIGKILL (no journal: the file is scratch).
        os.unlink(self._path)
        self._path = None
        self._db = db
        return db

    def _write(self, rows: list[Link]) -> None:
        db = self._db or self._open()
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO links (url, depth, parent, fp) VALUES (?, ?, ?, ?)",
            [(r.url, r.depth, r.parent, to_sql(r.fp)) for r in rows],
        )
        db.execute("COMMIT")

    def _read(self, n: int) -> list[Link]:
        db = self._db
        assert db is not None  # noqa: S101 - rows on disk imply a database
        rows = db.execute(
            "SELECT seq, url, depth, parent, fp FROM links ORDER BY seq LIMIT ?", (n,)
        ).fetchall()
        if rows:
            db.execute("DELETE FROM links WHERE seq <= ?", (rows[-1][0],))
        return [Link(u, d, p, from_sql(fp)) for _, u, d, p, fp in rows]

    def close(self) -> None:
        """Drop the spill file (idempotent): the spill thread does it after its pending
        writes, and is not waited for (close() runs on the loop; a slow disk must not
        block it). The file was unlinked when created: nothing is left behind."""
        if self._executor is not None:
            self._executor.submit(self._close)
            self._executor.shutdown(wait=False)
            self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._path is not None:
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path + suffix)
            self._path = None
