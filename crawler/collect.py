"""``crawler collect``: a Redis job's records (its ``out`` stream), each exactly once, in
stream order, to a file or standard output; it ends once the job is finished and drained.

Into a file it can be killed (even SIGKILL) and started again with the same ``-o PATH``:
the file and its sidecar ``PATH.collect`` (job, size, last stream id) move in steps

  1. read a batch after the recorded id (XREAD)
  2. append it to PATH, fsync
  3. write the sidecar (tmp, fsync, rename, fsync of the directory): the batch is collected
  4. trim the stream up to the recorded id (XTRIM MINID): Redis keeps what is not collected

A kill between 2 and 3 leaves an unrecorded tail (maybe a torn line): the next start cuts
PATH back to the recorded size and reads the batch again. A kill between 3 and 4 leaves
collected entries in the stream, before the recorded id: never read again, and the next
trim removes them. The sidecar is written before the file's first byte, so a file without
one is never ours, and is refused rather than altered.

To standard output there is no sidecar: each batch is trimmed once written, so a collect
killed between the two writes that batch again when started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
from msgspec import Struct

from crawler import signals
from crawler.redisjob import Job, JobError, check_name, connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

RETRY_FOR: Final = 60.0  # seconds collect waits for Redis to answer again before it gives up
RETRY_EVERY: Final = 0.5
BLOCK_MS: Final = 1_000  # a read waits this long for records before the job is checked
DEFAULT_BATCH: Final = 1_000
SIDECAR: Final = ".collect"
EXIT_OK: Final = 0
EXIT_INTERRUPTED: Final = 130

Entries = list[tuple[bytes, dict[bytes, bytes]]]
T = TypeVar("T")


class Mark(Struct):
    """What the sidecar says: the bytes of PATH that hold collected records, and the id
    of the last record in them."""

    job: str
    size: int = 0
    last: str = "0-0"


class Output:
    """Where the records go: a file with its sidecar, or standard output."""

    def __init__(self, path: str | None, job: str) -> None:
        self.path = path
        self.job = job
        self.mark = Mark(job)
        self.fd = 1 if path is None else -1
        self.closed = False  # standard output's reader went away

    # -- the file and its sidecar ---------------------------------------------------------
    def open(self) -> None:
        """Check PATH and its sidecar, cut PATH back to the recorded size, and be ready to
        append; a file that is not ours, or that does not match its sidecar, is refused."""
        if self.path is None:
            return
        path, sidecar = self.path, self.path + SIDECAR
        with contextlib.suppress(OSError):  # a FIFO would block the open, then not resume
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise JobError(f"-o {path} is not a regular file (for a pipe: no -o)")
        try:  # opened without truncation: nothing changes before the checks
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JobError(f"cannot write -o {path}: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise JobError(f"another crawler collect is writing {path}") from None
        size = os.fstat(self.fd).st_size
        mark = _read_mark(sidecar)
        if mark is None:
            if size:
                raise JobError(
                    f"{path} exists and was not written by crawler collect (no {sidecar}): "
                    "not altering it; give another -o PATH"
                )
            mark = self.mark = Mark(self.job)
            self._save()  # before the first byte: a file without a sidecar is never ours
        elif mark.job != self.job:
            raise JobError(f"{path} holds the records of job {mark.job!r}, not {self.job!r}")
        elif size < mark.size:
            raise JobError(
                f"{path} is shorter ({size} bytes) than the {mark.size} bytes "
                f"{sidecar} says were collected into it: remove both to start again"
            )
        self.mark = mark
        try:
            os.ftruncate(self.fd, mark.size)  # a torn or unrecorded tail goes
            os.lseek(self.fd, mark.size, os.SEEK_SET)
        except OSError as exc:
            raise JobError(f"cannot write -o {path}: {exc.strerror}") from None

    def close(self) -> None:
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1

    def write(self, data: bytes, last: str) -> None:
        """Append ``data`` (whole records) and record it; for a file, durably."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
            if self.path is None:
                return
            os.fsync(self.fd)
        except BrokenPipeError:
            if self.path is not None:
                raise
            self.closed = True
            with contextlib.suppress(OSError):  # nothing at exit tries the dead pipe again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
            return
        except OSError as exc:
            where = self.path or "standard output"
            raise JobError(f"cannot write {where}: {exc.strerror}") from None
        self.mark.size += len(data)
        self.mark.last = last
        self._save()

    def _save(self) -> None:
        sidecar = f"{self.path}{SIDECAR}"
        tmp = sidecar + ".tmp"
        data = orjson.dumps({"job": self.mark.job, "size": self.mark.size, "last": self.mark.last})
        try:
            # A new file of ours, never one a symlink of that name leads to (which
            # O_TRUNC would empty and fill with the sidecar): the name is removed first.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, data + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, sidecar)
            _fsync_dir(os.path.dirname(os.path.abspath(sidecar)))
        except OSError as exc:
            raise JobError(f"cannot write {sidecar}: {exc.strerror}") from None


def _read_mark(sidecar: str) -> Mark | None:
    try:
        with open(sidecar, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JobError(f"cannot read {sidecar}: {exc.strerror}") from None
    try:
        data = orjson.loads(raw)
        mark = Mark(str(data["job"]), int(data["size"]), str(data["last"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise JobError(f"{sidecar} is not a crawler collect sidecar") from None
    if mark.size < 0:
        raise JobError(f"{sidecar} is not a crawler collect sidecar")
    return mark


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every platform opens a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _after(entry_id: str) -> str:
    """The smallest stream id above ``entry_id``: XTRIM MINID keeps it and what follows."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def collect(
    url: str,
    name: str,
    path: str | None,
    *,
    batch: int = DEFAULT_BATCH,
    retry_for: float = RETRY_FOR,
) -> int:
    """Collect job ``name``'s records into ``path`` (None: standard output) until the job
    is finished and its output drained (0), or a stop signal (130). While Redis does not
    answer (restarted, a network blip) it tries again for up to ``retry_for`` seconds."""
    check_name(name)
    out = Output(path, name)
    redis = await connect(url, block_ms=BLOCK_MS)
    try:
        job = Job(redis, name)
        guard = Guard(retry_for)
        await guard(job.open)
        try:
            out.open()
            return await _run(redis, job, out, batch, guard)
        finally:
            out.close()
    finally:
        await redis.aclose()


async def _run(redis: Redis, job: Job, out: Output, batch: int, guard: Guard) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    signals.take_over(loop, stop.set, previous)
    try:
        if signals.take():
            stop.set()
        stream = job.key("out")
        while not stop.is_set() and not out.closed:
            finished = await guard(job.finished)
            # Finished first, then read: a job finished has every record in the stream, so
            # an empty read after that means drained.
            block = None if finished else BLOCK_MS
            mark = out.mark.last
            reply: Any = await _unless(
                stop,
                guard(functools.partial(redis.xread, {stream: mark}, count=batch, block=block)),
            )
            if reply is None and stop.is_set():
                break  # stopped while waiting: nothing read, nothing lost
            entries: Entries = reply[0][1] if reply else []  # RESP2: [[stream, entries]]
            if not entries:
                if finished:
                    return EXIT_OK
                continue
            last = entries[-1][0].decode()
            out.write(b"".join(fields[b"r"] for _, fields in entries), last)
            if out.closed:
                break
            # Only now is the batch collected: Redis can let it go.
            await guard(
                functools.partial(redis.xtrim, stream, minid=_after(last), approximate=False)
            )
        return EXIT_INTERRUPTED if stop.is_set() else EXIT_OK
    finally:
        signals.give_back(loop, previous)


class Guard:
    """Runs a Redis step: while the server does not answer (connection refused or lost,
    timeouts, loading its data after a restart) the step is tried again, for up to
    ``retry_for`` seconds in a row, saying so once on stderr; then, or on any other
    failure of the server, one line (JobError)."""

    def __init__(self, retry_for: float) -> None:
        self.retry_for = retry_for

    async def __call__(self, step: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import ConnectionError as Refused
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as TimedOut

        since: float | None = None
        while True:
            try:
                return await step()
            except (Refused, TimedOut, OSError) as exc:
                now = time.monotonic()
                if since is None:
                    since = now
                    sys.stderr.write(
                        f"crawler collect: Redis does not answer ({exc}): trying again "
                        f"for up to {self.retry_for:g} s\n"
                    )
                if now - since >= self.retry_for:
                    raise JobError(
                        f"Redis failed: {exc} (no answer for {self.retry_for:g} s)"
                    ) from None
                await asyncio.sleep(RETRY_EVERY)
            except RedisError as exc:
                raise JobError(f"Redis failed: {exc}") from None


async def _unless(stop: asyncio.Event, step: Awaitable[T]) -> T | None:
    """``step``'s result, or None if ``stop`` is set first (``step`` is then cancelled: a
    read cut short has not recorded anything, so nothing is lost)."""
    task = asyncio.ensure_future(step)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.result()
