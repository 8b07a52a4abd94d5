"""Lazy line reader for a URL list: a file path or standard input.

Reads fixed-size chunks in a worker thread (one hop per chunk, not per line) so a
10-million-line file never sits in memory and a slow stdin never blocks the event loop.
Accepts a UTF-8 BOM, CRLF line ends, a missing final newline and invalid UTF-8
(replaced by U+FFFD, so the line still gets its ``invalid_url`` record).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import stat
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final, Protocol

from crawler.errors import UsageError
from crawler.urls import suggest_url

CHUNK: Final = 256 * 1024
_AHEAD: Final = 4  # chunks the reader thread may read ahead of the pipeline
_BOM: Final = b"\xef\xbb\xbf"
_HASH: Final = ord("#")  # a line starting with it is a comment


def split_arguments(args: Iterable[str]) -> tuple[list[str], list[str]]:
    """The command line's URLs and input files (``fetch`` and ``crawl`` alike).

    An argument with ``://`` is a URL (an invalid one gets its ``invalid_url`` record);
    ``-`` is standard input; an existing path is a file. A path that does not exist but
    reads as a URL without its scheme (``example.org``) is a usage error with the URL it
    probably meant; any other is a file, which then cannot be read (a usage error too).
    """
    urls: list[str] = []
    files: list[str] = []
    for arg in args:
        if "://" in arg:
            urls.append(arg)
            continue
        if arg != "-" and not os.path.lexists(arg):
            hint = suggest_url(arg)
            if hint is not None:
                raise UsageError(f"{arg!r} is neither a file nor a URL: did you mean {hint}?")
        files.append(arg)
    return urls, files


class Source(Protocol):
    """Where URLs come from: batches of lines, and how far through the input we are."""

    lines_total: int | None  # URL lines in the whole input, once known
    lines_read: int  # URL lines handed out by batches() so far
    eof: bool  # batches() has handed out every line

    def batches(self) -> AsyncIterator[list[str]]: ...

    def start_count(self) -> None:
        """Start counting the input's URL lines, if that can be done without reading it
        (a regular file); ``lines_total`` is set when done."""

    async def counted(self) -> None:
        """Wait for the count start_count() began (if any); the caller bounds the wait."""

    def stop_count(self) -> None:
        """Give up counting (the run is over)."""


class LineSource:
    """Batches of stripped, non-blank, non-comment lines from a file or stdin."""

    def __init__(self, path: str | None, *, max_line_bytes: int = 1 << 20) -> None:
        self._path = None if path in (None, "-") else path
        self._max_line = max_line_bytes
        self._fd: int | None = None
        self._count_fd: int | None = None  # a regular file: a second descriptor to count it
        self._count: asyncio.Future[None] | None = None
        self._count_stop = threading.Event()
        self.total_bytes: int | None = None  # known for regular files
        self.bytes_read = 0
        self.lines_total: int | None = None
        self.lines_read = 0
        self.eof = False

    def open(self) -> None:
        """Open the input now, so an unreadable path is a usage error before the run starts."""
        if self._path is None:
            self._fd = os.dup(0)
        else:
            try:
                self._fd = os.open(self._path, os.O_RDONLY)
            except OSError as exc:
                raise UsageError(f"cannot read input {self._path!r}: {exc.strerror}") from None
            st = os.fstat(self._fd)
            if stat.S_ISDIR(st.st_mode):
                self.close()
                raise UsageError(f"cannot read input {self._path!r}: is a directory")
        st = os.fstat(self._fd)
        if stat.S_ISREG(st.st_mode):
            self.total_bytes = st.st_size
            self._count_fd = os.dup(self._fd)

    def identity(self) -> dict[str, str]:
        """What identifies this input for --state: its path and a digest of its head.

        Standard input has no stable identity beyond being standard input."""
        if self._path is None or self._fd is None:
            return {"input": "-"}
        try:
            head = os.pread(self._fd, 64 * 1024, 0)
        except OSError:  # a pipe or FIFO: cannot peek without consuming
            return {"input": os.path.abspath(self._path)}
        return {
            "input": os.path.abspath(self._path),
            "input_head_sha256": hashlib.sha256(head).hexdigest(),
        }

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self.stop_count()

    def start_count(self) -> None:
        """Count the URL lines of a regular file in a daemon thread, with its own
        descriptor (pread: the reader's position is not touched). Cheap: newlines are
        counted in C, and only blocks holding a blank, indented or comment line are
        split (about 0.5 s for 10 million lines). Standard input or a pipe cannot be
        counted without reading it: ``lines_total`` stays unknown until its end."""
        fd = self._count_fd
        if fd is None:
            return
        self._count_fd = None  # the thread owns it now
        loop = asyncio.get_running_loop()
        done = self._count = loop.create_future()
        stop = self._count_stop

        def count() -> None:
            try:
                total = count_url_lines(fd, stop)
            except OSError:
                total = None
            finally:
                os.close(fd)
            if total is not None and not self.eof:
                self.lines_total = total
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=count, name="crawler-count", daemon=True).start()

    async def counted(self) -> None:
        if self._count is not None:
            await asyncio.shield(self._count)  # a timeout ends the wait, not the count

    def stop_count(self) -> None:
        self._count_stop.set()
        if self._count_fd is not None:  # no thread took it
            fd, self._count_fd = self._count_fd, None
            os.close(fd)

    async def batches(self) -> AsyncIterator[list[str]]:
        """Yield lists of lines, one list per chunk read."""
        if self._fd is None:
            self.open()
        pending = b""
        first = True
        skipping = False  # inside an over-long line whose head was already yielded
        async for chunk in self._chunks():
            self.bytes_read += len(chunk)
            if first:
                first = False
                if chunk.startswith(_BOM):
                    chunk = chunk[len(_BOM) :]
            data = pending + chunk if pending else chunk
            parts = data.split(b"\n")
            pending = parts.pop()
            if skipping and parts:
                parts[0] = b""
                skipping = False
            if len(pending) > self._max_line:
                # An absurdly long line: keep its head (it becomes an invalid_url
                # record) and drop the rest up to the next newline.
                if not skipping:
                    parts.append(pending[: self._max_line])
                pending = b""
                skipping = True
            lines = _clean(parts, self._max_line)
            if lines:
                self.lines_read += len(lines)
                yield lines
        if pending and not skipping:
            lines = _clean([pending], self._max_line)
            if lines:
                self.lines_read += len(lines)
                yield lines
        self.lines_total = self.lines_read  # exact now
        self.eof = True
        self.stop_count()  # nothing left to count

    async def _chunks(self) -> AsyncIterator[bytes]:
        """Chunks read by a daemon thread, at most ``_AHEAD`` of them ahead of us.

        A dedicated daemon thread rather than the default executor: a read blocked on an
        interactive or idle stdin must not keep the process alive at exit (asyncio.run
        waits for the default executor's threads). The handover is a plain callback
        (``call_soon_threadsafe``), so nothing is left half-scheduled on a closed loop.
        """
        fd = self._fd
        assert fd is not None  # noqa: S101 - open() ran above
        self._fd = None  # the pump thread owns the descriptor from now on
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        room = threading.Semaphore(_AHEAD)  # backpressure: chunks not yet taken
        abandoned = threading.Event()

        def pump() -> None:
            try:
                while True:
                    while not room.acquire(timeout=0.5):
                        if abandoned.is_set():
                            return
                    if abandoned.is_set():
                        return
                    try:
                        item: bytes | OSError = os.read(fd, CHUNK)
                    except OSError as exc:
                        item = exc
                    try:
                        loop.call_soon_threadsafe(queue.put_nowait, item)
                    except RuntimeError:  # the event loop is closed: nobody listens
                        return
                    if not item or isinstance(item, OSError):
                        return
            finally:
                os.close(fd)

        threading.Thread(target=pump, name="crawler-input", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                room.release()
                if isinstance(item, OSError):
                    name = "standard input" if self._path is None else repr(self._path)
                    raise UsageError(f"error reading input {name}: {item.strerror}")
                if not item:
                    return
                yield item
        finally:
            abandoned.set()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# A block of whole lines holds a line that is blank, indented or a comment (besides its
# first line, checked apart): only then are its lines looked at one by one.
_UNUSUAL: Final = re.compile(rb"\n[\s#]")
_NOT_URL_START: Final = frozenset(b" \t\n\r\x0b\x0c#")


def _count_block(block: bytes) -> int:
    """URL lines (as batches() yields them) in ``block``, whole lines each ending in \\n."""
    if not block:
        return 0
    if block[0] not in _NOT_URL_START and _UNUSUAL.search(block) is None:
        return block.count(b"\n")
    lines = block.split(b"\n")
    lines.pop()
    return sum(1 for line in lines if (s := line.strip()) and s[0] != _HASH)


def count_url_lines(fd: int, stop: threading.Event | None = None) -> int | None:
    """The URL lines of the regular file ``fd`` (non-blank, not comments), read with
    pread from its start; None if ``stop`` is set first."""
    total = 0
    offset = 0
    carry = b""  # the unfinished last line: only its first non-blank byte matters
    while stop is None or not stop.is_set():
        chunk = os.pread(fd, CHUNK, offset)
        if not chunk:
            if carry:
                total += _count_block(carry + b"\n")
            return total
        if not offset and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
            offset = len(_BOM)
        offset += len(chunk)
        data = carry + chunk if carry else chunk
        cut = data.rfind(b"\n") + 1
        total += _count_block(data[:cut])
        carry = data[cut:]
        if len(carry) > CHUNK:  # an absurdly long line: one line, whatever its length
            head = carry.lstrip()
            carry = head[:1] or b" "
    return None


def _clean(parts: list[bytes], max_line: int) -> list[str]:
    """Stripped lines, without blank ones and comments, each cut to ``max_line`` bytes."""
    stripped = [raw.strip() for raw in parts]
    if max(map(len, stripped), default=0) > max_line:  # rare: a pathological input
        stripped = [line[:max_line] for line in stripped]
    return [line.decode("utf-8", "replace") for line in stripped if line and line[0] != _HASH]


class Uncounted:
    """For a source whose size is known only once it is read (seeds, generated URLs, a
    Python iterable): the ``Source`` counting hooks, doing nothing."""

    def start_count(self) -> None:
        pass

    async def counted(self) -> None:
        pass

    def stop_count(self) -> None:
        pass


class SeedSource(Uncounted):
    """Crawl seeds: URLs given as arguments, then the lines of seed files (or stdin)."""

    def __init__(self, urls: list[str], files: list[LineSource]) -> None:
        self._urls = urls
        self._files = files
        self.lines_total: int | None = None  # seeds: not counted
        self.lines_read = 0
        self.eof = False

    def open(self) -> None:
        for source in self._files:
            source.open()

    def identity(self) -> dict[str, Any]:
        return {"seeds": self._urls, "seed_files": [f.identity() for f in self._files]}

    async def batches(self) -> AsyncIterator[list[str]]:
        if self._urls:
            self.lines_read += len(self._urls)
            yield list(self._urls)
        for source in self._files:
            async for lines in source.batches():
                self.lines_read += len(lines)
                yield lines
        self.eof = True

    def stop_count(self) -> None:
        for source in self._files:
            source.stop_count()
