"""``--state PATH``: a SQLite resume file, written in batches off the event loop.

Tables:
    meta(key, value)        format version, the input's identity, options that shape output
    urls(fp, done)          64-bit fingerprint of each URL's dedup key; done=1 once its
                            record is committed
    output(id=1, offset)    bytes of the ``-o`` file that are committed
    pending(seq, fp, url, depth, parent)
                            crawl mode: links discovered by committed pages, in order of
                            discovery (the durable frontier of a crawl)

A checkpoint (every ``interval`` seconds and at the end) first fsyncs the output file, then
in ONE transaction marks the URLs of every record written since the last checkpoint as done
and stores the output's new size. So after any crash, "done" and the committed offset agree:

- resume cuts the output back to the committed offset (a torn or uncommitted tail goes),
- forgets URLs that were queued but never committed (``done=0`` rows),
- skips every URL marked done, and fetches the rest;
- in crawl mode, starts again from the ``pending`` links that are not done: a page's links
  are committed in the same transaction as the page itself, so none is lost with it.

On standard output nothing can be cut back: at most the records written since the last
checkpoint appear twice across the two runs; none is lost.

The state is also the dedup store, so memory stays flat whatever the input's length. All
SQLite work runs in one dedicated thread (sqlite3 objects stay on the thread that made them),
one call per input batch or checkpoint, never per URL.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import orjson

from crawler.dedup import from_sql, to_sql
from crawler.errors import UsageError
from crawler.linkqueue import Link

FORMAT: Final = "crawler-state/1"
T = TypeVar("T")


class StateStore:
    def __init__(self, path: str, identity: dict[str, Any]) -> None:
        self.path = path
        self._identity = identity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawler-state")
        self._db: sqlite3.Connection | None = None
        self.resumed = False
        self.committed_offset = 0
        self.done_before = 0  # URLs already done when this run started
        self.pending_max = 0

    # -- everything below with a leading underscore runs in the state thread ---------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        try:
            await self._call(self._open)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"cannot use --state {self.path!r}: {exc}") from None

    def _open(self) -> None:
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if existed:
            self._check(db)
            self.resumed = True
        else:
            db.execute("BEGIN")
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE urls (fp INTEGER PRIMARY KEY, done INTEGER NOT NULL) WITHOUT ROWID"
            )
            db.execute("CREATE TABLE output (id INTEGER PRIMARY KEY, offset INTEGER NOT NULL)")
            db.execute("INSERT INTO output VALUES (1, 0)")
            db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            db.execute(
                "INSERT INTO meta VALUES ('identity', ?)", (orjson.dumps(self._identity).decode(),)
            )
            db.execute("COMMIT")
        db.execute(
            "CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY, fp INTEGER NOT NULL,"
            " url TEXT NOT NULL, depth INTEGER NOT NULL, parent TEXT)"
        )
        # URLs queued but never committed by the previous run must be fetched again.
        db.execute("DELETE FROM urls WHERE done = 0")
        (self.committed_offset,) = db.execute("SELECT offset FROM output WHERE id = 1").fetchone()
        (self.done_before,) = db.execute("SELECT count(*) FROM urls").fetchone()
        # Links committed by earlier runs; the ones this run adds come after these.
        (self.pending_max,) = db.execute("SELECT coalesce(max(seq), 0) FROM pending").fetchone()

    def _check(self, db: sqlite3.Connection) -> None:
        try:
            rows = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise UsageError(f"--state {self.path!r} is not a crawler state file") from None
        if rows.get("format") != FORMAT:
            raise UsageError(f"--state {self.path!r} is not a crawler state file")
        saved = orjson.loads(rows.get("identity", "{}"))
        for key, value in self._identity.items():
            if saved.get(key) != value:
                raise UsageError(
                    f"--state {self.path!r} belongs to a different run: {key} was "
                    f"{saved.get(key)!r}, now {value!r} (use a new state file)"
                )

    async def claim(self, fps: list[int]) -> list[bool]:
        """For one input batch: True for each fingerprint not seen before (now claimed)."""
        return await self._call(self._claim, fps)

    def _claim(self, fps: list[int]) -> list[bool]:
        db = self._db
        assert db is not None  # noqa: S101
        signed = [to_sql(fp) for fp in fps]
        seen: set[int] = set()
        for start in range(0, len(signed), 500):  # stay under SQLite's variable limit
            part = signed[start : start + 500]
            marks = ",".join("?" * len(part))
            seen.update(
                row[0]
                for row in db.execute(f"SELECT fp FROM urls WHERE fp IN ({marks})", part)  # noqa: S608
            )
        fresh = []
        new_rows = []
        for fp in signed:
            if fp in seen:
                fresh.append(False)
            else:
                seen.add(fp)
                fresh.append(True)
                new_rows.append((fp,))
        db.execute("BEGIN")
        db.executemany("INSERT INTO urls VALUES (?, 0)", new_rows)
        db.execute("COMMIT")
        return fresh

    async def release(self, fps: Iterable[int]) -> None:
        """Forget claims that got no committed record (e.g. cancelled at shutdown)."""
        await self._call(self._release, [(to_sql(fp),) for fp in fps])

    def _release(self, rows: list[tuple[int]]) -> None:
        db = self._db
        assert db is not None  # noqa: S101
        db.execute("BEGIN")
        db.executemany("DELETE FROM urls WHERE fp = ? AND done = 0", rows)
        db.execute("COMMIT")

    async def commit(
        self,
        fps: list[int],
        offset: int,
        sync_fd: int | None,
        links: Sequence[Link] = (),
    ) -> None:
        """Checkpoint: fsync the output, then mark ``fps`` done, add the ``links``
        (fp, url, depth, parent) their pages discovered, and store ``offset``."""
        rows = [(to_sql(fp),) for fp in fps]
        link_rows = [(to_sql(link.fp), link.url, link.depth, link.parent) for link in links]
        await self._call(self._commit, rows, offset, sync_fd, link_rows)

    def _commit(
        self,
        rows: list[tuple[int]],
        offset: int,
        sync_fd: int | None,
        link_rows: list[tuple[int, str, int, str | None]],
    ) -> None:
        db = self._db
        assert db is not None  # noqa: S101
        if sync_fd is not None:
            os.fsync(sync_fd)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO pending (fp, url, depth, parent) VALUES (?, ?, ?, ?)", link_rows
        )
        db.executemany("UPDATE urls SET done = 1 WHERE fp = ?", rows)
        db.execute("UPDATE output SET offset = ? WHERE id = 1", (offset,))
        db.execute("COMMIT")
        self.committed_offset = offset

    async def pending(self, after: int, limit: int) -> list[tuple[int, int, str, int, str | None]]:
        """Crawl resume: links committed as discovered and not done, in discovery order:
        (seq, fp, url, depth, parent) with seq > ``after``."""
        return await self._call(self._pending, after, limit)

    def _pending(self, after: int, limit: int) -> list[tuple[int, int, str, int, str | None]]:
        db = self._db
        assert db is not None  # noqa: S101
        rows = db.execute(
            "SELECT p.seq, p.fp, p.url, p.depth, p.parent FROM pending p"
            " WHERE p.seq > ? AND p.seq <= ? AND NOT EXISTS"
            " (SELECT 1 FROM urls u WHERE u.fp = p.fp AND u.done = 1)"
            " ORDER BY p.seq LIMIT ?",
            (after, self.pending_max, limit),
        ).fetchall()
        return [(seq, from_sql(fp), u, d, p) for seq, fp, u, d, p in rows]

    async def aclose(self) -> None:
        """Idempotent."""
        if self._db is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
