"""The ``--state`` file as a file: made safely, locked for one run, never one not ours.

One run at a time holds a state file (``flock`` on ``PATH.lock``; a second run is refused
naming the first). A path given as ``--state`` is read with plain ``open()`` before SQLite
touches it: only a file whose header carries our ``application_id`` is opened for writing.
A new state file is built under a temporary name and linked into place complete. What is
in the file, and how it is used, is crawler/state.py's.
"""

from __future__ import annotations

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
from typing import Any, Final

import orjson

from crawler.errors import UsageError
from crawler.paths import a_leftover, a_stream_by_name, check_creatable

FORMAT: Final = "crawler-state/1"
# SQLite's header field for "which program's file is this" (bytes 68-71): "CRL1". Read
# with a plain open() before SQLite ever touches a file given as --state.
APPLICATION_ID: Final = 0x43524C31
LOCK_SUFFIX: Final = ".lock"
_LEGACY_COPY_LIMIT: Final = 256 << 20
_TEMP_TAG: Final = "crawler-creating-"  # .PATH.crawler-creating-XXXXXXXX.new
# What a lock file holds (see lock()): "PID\nCOMMAND\n", written by crawler.
_LOCK_NOTE: Final = re.compile(rb"\d+\n[ -~]*\n")
PENDING_TABLE: Final = (
    "CREATE TABLE pending (seq INTEGER PRIMARY KEY, fp INTEGER NOT NULL,"
    " url TEXT NOT NULL, depth INTEGER NOT NULL, parent TEXT)"
)


def os_reason(path: str) -> str | None:
    """Why SQLite could not open the state file or the files it makes beside it (the
    -wal and -shm in its directory), as the OS says it, naming the file; None if
    nothing is wrong that the OS can tell."""
    real = os.path.realpath(path)
    probes = [(real, os.O_RDWR)]
    for suffix in ("-wal", "-shm"):
        side = real + suffix
        probes.append((side, os.O_RDWR if os.path.lexists(side) else 0))
    for probe, flags in probes:
        try:
            if flags:
                os.close(os.open(probe, flags | os.O_CLOEXEC | os.O_NONBLOCK))
            else:  # to be created: can it be, in that directory?
                check_creatable(probe)
        except OSError as exc:
            return os_message(exc, path)
    return None


def lock(path: str, owner: str) -> int:
    """Hold ``PATH.lock`` for the whole run, or refuse naming the run that holds it.

    ``flock`` on a file of its own, not on the database: the kernel releases it when
    the holder dies (even by SIGKILL), so a killed run leaves no stale lock; it does
    not interfere with SQLite's own POSIX locks on the database; and the lock file is
    never replaced or removed, so two runs always lock the same inode. (Children are
    spawned, never forked, so none inherits the descriptor.)"""
    # Beside the file itself: a symlink to a state file names the same lock (and
    # SQLite puts its -wal there too).
    lock_path = os.path.realpath(path) + LOCK_SUFFIX
    not_ours = UsageError(f"cannot use --state {path!r}: {lock_path!r} is not a crawler lock file")
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
                f"cannot use --state {path!r}: in use by another run, pid {pid}{what}"
            ) from None
        # Who holds it: the pid and the command, never its arguments (they may hold
        # credentials, and the lock file is readable by others).
        note = f"{os.getpid()}\n{owner}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def inspect(path: str) -> str:
    """What is at the path, read without changing it: ``new`` (nothing), ``empty``
    (0 bytes), ``ours``; anything else is refused. Read with plain ``open``: SQLite
    would create -wal/-shm files or switch journal modes of a file not ours."""
    refuse = UsageError(f"cannot use --state {path!r}: not a crawler state file")
    if a_stream_by_name(path):  # /dev/stdout: a stream, even if it leads to a file
        raise refuse
    try:
        # O_NONBLOCK: a FIFO given as --state must not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.lexists(path):  # never create a file through a symlink
            raise UsageError(f"cannot use --state {path!r}: a symlink to a missing file") from None
        left = a_leftover(path, ("-wal", "-shm", "-journal"))
        if left is not None:
            # Not ours (a log without its database: SQLite would replay it into a new
            # file; a -shm or -journal it would take over or remove).
            raise UsageError(
                f"cannot use --state {path!r}: {path + left!r} exists "
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
    if app_id == 0 and _legacy_format(path):
        return "ours"
    raise refuse


def _legacy_format(path: str) -> bool:
    """A state file from before ``application_id``: is its meta table ours? Read
    without writing: the file alone (``immutable``: no -shm, no lock), then through
    a -wal left by a killed run, and if that needs a recovery (a write), on a copy."""
    path = os.path.abspath(path)
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


def single_name(path: str) -> None:
    try:
        links = os.stat(path).st_nlink
    except FileNotFoundError:
        return
    if links > 1:
        # Another name (a hard link) would be another lock, and SQLite would keep a
        # second -wal for the same database beside it.
        raise UsageError(
            f"cannot use --state {path!r}: it has {links} names (hard links);"
            " use one with a single name"
        )


def sweep(path: str) -> None:
    """Remove what a run killed in ``_create`` left: only the lock holder makes these
    temporary files, so any there now is a dead run's. Also when the state file is
    there: a run killed between linking it into place and removing the temporary
    name leaves a second name of the live database, which no later creation sweeps."""
    folder, base = os.path.split(os.path.realpath(path))  # where ``create`` makes them
    pattern = f".{glob.escape(base)}.{_TEMP_TAG}*.new"
    for stale in glob.glob(os.path.join(glob.escape(folder), pattern)):
        with contextlib.suppress(OSError):
            os.unlink(stale)


def create(path: str, identity: dict[str, Any], *, replace_empty: bool) -> None:
    """A new state file appears complete or not at all: built under a temporary
    name in the same directory, fsynced, then linked into place (a link never
    replaces a file that appeared meanwhile). A run killed half-way leaves only its
    temporary file, removed by the next run that holds the lock. Through a symlink
    (to an empty file), the file it leads to is made, as its lock is: never the link."""
    folder, base = os.path.split(os.path.realpath(path))
    path = os.path.join(folder, base)
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
                "CREATE TABLE urls (fp INTEGER PRIMARY KEY, done INTEGER NOT NULL) WITHOUT ROWID"
            )
            db.execute("CREATE TABLE output (id INTEGER PRIMARY KEY, offset INTEGER NOT NULL)")
            db.execute(PENDING_TABLE)
            db.execute("INSERT INTO output VALUES (1, 0)")
            db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            db.execute(
                "INSERT INTO meta VALUES ('identity', ?)",
                (orjson.dumps(identity).decode(),),
            )
            db.execute("COMMIT")
        finally:
            db.close()
        _fsync(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not (replace_empty and os.path.getsize(path) == 0):
                raise UsageError(
                    f"cannot use --state {path!r}: created by another program meanwhile"
                ) from None
            os.replace(tmp, path)
        except OSError as exc:
            # A filesystem without hard links: rename instead. Only a program other
            # than crawler could create the path meanwhile (we hold the lock), and
            # then, rarely, it would be replaced: the check just above is the best
            # such a filesystem offers.
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if os.path.lexists(path):
                raise UsageError(
                    f"cannot use --state {path!r}: created by another program meanwhile"
                ) from None
            os.rename(tmp, path)
        # Make the new name durable too (best effort: not every filesystem can).
        with contextlib.suppress(OSError):
            _fsync(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync(path: str) -> None:
    """fsync a file or a directory, opened read-only for it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_message(exc: OSError, path: str) -> str:
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
