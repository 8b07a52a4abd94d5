"""Keeping what was fetched: content-addressed body files (``--save-dir``) and WARC 1.1
archives (``--warc``, with warcio).

Both are written in batches by a child process of their own. Not a thread: a thread doing
Python work (warcio builds each record in Python, ``open()`` builds file objects) takes the
GIL from the event loop every time the loop releases it for a syscall, and measured, that
cost more than half the bench's throughput (benchmarks/RESULTS.md). The event loop only
hashes a body (for its record) and appends it to a batch; a batch travels to the child as
one pickled message.

- Body files: ``DIR/ab/<sha256>``, written to a temporary name and renamed into place (a
  reader never sees half a file); equal bodies are stored once. The sink waits for the
  bodies before it writes the records that name them.
- WARC: a warcinfo record per file, then a response and a request record per page, each
  record its own gzip member (any record can be read alone); files rotate past
  ``--warc-max-size``: ``out.warc.gz``, ``out-00001.warc.gz``, …

Durability (``--state``). A checkpoint commits URLs only after ``sync()``: every batch
queued so far is written by the child (unbuffered, so it survives a SIGKILL of either
process) and on disk (the WARC file and its directory fsynced, the body files by one
``syncfs``), so a power cut cannot lose what a commit names either. Once per checkpoint,
never per URL. A writer that failed or died stays failed: every later ``flush``/``sync``
raises, so nothing is committed after a lost batch. A resumed run first cuts a torn last
record (a SIGKILL mid-write) off the previous run's last WARC file, so every file reads
to its end; its whole records stay, and the pages after the last checkpoint are written
again (they can appear twice).

Children die with the parent (``crawler.lifeline``): a SIGKILLed run leaves no writer
behind, and with the writers gone multiprocessing's resource tracker sees its pipe close
and exits too.

WARC and decoded bodies: the fetcher hands us the body after chunked decoding, and after
gzip/deflate decoding when the response has exactly one Content-Encoding field naming one of
those (``crawler.response.DECODED``). The response record carries that body with headers that
say so: ``Transfer-Encoding`` and the decoded ``Content-Encoding`` are renamed
``X-Crawler-Original-…`` and ``Content-Length`` is the body's length, so replay tools and
``warcio check`` read a consistent record. Whatever was not decoded (``br``, ``gzip, gzip``,
two Content-Encoding fields) stays in the headers, as the body still has it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import io
import itertools
import mmap
import multiprocessing
import os
import socket
import stat
import sys
import threading
import zlib
from collections import deque
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from crawler import __version__
from crawler.lifeline import die_with_parent
from crawler.links import ignore_sigint

if TYPE_CHECKING:  # the child process imports this module: keep aiohttp out of it
    from crawler.response import Exchange

_BATCH_ITEMS: Final = 64
_BATCH_BYTES: Final = 1 << 20
_MAX_PENDING_BYTES: Final = 64 << 20  # bytes sent to the child and not written yet
_GZIP_LEVEL: Final = 6
_GZIP_WBITS: Final = 31  # a gzip member (header and trailer), not a raw deflate stream
_HASH_INLINE_BYTES: Final = 256 * 1024
# What the fetcher decodes (crawler.response.DECODED; not imported: this module runs in the
# child, which must not load aiohttp).
_DECODED_CODINGS: Final = frozenset(("gzip", "deflate"))
_GZIP_MAGIC: Final = b"\x1f\x8b\x08"
_SCAN_CHUNK: Final = 1 << 20


class _Offloaded:
    """Batches of items handed to a writer object living in a child process.

    ``_queue`` never waits; ``backpressure`` waits while too many bytes are in flight;
    ``flush`` returns once everything queued so far is written; ``sync`` once it is on
    disk. Batches are written in the order they were added (one worker). The first
    failure (a write that raised, the child gone) sticks: every later call raises it."""

    def __init__(self, kind: str, *args: Any) -> None:
        self._kind = kind
        # PR_SET_PDEATHSIG is tied to the thread that starts the child: ask for it only
        # when that is the main thread (the child is started by the first submit, in
        # start(), on the thread that made us), which lives as long as the process.
        main = threading.current_thread() is threading.main_thread()
        self._pool = ProcessPoolExecutor(
            1,
            # spawn, not fork: forking a process that runs threads (state, input) is unsafe
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(os.getpid(), main, kind, args),
        )
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[Future[Any], int]] = deque()
        self._pending_bytes = 0
        self._closed = False
        self._failed: OSError | None = None

    def start(self) -> None:
        """Start the child and let it open its files: errors surface here, before the run
        (as OSError, also when the child could not start at all)."""
        try:
            self._pool.submit(_child_call, "start").result()
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            raise self._fail(exc) from None

    def _queue(self, item: Any, size: int) -> None:
        self._batch.append(item)
        self._batch_bytes += size
        if len(self._batch) >= _BATCH_ITEMS or self._batch_bytes >= _BATCH_BYTES:
            self._submit()

    @property
    def behind(self) -> bool:
        return self._pending_bytes > _MAX_PENDING_BYTES

    async def backpressure(self) -> None:
        while self._pending_bytes > _MAX_PENDING_BYTES:
            await self._wait_oldest()

    async def flush(self) -> None:
        self._submit()
        while self._pending:
            await self._wait_oldest()
        if self._failed is not None:
            raise self._failed

    async def sync(self) -> None:
        """Everything queued so far written and on disk: a checkpoint may then commit it."""
        await self.flush()
        await self._call("sync")

    async def aclose(self) -> None:
        """Write what is left, close the files (idempotent)."""
        if self._closed:
            return
        try:
            # After a failure (already raised to whoever met it first, and reported from
            # there) there is nothing more to write: close without raising it again.
            if self._failed is None:
                await self.flush()
                self._closed_with(await self._call("close"))
        finally:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=self._failed is not None)

    def _closed_with(self, report: Any) -> None:
        """The writer's final report (subclasses keep what they need of it)."""

    async def _call(self, method: str) -> Any:
        try:
            fut = self._pool.submit(_child_call, method)
            return await asyncio.shield(asyncio.wrap_future(fut))
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            raise self._fail(exc) from None

    def _fail(self, exc: BaseException) -> OSError:
        """Remember the writer's first failure as an OSError (the engine reports those as
        one line) and return it; later calls raise the same."""
        if self._failed is None:
            if isinstance(exc, BrokenExecutor):
                self._failed = OSError(f"the {self._kind} writer process died")
            elif isinstance(exc, OSError):
                self._failed = exc
            else:
                self._failed = OSError(f"the {self._kind} writer failed: {exc!r}")
        return self._failed

    def _submit(self) -> None:
        if self._failed is not None:
            raise self._failed
        batch, self._batch = self._batch, []
        size, self._batch_bytes = self._batch_bytes, 0
        if batch:
            try:
                fut = self._pool.submit(_child_call, "write", batch)
            except (BrokenExecutor, RuntimeError) as exc:
                raise self._fail(exc) from None
            self._pending.append((fut, size))
            self._pending_bytes += size

    async def _wait_oldest(self) -> None:
        fut, size = self._pending[0]
        try:
            # Shielded: cancelling the wrapper would cancel a batch not yet handed to
            # the child, and that batch would be lost without a trace. A cancelled
            # waiter leaves the batch pending, so the next flush still waits for it.
            await asyncio.shield(asyncio.wrap_future(fut))
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            self._forget(fut, size)
            raise self._fail(exc) from None
        self._forget(fut, size)

    def _forget(self, fut: Future[Any], size: int) -> None:
        if self._pending and self._pending[0][0] is fut:
            self._pending.popleft()
            self._pending_bytes -= size


# -- the child process ---------------------------------------------------------------------
_writer: Any = None


def _child_init(parent: int, pdeathsig: bool, kind: str, args: tuple[Any, ...]) -> None:
    global _writer
    die_with_parent(parent, pdeathsig=pdeathsig)
    ignore_sigint()
    _writer = _BodyWriter(*args) if kind == "bodies" else _WarcWriter(*args)


def _child_call(method: str, *args: Any) -> Any:
    return getattr(_writer, method)(*args)


class _BodyWriter:
    def __init__(self, root: str) -> None:
        self._root = root
        self._dirs: set[str] = set()
        self._seq = itertools.count()
        self._dirty = False  # files written since the last sync()
        self.written = 0

    def start(self) -> None:
        if os.path.exists(self._root) and not os.path.isdir(self._root):
            # makedirs would say "File exists", which is true but not the problem.
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", self._root)
        os.makedirs(self._root, exist_ok=True)
        probe = os.path.join(self._root, f".crawler-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def write(self, batch: list[tuple[str, bytes]]) -> None:
        for digest, body in batch:
            folder = os.path.join(self._root, digest[:2])
            path = os.path.join(folder, digest)
            try:
                if os.stat(path).st_size == len(body):
                    continue  # content-addressed: the same body is already there
            except FileNotFoundError:
                pass
            # (A file of another size is what a power cut can leave of a renamed file
            # whose data never reached the disk: written again.)
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            tmp = f"{path}.{os.getpid()}-{next(self._seq)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:  # disk full: say which file (a write names none)
                raise _named(exc, tmp) from None
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._dirty = True
            self.written += 1

    def sync(self) -> None:
        """The files (and their directory entries) written since the last sync, on disk:
        one syncfs() for all of them rather than an fsync per file and per directory."""
        if self._dirty:
            _sync_filesystem(self._root)
            self._dirty = False

    def close(self) -> int:
        return self.written


def _sync_filesystem(path: str) -> None:
    """syncfs(2) on the filesystem holding ``path`` (Linux); sync(2) elsewhere."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)  # our own process's libc
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)
    else:
        os.sync()


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` naming the file it is about (the parent reports it as one line)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, path)


def _regular(path: str) -> bool:
    """A regular file, or nothing yet: not a device or a pipe (rather than a finished
    file, a resumed run would "start a new file" beside /dev/null)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True


def _fsync_dir(path: str) -> None:
    """A new file's directory entry on disk (fsync on the directory)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def warc_name(path: str, index: int) -> str:
    """``out.warc.gz``, then ``out-00001.warc.gz``, ``out-00002.warc.gz``, …"""
    if index == 0:
        return path
    for ext in (".warc.gz", ".warc"):
        if path.endswith(ext):
            return f"{path[: -len(ext)]}-{index:05d}{ext}"
    return f"{path}-{index:05d}"


def _repair_tail(path: str) -> int:
    """Cut a torn last record (a run killed mid-write) off a WARC file of ours; returns
    its size after. A file that does not start with our warcinfo is left alone.

    Each record is its own gzip member, so the file is whole up to the end of its last
    complete member. That one is found from the end: the last offset holding a gzip
    header from which one member inflates completely (CRC and length checked by zlib).
    Only the tail is read, never the whole file."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if not _starts_with_our_warcinfo(data):
                return size
            end = _last_member_end(data, size)
        if end < size:
            fh.truncate(end)
            os.fsync(fh.fileno())
    return end


def _starts_with_our_warcinfo(data: mmap.mmap) -> bool:
    try:
        head = zlib.decompressobj(_GZIP_WBITS).decompress(data[:65536], 4096)
    except zlib.error:
        return False
    return head.startswith(b"WARC/1.1\r\nWARC-Type: warcinfo\r\n") and b"software: crawler/" in head


def _last_member_end(data: mmap.mmap, size: int) -> int:
    search_end = size
    while (start := data.rfind(_GZIP_MAGIC, 0, search_end)) >= 0:
        end = _member_end(data, start, size)
        if end is not None:
            return end
        search_end = start + len(_GZIP_MAGIC) - 1  # a header starting before ``start``
    return 0


def _member_end(data: mmap.mmap, start: int, size: int) -> int | None:
    """Where the gzip member at ``start`` ends, or None if none inflates whole from there."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    pos, pending = start, b""
    try:
        while not inflater.eof:
            if not pending:
                if pos >= size:
                    return None  # the data ends inside the member: torn
                pending = data[pos : pos + _SCAN_CHUNK]
                pos += len(pending)
            inflater.decompress(pending, _SCAN_CHUNK)  # output bounded: memory stays flat
            pending = inflater.unconsumed_tail
    except zlib.error:
        return None
    return pos - len(pending) - len(inflater.unused_data)


# (url, method, request headers, HTTP version, status, reason, response headers, body)
WarcItem = tuple[str, str, list[tuple[str, str]], str, int, str, list[tuple[str, str]], bytes]


class _WarcWriter:
    def __init__(self, path: str, max_size: int, append: bool) -> None:
        from warcio.warcwriter import WARCWriter  # only the child needs warcio

        self._path = path
        self._max_size = max_size
        self._append = append
        self._index = 0
        self._fd = -1
        self._size = 0
        self._new_file = False  # a file created since the last sync (its directory entry)
        self._device = False  # /dev/null, /dev/stdout, a FIFO: no fsync, no rotation
        # warcio builds each record (headers, digests) into this buffer; we gzip it as its
        # own member at level 6 (warcio's own wrapper uses 9: slower, barely smaller).
        self._raw = io.BytesIO()
        self._builder = WARCWriter(self._raw, gzip=False, warc_version="1.1")
        self.records = 0
        self.files: list[str] = []

    def start(self) -> None:
        if self._append and _regular(self._path):  # a resumed run starts a new file
            while os.path.exists(warc_name(self._path, self._index)):
                self._index += 1
            if self._index and _repair_tail(warc_name(self._path, self._index - 1)) == 0:
                self._index -= 1  # the killed run's file held no whole record: reuse it
        self._open_file()

    def write(self, batch: list[WarcItem]) -> None:
        if self._fd < 0:
            self._open_file()
        out = bytearray()
        for item in batch:
            out += self._pair(*item)
            if self._size + len(out) >= self._max_size and not self._device:
                self._write(out)
                out.clear()
                self._close_file()
                self._index += 1
                self._open_file()
        if out:
            self._write(out)

    def sync(self) -> None:
        """What is written so far, on disk (once per checkpoint)."""
        if self._fd >= 0 and not self._device:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise _named(exc, warc_name(self._path, self._index)) from None
            if self._new_file:
                _fsync_dir(warc_name(self._path, self._index))
                self._new_file = False

    def close(self) -> tuple[int, list[str]]:
        self._close_file()
        return self.records, self.files

    def _write(self, data: bytes | bytearray) -> None:
        """Straight to the OS (no buffer in this process): once written, a batch survives
        the death of either process; only a power cut needs the fsync of sync()."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # disk full: say which file (a write names none)
            raise _named(exc, warc_name(self._path, self._index)) from None
        self._size += len(data)

    def _open_file(self) -> None:
        name = warc_name(self._path, self._index)
        self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._device = not stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._new_file = True
        self.files.append(name)
        self._size = 0
        info = self._builder.create_warcinfo_record(
            os.path.basename(name),
            {
                "software": f"crawler/{__version__} (warcio)",
                "format": "WARC File Format 1.1",
                "hostname": socket.gethostname(),
            },
        )
        self._write(self._encode(info))

    def _close_file(self) -> None:
        """A finished file goes to disk whole before the next one starts (a checkpoint's
        sync() covers only the current file)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if not self._device:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self._new_file and not self._device:
                _fsync_dir(warc_name(self._path, self._index))
                self._new_file = False

    def _encode(self, record: Any) -> bytes:
        raw = self._raw
        raw.seek(0)
        raw.truncate()
        self._builder.write_record(record)
        return zlib.compress(raw.getbuffer(), _GZIP_LEVEL, _GZIP_WBITS)

    def _pair(
        self,
        url: str,
        method: str,
        request_headers: list[tuple[str, str]],
        version: str,
        status: int,
        reason: str,
        response_headers: list[tuple[str, str]],
        body: bytes,
    ) -> bytes:
        from warcio.statusandheaders import StatusAndHeaders

        parts = urlsplit(url)
        if "@" in parts.netloc:  # a URL's user:password stays out of a shared archive
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
            url = parts.geturl()
        headers = self._decoded_headers(response_headers)
        headers.append(("Content-Length", str(len(body))))
        builder = self._builder
        response = builder.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=StatusAndHeaders(f"{status} {reason}".strip(), headers, protocol=version),
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = builder.create_warc_record(
            url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            http_headers=StatusAndHeaders(
                f"{method} {target} {version}", request_headers, is_http_request=True
            ),
            warc_headers_dict={
                "WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID")
            },
        )
        self.records += 1
        return self._encode(response) + self._encode(request)

    def _decoded_headers(self, response_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The response headers for the body as the fetcher handed it to us: the coding it
        decoded (and Transfer-Encoding) renamed ``X-Crawler-Original-…``, every other
        Content-Encoding kept (the body still has it), Content-Length left to the caller."""
        codings = [
            i for i, (n, _) in enumerate(response_headers) if n.lower() == "content-encoding"
        ]
        decoded = -1
        if len(codings) == 1:
            # The fetcher decodes a body only when it has exactly one Content-Encoding
            # field naming one coding it knows (Fetcher._final_response); anything else
            # (stacked codings, two fields, br, …) is kept as sent, and so is its header.
            value = response_headers[codings[0]][1]
            if value.isascii() and value.strip().lower() in _DECODED_CODINGS:
                decoded = codings[0]
        headers = []
        for i, (name, value) in enumerate(response_headers):
            lower = name.lower()
            if lower == "content-length":
                continue
            if lower == "transfer-encoding" or i == decoded:
                headers.append((f"X-Crawler-Original-{name}", value))
            else:
                headers.append((name, value))
        return headers


# -- the event loop's side -------------------------------------------------------------------
def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class BodyStore(_Offloaded):
    """``put`` hashes a body and returns (path, sha256) at once; the file is written by
    the child. The sink calls ``flush`` before writing records that name body files.
    ``start()`` raises OSError if the directory cannot be used."""

    def __init__(self, root: str) -> None:
        super().__init__("bodies", root)
        self._root = root

    async def put(self, body: bytes) -> tuple[str, str]:
        """Queue ``body``; returns (path, sha256 hex) at once (a big body is hashed in a
        thread: hashlib lets go of the GIL, and the loop goes on)."""
        if len(body) > _HASH_INLINE_BYTES:
            digest = await asyncio.get_running_loop().run_in_executor(None, _sha256, body)
        else:
            digest = _sha256(body)
        self._queue((digest, body), len(body))
        return os.path.join(self._root, digest[:2], digest), digest


class WarcArchive(_Offloaded):
    """Request and response records of every stored page, in rotated WARC files.
    ``start()`` opens the first file: a bad path raises OSError before the run."""

    def __init__(self, path: str, max_size: int, *, append: bool = False) -> None:
        super().__init__("warc", path, max_size, append)
        self.records = 0  # pages handed to the archive
        self.files: list[str] = []

    def add(self, url: str, exchange: Exchange, body: bytes) -> None:
        item: WarcItem = (
            url,
            exchange.method,
            exchange.request_headers,
            exchange.version,
            exchange.status,
            exchange.reason,
            exchange.response_headers,
            body,
        )
        self._queue(item, len(body) + 512)
        self.records += 1

    def _closed_with(self, report: Any) -> None:
        self.files = report[1]
