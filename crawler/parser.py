"""A parser child process: runs a pure function on untrusted input (a big page, a
sitemap) away from the event loop, within a deadline, and is killed, never waited for.

lexbor is quadratic on deeply nested markup and expat on some huge tokens: one hostile
page can keep a C call busy for minutes, and a C call can be neither interrupted nor
cancelled. So that call runs in a child process, and the parent only ever waits for it
with a deadline: past the deadline, or at shutdown, the child is killed (SIGKILL) and the
next call starts a fresh one. The child also dies with its parent (crawler/lifeline.py).

Protocol, over the child's stdin/stdout (the loop's own non-blocking pipe transports:
no thread waits on a child): frames of an 8-byte big-endian length and a pickle. The child sends
one ``b"ready"`` frame once its imports are done (startup is not counted against a
call's deadline), then for each ``(function, args)`` frame one ``(ok, result)`` frame.
Calls are serialized: one child runs one thing at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

T = TypeVar("T")

_HEADER: Final = struct.Struct(">Q")
_STARTUP_TIMEOUT: Final = 60.0  # a fresh interpreter importing lexbor, on a loaded machine
_READY: Final = b"ready"
_REAP_TIMEOUT: Final = 1.0  # a SIGKILLed process is gone within milliseconds


class ParserError(Exception):
    """The child could not give an answer: it ran past its deadline or died."""


class ParseTimeoutError(ParserError):
    """The call ran past its deadline; the child was killed."""


class _Link(asyncio.Protocol):
    """Frames from the child's stdout, handed to whoever waits for the next one."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[bytes] | None = None
        self._frames: list[bytes] = []
        self.gone = False

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            end = _HEADER.size + size
            if len(buf) < end:
                break
            self._frames.append(bytes(buf[_HEADER.size : end]))
            del buf[:end]
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: the child is gone

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._frames:
            waiter.set_result(self._frames.pop(0))
        elif self.gone:
            waiter.set_exception(ParserError("the parser process ended"))

    async def next_frame(self) -> bytes:
        if self._frames:
            return self._frames.pop(0)
        if self.gone:
            raise ParserError("the parser process ended")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await self._waiter
        finally:
            self._waiter = None


class _Child:
    """One child process and the loop's transports of its pipes."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        link: _Link,
        reader: asyncio.ReadTransport,
        writer: asyncio.WriteTransport,
    ) -> None:
        self.proc, self.link, self.reader, self.writer = proc, link, reader, writer


class ParserProcess:
    """``await call(fn, *args)``: ``fn(*args)`` in the child, within ``timeout`` seconds.

    Raises ParseTimeoutError (the child was killed; the next call starts another),
    ParserError (the child died), or the exception ``fn`` raised."""

    def __init__(self, timeout: float, memory: int = 0) -> None:
        self.timeout = timeout
        self.memory = memory  # bytes of address space the child may use (0: no limit)
        self._lock = asyncio.Lock()
        self._child: _Child | None = None
        self._dying: list[subprocess.Popen[bytes]] = []  # killed, not reaped yet
        self._closed = False
        self.started = 0  # child processes started (tests, stats)

    @property
    def pid(self) -> int | None:
        return self._child.proc.pid if self._child is not None else None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            if self._closed:
                raise ParserError("the parser is closed")
            child = await self._running()
            request = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
            child.writer.write(_HEADER.pack(len(request)))
            child.writer.write(request)
            try:
                async with asyncio.timeout(self.timeout):
                    frame = await child.link.next_frame()
            except TimeoutError:
                self.kill()
                raise ParseTimeoutError(f"parse took more than {self.timeout:g} s") from None
            except BaseException:
                # Cancelled (shutdown, the grace period is over) or the child died: a child
                # still busy with this call would answer the next one with its result.
                self.kill()
                raise
            ok, result = pickle.loads(frame)  # noqa: S301 - our own child's answer
            if not ok:
                raise result
            return result  # type: ignore[no-any-return]

    async def _running(self) -> _Child:
        """The running child, started (and waited for until ready) if there is none."""
        child = self._child
        if child is not None and not child.link.gone:
            return child
        self.kill()
        loop = asyncio.get_running_loop()
        # PR_SET_PDEATHSIG is tied to the thread that forks: safe only from the main thread
        # (the loop's, in the CLI), which lives as long as the process.
        pdeathsig = threading.current_thread() is threading.main_thread()
        # Popen, not loop.subprocess_exec: the child is reaped here (kill() and close()),
        # not by a child watcher that may outlive the loop.
        # (Popen blocks the loop only for the fork and exec: milliseconds, once per child.)
        proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "crawler.parser",
                str(os.getpid()),
                "1" if pdeathsig else "0",
                str(self.memory),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None  # noqa: S101
        link = _Link()
        try:
            reader, _ = await loop.connect_read_pipe(lambda: link, proc.stdout)
            writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, proc.stdin)
        except BaseException:
            proc.kill()
            self._dying.append(proc)
            raise
        self._child = child = _Child(proc, link, reader, writer)
        self.started += 1
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT):
                frame = await link.next_frame()
        except BaseException:
            self.kill()
            raise
        if frame != _READY:
            self.kill()
            raise ParserError("the parser process did not start")
        return child

    def kill(self) -> None:
        """Kill the child, if any (SIGKILL; never waits for it)."""
        child, self._child = self._child, None
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            child.writer.abort()
            child.reader.close()
            self._dying.append(child.proc)
        self._dying = [proc for proc in self._dying if proc.poll() is None]

    def close(self) -> None:
        """Kill the child (idempotent); a call in progress fails with ParserError.

        The only wait is for the kernel to reap children already SIGKILLed, bounded."""
        self._closed = True
        self.kill()
        for proc in self._dying:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_REAP_TIMEOUT)
        self._dying = []


# -- the child -------------------------------------------------------------------------------
def _read_exactly(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _send(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _serve(parent_pid: int, pdeathsig: bool, memory: int) -> None:
    from crawler.lifeline import die_with_parent

    die_with_parent(parent_pid, pdeathsig=pdeathsig)
    if memory:
        # Within its deadline lexbor can allocate ~700 MB/s on a hostile page: past the
        # limit its allocations fail (the call fails, or the child dies) instead of the
        # machine running out of memory.
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # Ctrl-C reaches the whole process group; the parent decides when the child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol owns the real stdout: anything else that prints goes to stderr.
    fd_in, fd_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    # Import what the calls will use before saying ready (not counted in a deadline).
    import crawler.links
    import crawler.sitemaps  # noqa: F401

    _send(fd_out, _READY)
    while True:
        try:
            (size,) = _HEADER.unpack(_read_exactly(fd_in, _HEADER.size))
            fn, args = pickle.loads(_read_exactly(fd_in, size))  # noqa: S301 - from our parent
        except EOFError:
            return
        try:
            answer = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - the parent decides what it means
            answer = (False, exc)
        try:
            payload = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            payload = pickle.dumps((False, ParserError(repr(answer[1]))))
        _send(fd_out, payload)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        _serve(int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]))
    os._exit(0)
