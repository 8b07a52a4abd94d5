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

One run at a time holds a state file (``flock`` on ``PATH.lock``; a second run is refused
naming the first). A path given as ``--state`` is read with plain ``open()`` before SQLite
touches it: only a file whose header carries our ``application_id`` is opened for writing.
A new state file is built under a temporary name and linked into place complete.

On standard output nothing can be cut back: at most the records written since the last
checkpoint appear twice across the two runs; none is lost.

The state is also the dedup store, so memory stays flat whatever the input's length. All
SQLite work runs in one dedicated thread (sqlite3 objects stay on the thread that made them),
one call per input batch or checkpoint, never per URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import orjson

from crawler.dedup import from_sql, to_sql
from crawler.errors import UsageError
from crawler.linkqueue import Link
from crawler.paths import check_creatable

FORMAT: Final = "crawler-state/1"
# SQLite's header field for "which program's file is this" (bytes 68-71): "CRL1". Read
# with a plain open() before SQLite ever touches a file given as --state.
APPLICATION_ID: Final = 0x43524C31
LOCK_SUFFIX: Final = ".lock"
_LEGACY_COPY_LIMIT: Final = 256 << 20
_TEMP_TAG: Final = "crawler-creating-"  # .PATH.crawler-creating-XXXXXXXX.new
# What a lock file holds (see _lock): "PID\nCOMMAND\n", written by crawler.
_LOCK_NOTE: Final = re.compile(rb"\d+\n[ -~]*\n")
_PENDING_TABLE: Final = (
    "CREATE TABLE pending (seq INTEGER PRIMARY KEY, fp INTEGER NOT NULL,"
    " url TEXT NOT NULL, depth INTEGER NOT NULL, parent TEXT)"
)
T = TypeVar("T")
# What claim() says of each fingerprint:
FRESH: Final = 1
REPEAT: Final = 0  # seen earlier in this run
DONE_BEFORE: Final = 2  # committed by an earlier run


class StateStore:
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
            why = await self._call(self._os_reason) or str(exc)
            raise UsageError(f"cannot use --state {self.path!r}: {why}") from None
        except OSError as exc:
            raise UsageError(
                f"cannot use --state {self.path!r}: {_os_message(exc, self.path)}"
            ) from None

    def _open(self) -> None:
        # Order matters: the lock first (nothing is read or written before this run holds
        # the file), then a read-only look at what is there, and only then a connection
        # that may write (WAL on, -wal/-shm created) to a file known to be ours.
        self._inspect()  # a file not ours is refused before even a lock file appears
        self._lock()
        try:
            self._sweep()  # first: a killed creation's leftover is a second name of the file
            self._single_name()
            kind = self._inspect()  # again: what is there now that no other run can change it
            if kind != "ours":
                self._create(replace_empty=kind == "empty")
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db = db
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._check(db)
            if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # an older version's
            self.resumed = kind == "ours"
            # Made by every version, but state files of older versions lack it.
            db.execute(_PENDING_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
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

    def _os_reason(self) -> str | None:
        """Why SQLite could not open the state file or the files it makes beside it (the
        -wal and -shm in its directory), as the OS says it, naming the file; None if
        nothing is wrong that the OS can tell."""
        real = os.path.realpath(self.path)
        probes = [(real, os.O_RDWR)]
        for suffix in ("-wal", "-shm"):
            side = real + suffix
            probes.append((side, os.O_RDWR if os.path.lexists(side) else 0))
        for path, flags in probes:
            try:
                if flags:
                    os.close(os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK))
                else:  # to be created: can it be, in that directory?
                    check_creatable(path)
            except OSError as exc:
                return _os_message(exc, self.path)
        return None

    # -- one run per state file ------------------------------------------------------------
    def _lock(self) -> None:
        """Hold ``PATH.lock`` for the whole run, or refuse naming the run that holds it.

        ``flock`` on a file of its own, not on the database: the kernel releases it when
        the holder dies (even by SIGKILL), so a killed run leaves no stale lock; it does
        not interfere with SQLite's own POSIX locks on the database; and the lock file is
        never replaced or removed, so two runs always lock the same inode. (Children are
        spawned, never forked, so none inherits the descriptor.)"""
        # Beside the file itself: a symlink to a state file names the same lock (and
        # SQLite puts its -wal there too).
        lock_path = os.path.realpath(self.path) + LOCK_SUFFIX
        not_ours = UsageError(
            f"cannot use --state {self.path!r}: {lock_path!r} is not a crawler lock file"
        )
        try:
            # Never through a symlink: one planted in a shared directory would have us
            # truncate the file it points to.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise not_ours from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise not_ours
            held = os.pread(fd, 4096, 0)
            if held and not _LOCK_NOTE.fullmatch(held):
                raise not_ours  # someone's file of that name: not ours to overwrite
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = held.decode("utf-8", "replace").split("\n")
                pid = holder[0].strip() or "unknown"
                what = f" ({holder[1].strip()})" if len(holder) > 1 and holder[1].strip() else ""
                raise UsageError(
                    f"cannot use --state {self.path!r}: in use by another run, pid {pid}{what}"
                ) from None
            # Who holds it: the pid and the command, never its arguments (they may hold
            # credentials, and the lock file is readable by others).
            note = f"{os.getpid()}\n{self._owner}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _inspect(self) -> str:
        """What is at the path, read without changing it: ``new`` (nothing), ``empty``
        (0 bytes), ``ours``; anything else is refused. Read with plain ``open``: SQLite
        would create -wal/-shm files or switch journal modes of a file not ours."""
        refuse = UsageError(f"cannot use --state {self.path!r}: not a crawler state file")
        try:
            # O_NONBLOCK: a FIFO given as --state must not hang the open.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            if os.path.lexists(self.path):  # never create a file through a symlink
                raise UsageError(
                    f"cannot use --state {self.path!r}: a symlink to a missing file"
                ) from None
            if os.path.exists(self.path + "-wal"):
                # A log without its database: SQLite would replay it into a new file.
                raise UsageError(
                    f"cannot use --state {self.path!r}: {self.path + '-wal'!r} exists "
                    "without it (remove it or use another path)"
                ) from None
            return "new"
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise refuse
            head = os.pread(fd, 100, 0)
        finally:
            os.close(fd)
        if not head:
            return "empty"  # e.g. left by an older version killed while creating it
        if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
            raise refuse
        app_id = int.from_bytes(head[68:72], "big")
        if app_id == APPLICATION_ID:
            return "ours"
        if app_id == 0 and self._legacy_format():
            return "ours"
        raise refuse

    def _legacy_format(self) -> bool:
        """A state file from before ``application_id``: is its meta table ours? Read
        without writing: the file alone (``immutable``: no -shm, no lock), then through
        a -wal left by a killed run, and if that needs a recovery (a write), on a copy."""
        path = os.path.abspath(self.path)
        wal = path + "-wal"
        if _meta_format(_ro_uri(path) + "&immutable=1") == FORMAT:
            return True
        if not os.path.exists(wal):
            return False
        if os.path.exists(path + "-shm") and _meta_format(_ro_uri(path)) == FORMAT:
            return True
        if os.path.getsize(path) + os.path.getsize(wal) > _LEGACY_COPY_LIMIT:
            return False
        with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
            copy = os.path.join(tmp, "state")
            shutil.copyfile(path, copy)
            shutil.copyfile(wal, copy + "-wal")
            return _meta_format("file:" + urllib.parse.quote(copy)) == FORMAT

    def _single_name(self) -> None:
        try:
            links = os.stat(self.path).st_nlink
        except FileNotFoundError:
            return
        if links > 1:
            # Another name (a hard link) would be another lock, and SQLite would keep a
            # second -wal for the same database beside it.
            raise UsageError(
                f"cannot use --state {self.path!r}: it has {links} names (hard links);"
                " use one with a single name"
            )

    def _sweep(self) -> None:
        """Remove what a run killed in ``_create`` left: only the lock holder makes these
        temporary files, so any there now is a dead run's. Also when the state file is
        there: a run killed between linking it into place and removing the temporary
        name leaves a second name of the live database, which no later creation sweeps."""
        folder, base = os.path.split(os.path.abspath(self.path))
        pattern = f".{glob.escape(base)}.{_TEMP_TAG}*.new"
        for stale in glob.glob(os.path.join(glob.escape(folder), pattern)):
            with contextlib.suppress(OSError):
                os.unlink(stale)

    def _create(self, *, replace_empty: bool) -> None:
        """A new state file appears complete or not at all: built under a temporary
        name in the same directory, fsynced, then linked into place (a link never
        replaces a file that appeared meanwhile). A run killed half-way leaves only its
        temporary file, removed by the next run that holds the lock."""
        folder, base = os.path.split(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_TEMP_TAG}", suffix=".new", dir=folder)
        os.close(fd)
        try:
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                # No journal: a torn temporary file is simply never linked into place.
                db.execute("PRAGMA journal_mode=OFF")
                db.execute("PRAGMA synchronous=OFF")
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute("BEGIN")
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.execute(
                    "CREATE TABLE urls (fp INTEGER PRIMARY KEY, done INTEGER NOT NULL)"
                    " WITHOUT ROWID"
                )
                db.execute("CREATE TABLE output (id INTEGER PRIMARY KEY, offset INTEGER NOT NULL)")
                db.execute(_PENDING_TABLE)
                db.execute("INSERT INTO output VALUES (1, 0)")
                db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                db.execute(
                    "INSERT INTO meta VALUES ('identity', ?)",
                    (orjson.dumps(self._identity).decode(),),
                )
                db.execute("COMMIT")
            finally:
                db.close()
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                if not (replace_empty and os.path.getsize(self.path) == 0):
                    raise UsageError(
                        f"cannot use --state {self.path!r}: created by another program meanwhile"
                    ) from None
                os.replace(tmp, self.path)
            except OSError as exc:
                # A filesystem without hard links: rename instead. Only a program other
                # than crawler could create the path meanwhile (we hold the lock), and
                # then, rarely, it would be replaced: the check just above is the best
                # such a filesystem offers.
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                if os.path.lexists(self.path):
                    raise UsageError(
                        f"cannot use --state {self.path!r}: created by another program meanwhile"
                    ) from None
                os.rename(tmp, self.path)
            # Make the new name durable too (best effort: not every filesystem can).
            with contextlib.suppress(OSError):
                dir_fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

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

    async def claim(self, fps: list[int]) -> list[int]:
        """For one input batch, per fingerprint: ``FRESH`` (not seen before, now claimed),
        ``DONE_BEFORE`` (committed by an earlier run) or ``REPEAT`` (seen in this run)."""
        return await self._call(self._claim, fps)

    def _claim(self, fps: list[int]) -> list[int]:
        db = self._db
        assert db is not None  # noqa: S101
        signed = [to_sql(fp) for fp in fps]
        seen: dict[int, int] = {}  # fp -> its done value
        for start in range(0, len(signed), 500):  # stay under SQLite's variable limit
            part = signed[start : start + 500]
            marks = ",".join("?" * len(part))
            seen.update(
                db.execute(f"SELECT fp, done FROM urls WHERE fp IN ({marks})", part)  # noqa: S608
            )
        run = self._run
        fresh = []
        new_rows = []
        for fp in signed:
            done = seen.get(fp)
            if done is None:
                seen[fp] = 0
                fresh.append(FRESH)
                new_rows.append((fp,))
            else:
                fresh.append(DONE_BEFORE if 0 < done < run else REPEAT)
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
        self._executor.shutdown(wait=True)

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


def _os_message(exc: OSError, path: str) -> str:
    """The OS's reason, and the file it is about when that is not the state file
    ``path`` itself (its directory, its -wal, its lock)."""
    text = exc.strerror or str(exc)
    name = exc.filename
    if isinstance(name, str) and _TEMP_TAG in name:
        name = os.path.dirname(name)  # a new state file is made there (see _create)
    if not name or name in (path, os.path.realpath(path)):
        return text
    return f"{text}: {name!r}"


def _ro_uri(path: str) -> str:
    return "file:" + urllib.parse.quote(path) + "?mode=ro"


def _meta_format(uri: str) -> str | None:
    """The ``format`` in the meta table of the database at ``uri``, if any."""
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return row[0] if row is not None and isinstance(row[0], str) else None
