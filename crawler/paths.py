"""Files a run reads and writes must be distinct, and writable where they are: checked
before any of them is touched.

Two names are the same file when they resolve to the same path (symlinks followed), or,
for files that exist, share device and inode (hard links too). Character devices
(``/dev/null``) are exempt: writing twice to them destroys nothing.

A file a run will write must be writable, or creatable in its directory: found wrong
before the run (not after it, when ``--stats-json`` is written), and said as the OS says
it (``Permission denied``, ``Not a directory``), naming the path it is about.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from msgspec import Struct

from crawler.errors import UsageError

# What ``--state PATH`` makes beside it: SQLite's files and the run lock.
STATE_SIBLINGS = ("", "-wal", "-shm", "-journal", ".lock")
_BODY_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}(\..*)?")


class Named(Struct, frozen=True):
    """One file of the run: ``what`` names it in messages (``-o``, ``INPUT``)."""

    what: str
    path: str


def a_stream_by_name(path: str) -> bool:
    """A name in /dev, /dev/fd or /proc (``/dev/stdout``, ``/dev/fd/3``): a stream, even
    when it leads to a regular file (stdout redirected to one); names made from it (a
    WARC rotated, a worker's own WARC) would be made in /dev. (/dev/shm holds files.)"""
    where = os.path.abspath(path)
    return os.path.dirname(where) in ("/dev", "/dev/fd") or where.startswith("/proc/")


def not_a_file(path: str) -> bool:
    """A stream by name (``/dev/stdout``), or something there that is no regular file
    (``/dev/null``, a FIFO): written through, never replaced by a file made beside it
    and renamed (as root, in /dev, that replaced /dev/null itself)."""
    if a_stream_by_name(path):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def write_now(path: str, data: bytes) -> None:
    """Write ``path`` through, without ever blocking: a FIFO nobody opens or reads is
    an OSError (ENXIO), not a wait for ever."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def a_leftover(path: str, suffixes: tuple[str, ...]) -> str | None:
    """The suffix of the first of SQLite's files beside ``path`` (``-wal``, ``-journal``,
    where SQLite makes them: beside the file a symlink leads to) that is there: when
    ``path`` is new, it is not ours, and SQLite would replay it into the new file or
    remove it."""
    real = os.path.realpath(path)
    return next((s for s in suffixes if os.path.lexists(real + s)), None)


def _key(path: str) -> tuple[str, tuple[int, int] | None, bool]:
    """(resolved path, (device, inode) if it exists, exempt)"""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return real, None, False
    return real, (st.st_dev, st.st_ino), stat.S_ISCHR(st.st_mode)


def _warc_pattern(warc: str) -> re.Pattern[str]:
    """The names made from a WARC path, resolved: rotated (``warc.warc_name``) and each
    worker's (``shardproc.worker_warc``, rotated too). They are made beside the name
    given, even when it is a symlink: in its directory, not in the one it leads to."""
    where = os.path.abspath(warc)
    real = os.path.join(os.path.realpath(os.path.dirname(where)), os.path.basename(where))
    stem, ext = real, ""
    for known in (".warc.gz", ".warc"):
        if real.endswith(known):
            stem, ext = real[: -len(known)], known
            break
    made = r"(?:-w\d+(?:-\d{5,})?|-\d{5,})"
    return re.compile(re.escape(stem) + made + re.escape(ext))


def check_distinct(
    inputs: list[Named],
    outputs: list[Named],
    *,
    warc: str | None = None,
    save_dir: str | None = None,
) -> None:
    """Refuse (``UsageError``) when an output is an input or another output.

    ``outputs`` are files this run writes; ``warc`` and its rotated names and
    ``save_dir`` (the whole directory) count as outputs too. Inputs may repeat.
    """
    named = [*outputs]
    if warc is not None:
        named.append(Named("--warc", warc))
    if save_dir is not None:
        named.append(Named("--save-dir", save_dir))
    keyed = [(n, *_key(n.path)) for n in named]
    keyed_inputs = [(n, *_key(n.path)) for n in inputs]
    for i, (out, real, ino, exempt) in enumerate(keyed):
        if exempt:
            continue
        others = keyed[:i] + keyed_inputs
        for other, o_real, o_ino, o_exempt in others:
            if o_exempt:
                continue
            if real == o_real or (ino is not None and ino == o_ino):
                _clash(out, other)
    if warc is not None:
        rotated = _warc_pattern(warc)
        for other in [*outputs, *inputs]:
            if rotated.fullmatch(os.path.realpath(other.path)):
                raise UsageError(
                    f"{other.what} {other.path!r} is a name --warc {warc!r} rotates into"
                    " (or gives a worker)"
                )
    if save_dir is not None:
        root = os.path.realpath(save_dir)
        for other in [*outputs, *inputs]:
            inside = os.path.relpath(os.path.realpath(other.path), root)
            if _BODY_NAME.fullmatch(inside):
                raise UsageError(
                    f"{other.what} {other.path!r} is a body file name of --save-dir {save_dir!r}"
                )


def inputs(what: str, paths: list[str]) -> list[Named]:
    """The input files of a run, ``-`` standing for standard input: that counts when it is
    a file (``crawler fetch -o urls.txt < urls.txt`` would truncate what it reads)."""
    named = [Named(what, p) for p in paths if p != "-"]
    if "-" in paths:
        named += stdio(0, "standard input")
    return named


def stdio(fd: int, what: str) -> list[Named]:
    """Standard input or output as a file of the run, when it is a regular file (the
    shell opened it: ``< urls.txt``, ``>> urls.txt``); a pipe or terminal is nothing to
    clash with."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
    except OSError:  # closed
        return []
    return [Named(what, f"/dev/fd/{fd}")]


def state_files(state: str) -> list[Named]:
    """``--state PATH`` and the files SQLite and the lock make beside it."""
    real = os.path.realpath(state)  # SQLite and the lock put the siblings beside the file
    return [
        Named(f"--state{' (' + s + ')' if s else ''}", state + s if not s else real + s)
        for s in STATE_SIBLINGS
    ]


def state_places(state: str) -> tuple[list[Named], list[Place]]:
    """``--state PATH`` before the run: refused (UsageError) when it is a directory or its
    directory is missing; else the files it makes (for ``check_distinct``) and the places
    that must be writable (for ``check_places``)."""
    if os.path.isdir(state):
        raise UsageError(f"cannot use --state {state!r}: is a directory")
    folder = os.path.dirname(os.path.realpath(state))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot use --state {state!r}: no such directory")
    # SQLite makes its -wal and -shm beside the file (a new one is made there too).
    places = [Place("use --state", folder, True, state)]
    if os.path.exists(state):
        places.append(Place("use --state", state, False, state))
    return state_files(state), places


class Place(Struct, frozen=True):
    """Somewhere a run will write: ``directory`` to make files in, else a file. A message
    says "cannot {verb} {shown}" (``shown``: the path as the user gave it, if not ``path``)."""

    verb: str
    path: str
    directory: bool = False
    shown: str | None = None


def session_places(option: str, path: str) -> list[Place]:
    """Where ``--cookie-jar``/``--etags`` PATH writes: the file, and the directory of the
    file it leads to (each is saved under a temporary name there and renamed; SQLite makes
    its journal there), unless it is written through (``not_a_file``)."""
    places = [Place(f"write {option}", path)]
    if not not_a_file(path):
        folder = os.path.dirname(os.path.realpath(path))
        places.append(Place(f"write {option}", folder, True, path))
    return places


def check_places(places: list[Place]) -> None:
    """Refuse (``UsageError``, the OS's reason) the first place that cannot be written."""
    for place in places:
        problem = writable_problem(place.path, directory=place.directory)
        if problem is not None:
            shown = place.path if place.shown is None else place.shown
            raise UsageError(f"cannot {place.verb} {shown!r}: {os_reason(problem, shown)}")


def _clash(one: Named, other: Named) -> None:
    if one.path == other.path:
        raise UsageError(f"{one.what} and {other.what} are the same file: {one.path!r}")
    raise UsageError(f"{one.what} {one.path!r} and {other.what} {other.path!r} are the same file")


def writable_problem(path: str, *, directory: bool = False) -> OSError | None:
    """The OSError that writing the file ``path`` (``directory``: making files in the
    directory ``path``, created with its parents if missing) would meet, or None. Nothing
    is created or changed; a device or FIFO that exists is only checked for access."""
    try:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not directory:
                # A dangling symlink: the file is made where it leads.
                check_creatable(os.path.realpath(path))
                return None
            # os.makedirs makes the missing parents: the nearest one that exists counts.
            missing = os.path.abspath(path)
            while not os.path.lexists(missing) and os.path.dirname(missing) != missing:
                missing = os.path.dirname(missing)
            check_creatable(os.path.join(missing, "x"))
            return None
        if directory and not stat.S_ISDIR(st.st_mode):
            return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        if not directory and stat.S_ISDIR(st.st_mode):
            return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        _check_access(path, (os.W_OK | os.X_OK) if directory else os.W_OK)
    except OSError as exc:
        return exc
    return None


def check_creatable(path: str) -> None:
    """Raise the OSError that creating the file ``path`` would meet (its directory
    missing, not a directory, not writable, on a read-only filesystem); create nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    st = os.stat(folder)  # FileNotFoundError, NotADirectoryError: naming the folder
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    _check_access(folder, os.W_OK | os.X_OK)


def _check_access(path: str, mode: int) -> None:
    """access(2) as the run will write (effective ids); EROFS on a read-only mount."""
    effective = os.access in os.supports_effective_ids
    if not os.access(path, mode, effective_ids=effective):
        code = errno.EROFS if os.statvfs(path).f_flag & os.ST_RDONLY else errno.EACCES
        raise PermissionError(code, os.strerror(code), path)


def os_reason(exc: OSError, path: str) -> str:
    """An OSError as a message says it: the OS's reason, and the file it is about when
    that is not ``path`` itself (its directory, say)."""
    text = exc.strerror or str(exc)
    name = exc.filename
    if not isinstance(name, str) or os.path.abspath(name) == os.path.abspath(path):
        return text
    return f"{text}: {name!r}"
