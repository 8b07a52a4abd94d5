"""``--state PATH``: a SQLite resume file, written in batches off the event loop.

Tables:
    meta(key, value)        format version, the input's identity, options that shape output
    urls(fp, done)          64-bit fingerprint of each URL's dedup key; done=0 while
                            claimed, then the number of the run that committed its record
                            (1 for the first run, one more for each resume: so a URL done
                            by an earlier run is told from a repeat within this one)
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

The store is the run's ``Seen`` and ``Ledger`` (crawler/stores.py): claims and commits share
one database. How the file is made, locked and recognised is crawler/statefile.py's.

On standard output nothing can be cut back: at most the records written since the last
checkpoint appear twice across the two runs; none is lost.

The state is the dedup store, so memory stays flat whatever the input's length. All
SQLite work runs in one dedicated thread (sqlite3 objects stay on the thread that made them),
one call per input batch or checkpoint, never per URL.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from crawler import statefile
from crawler.dedup import from_sql, to_sql
from crawler.errors import UsageError
from crawler.linkqueue import Link, LinkQueue
from crawler.statefile import APPLICATION_ID, FORMAT, PENDING_TABLE
from crawler.stores import DONE_BEFORE, FRESH, REPEAT, Stores

T = TypeVar("T")


class StateStore:
    """The SQLite state: the run's Seen (``claim``) and Ledger (``commit``)."""

    durable = True  # a URL left without a record is done by the resumed run

    def __init__(self, path: str, identity: dict[str, Any], *, owner: str = "crawler") -> None:
        self.path = path
        self._identity = identity
        self._owner = owner  # named to a second run refused the lock (no arguments)
        self._lock_fd: int | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crawler-state")
        self._db: sqlite3.Connection | None = None
        self.resumed = False
        self.committed_offset = 0
        self.done_before = 0  # URLs already done when this run started
        self._run = 1  # this run's number: what its commits write into urls.done
        self.pending_max = 0

    # -- everything below with a leading underscore runs in the state thread ---------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        try:
            await self._call(self._open)
        except sqlite3.DatabaseError as exc:
            # SQLite says "unable to open database file" or "attempt to write a readonly
            # database" without naming the file or the reason: find them.
            why = await self._call(statefile.os_reason, self.path) or str(exc)
            raise UsageError(f"cannot use --state {self.path!r}: {why}") from None
        except OSError as exc:
            raise UsageError(
                f"cannot use --state {self.path!r}: {statefile.os_message(exc, self.path)}"
            ) from None

    def _open(self) -> None:
        # Order matters: the lock first (nothing is read or written before this run holds
        # the file), then a read-only look at what is there, and only then a connection
        # that may write (WAL on, -wal/-shm created) to a file known to be ours.
        path = self.path
        statefile.inspect(path)  # a file not ours is refused before even a lock file appears
        self._lock_fd = statefile.lock(path, self._owner)
        try:
            statefile.sweep(path)  # first: a killed creation's leftover is a second name
            statefile.single_name(path)
            kind = statefile.inspect(path)  # again, now that no other run can change it
            if kind != "ours":
                statefile.create(path, self._identity, replace_empty=kind == "empty")
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db = db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._check(db)
            if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # an older version's
            self.resumed = kind == "ours"
            # Made by every version, but state files of older versions lack it.
            db.execute(PENDING_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
            # This run's connection only: links done before, said so once (see claim).
            db.execute("CREATE TEMP TABLE told (fp INTEGER PRIMARY KEY) WITHOUT ROWID")
            # URLs queued but never committed by the previous run must be fetched again.
            db.execute("DELETE FROM urls WHERE done = 0")
            (self.committed_offset,) = db.execute(
                "SELECT offset FROM output WHERE id = 1"
            ).fetchone()
            self.done_before, last_run = db.execute(
                "SELECT count(*), coalesce(max(done), 0) FROM urls"
            ).fetchone()
            self._run = last_run + 1
            # Links committed by earlier runs; the ones this run adds come after these.
            (self.pending_max,) = db.execute("SELECT coalesce(max(seq), 0) FROM pending").fetchone()
        except BaseException:
            self._close()
            raise

    def _check(self, db: sqlite3.Connection) -> None:
        """The file is ours (see ``_inspect``): is it this run's?"""
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
                    f"{_shown(key, saved.get(key))}, now {_shown(key, value)} "
                    "(use a new state file)"
                )

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        """For one batch, per fingerprint: ``FRESH`` (not seen before, now claimed),
        ``DONE_BEFORE`` (committed by an earlier run) or ``REPEAT`` (seen in this run).
        ``remember_done``: a URL done before is said so once this run, then ``REPEAT``."""
        return await self._call(self._claim, fps, remember_done)

    def _claim(self, fps: list[int], remember_done: bool) -> list[int]:
        db = self._db
        assert db is not None  # noqa: S101
        signed = [to_sql(fp) for fp in fps]
        seen = self._select(db, "SELECT fp, done FROM urls WHERE fp IN", signed)
        run = self._run
        if remember_done:
            before = [fp for fp, done in seen.items() if 0 < done < run]
            told = self._select(db, "SELECT fp, 1 FROM told WHERE fp IN", before)
            for fp in told:
                seen[fp] = run  # said once already: a repeat now
        fresh = []
        new_rows = []
        told_rows = []
        for fp in signed:
            done = seen.get(fp)
            if done is None:
                seen[fp] = 0
                fresh.append(FRESH)
                new_rows.append((fp,))
            elif 0 < done < run:
                fresh.append(DONE_BEFORE)
                if remember_done:
                    seen[fp] = run
                    told_rows.append((fp,))
            else:
                fresh.append(REPEAT)
        db.execute("BEGIN")
        db.executemany("INSERT INTO urls VALUES (?, 0)", new_rows)
        db.executemany("INSERT INTO told VALUES (?)", told_rows)
        db.execute("COMMIT")
        return fresh

    @staticmethod
    def _select(db: sqlite3.Connection, query: str, fps: list[int]) -> dict[int, int]:
        """``query IN (fps)`` as {fp: value}, in parts under SQLite's variable limit."""
        found: dict[int, int] = {}
        for start in range(0, len(fps), 500):
            part = fps[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(db.execute(f"{query} ({marks})", part))
        return found

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
        run = self._run
        db.executemany("UPDATE urls SET done = ? WHERE fp = ?", [(run, fp) for (fp,) in rows])
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
            " (SELECT 1 FROM urls u WHERE u.fp = p.fp AND u.done > 0)"
            " ORDER BY p.seq LIMIT ?",
            (after, self.pending_max, limit),
        ).fetchall()
        return [(seq, from_sql(fp), u, d, p) for seq, fp, u, d, p in rows]

    async def aclose(self) -> None:
        """Idempotent."""
        if self._db is not None or self._lock_fd is not None:
            await self._call(self._close)
        self._executor.shutdown(wait=False)  # its work is done: nothing to wait for

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
        # After the database is closed (its last write is in), never before.
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)


def _shown(key: str, value: Any) -> str:
    """An identity value as a message shows it: no output path is standard output."""
    if key == "output" and value is None:
        return "stdout"
    return repr(value)


class ResumedQueue(LinkQueue):
    """With ``--state``: the links the job's earlier runs committed as found and did
    not do come first (in the order found), then this run's."""

    def __init__(self, state: StateStore, memory: int, spill_dir: str | None) -> None:
        super().__init__(memory, spill_dir)
        self._state = state

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        after = 0
        while rows := await self._state.pending(after, 4096):
            after = rows[-1][0]
            yield [Link(url, depth, parent, fp) for _, fp, url, depth, parent in rows]


def resumable(state: StateStore, *, queue_memory: int = 512) -> Stores:
    """The seams of a ``--state`` run: the SQLite file claims and commits; links spill
    beside it."""
    spill_dir = os.path.dirname(os.path.abspath(state.path))
    return Stores(state, state, ResumedQueue(state, queue_memory, spill_dir))
