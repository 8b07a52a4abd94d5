"""Standard output (or a FIFO given as ``-o``) as a pipe the sink can give up on.

A pipe or socket of its own is switched to non-blocking, so the sink writes it from the
event loop and a reader that stops reading can be given up on at shutdown. One shared
with stderr (``2>&1``) stays blocking (stderr's writers expect it): opened anew where
Linux allows, else written a ``PIPE_BUF`` at a time when the loop sees room.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat


class Pipe:
    """Standard output, a pipe or socket switched to non-blocking (restored on close)."""

    def __init__(self, fd: int, restore: bool, chunk: int = 0, owned: bool = False) -> None:
        self.fd = fd
        self._restore = restore
        self.chunk = chunk  # blocking: write at most this much, when there is room
        self._owned = owned  # ours to close (a FIFO given as -o)

    def fileno(self) -> int:
        return self.fd

    async def close(self) -> None:
        if self._owned:
            os.close(self.fd)
        elif self._restore:
            with contextlib.suppress(OSError):
                os.set_blocking(self.fd, True)


def nonblocking_stdout() -> Pipe | None:
    """fd 1 as a _Pipe, or None where non-blocking writes would be unsafe or useless: a
    terminal or file, or an open file shared with stdin or stderr (``2>&1``: the flag is
    per open file, and stderr's writers expect blocking writes)."""

    def blocking(fd: int) -> bool | None:
        try:
            return os.get_blocking(fd)
        except OSError:
            return None

    if os.name != "posix":  # add_writer() on a pipe: POSIX event loops only
        return None
    try:
        mode = os.fstat(1).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return None
        if not os.get_blocking(1):
            return Pipe(1, restore=False)  # our parent made it so
        others = (blocking(0), blocking(2))
        os.set_blocking(1, False)
        if (blocking(0), blocking(2)) != others:
            os.set_blocking(1, True)
            # Shared with stderr (2>&1): fd 1 stays blocking. Opened anew where Linux
            # allows; else written from the loop a PIPE_BUF at a time when there is room.
            # Written by aiofiles, a reader that stops reading held a thread in write()
            # for ever (no signal ended it).
            reopened = _reopened_stdout(mode)
            if reopened is not None:
                return reopened
            if stat.S_ISFIFO(mode) and others[1] is not None:
                return Pipe(1, restore=False, chunk=select.PIPE_BUF)
            return None
    except OSError:
        return None
    return Pipe(1, restore=True)


def _reopened_stdout(mode: int) -> Pipe | None:
    """A FIFO shared with stderr (``2>&1 | reader``) opened anew, as an open file of our
    own whose flags nobody else sees (Linux opens ``/proc/self/fd/1`` so); else None.
    Without it, a thread blocked writing to a reader that stopped held up the run's
    end (two signals could not end it)."""
    if not stat.S_ISFIFO(mode) or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        fd = os.open("/proc/self/fd/1", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        same = os.path.samestat(os.fstat(fd), os.fstat(1))
        if same and os.get_blocking(1):  # the same pipe, and fd 1's open file untouched
            return Pipe(fd, restore=False, owned=True)
    except OSError:
        pass
    os.close(fd)
    return None


def resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
