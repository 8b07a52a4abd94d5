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

WARC and decoded bodies: aiohttp hands us the body after gzip/deflate/chunked decoding.
The response record therefore carries the decoded body with headers that say so:
``Content-Encoding`` and ``Transfer-Encoding`` are dropped (the originals are kept as
``X-Crawler-Original-Content-Encoding`` / ``-Transfer-Encoding``) and ``Content-Length``
is the decoded length, so replay tools and ``warcio check`` read a consistent record.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import multiprocessing
import os
import socket
import zlib
from collections import deque
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from crawler import __version__
from crawler.links import ignore_sigint

if TYPE_CHECKING:  # the child process imports this module: keep aiohttp out of it
    from crawler.fetcher import Exchange

_BATCH_ITEMS: Final = 64
_BATCH_BYTES: Final = 1 << 20
_MAX_PENDING_BYTES: Final = 64 << 20  # bytes sent to the child and not written yet
_GZIP_LEVEL: Final = 6
_GZIP_WBITS: Final = 31  # a gzip member (header and trailer), not a raw deflate stream
_HASH_INLINE_BYTES: Final = 256 * 1024
_DROP: Final = frozenset(("content-encoding", "transfer-encoding", "content-length"))


class _Offloaded:
    """Batches of items handed to a writer object living in a child process.

    ``_queue`` never waits; ``backpressure`` waits while too many bytes are in flight;
    ``flush`` returns once everything queued so far is written. Batches are written in
    the order they were added (one worker)."""

    def __init__(self, kind: str, *args: Any) -> None:
        self._kind = kind
        self._pool = ProcessPoolExecutor(
            1,
            # spawn, not fork: forking a process that runs threads (state, input) is unsafe
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(kind, args),
        )
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[Future[Any], int]] = deque()
        self._pending_bytes = 0
        self._closed = False

    def start(self) -> None:
        """Start the child and let it open its files: errors surface here, before the run."""
        self._pool.submit(_child_call, "start").result()

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

    async def aclose(self) -> None:
        """Write what is left, close the files (idempotent)."""
        if self._closed:
            return
        try:
            await self.flush()
            fut = self._pool.submit(_child_call, "close")
            try:
                self._closed_with(await asyncio.wrap_future(fut))
            except BrokenExecutor:
                raise OSError(f"the {self._kind} writer process died") from None
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)

    def _closed_with(self, report: Any) -> None:
        """The writer's final report (subclasses keep what they need of it)."""

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        size, self._batch_bytes = self._batch_bytes, 0
        if batch:
            try:
                fut = self._pool.submit(_child_call, "write", batch)
            except BrokenExecutor:
                raise OSError(f"the {self._kind} writer process died") from None
            self._pending.append((fut, size))
            self._pending_bytes += size

    async def _wait_oldest(self) -> None:
        fut, size = self._pending[0]
        try:
            await asyncio.wrap_future(fut)
        except BrokenExecutor:
            raise OSError(f"the {self._kind} writer process died") from None
        finally:
            if self._pending and self._pending[0][0] is fut:
                self._pending.popleft()
                self._pending_bytes -= size


# -- the child process ---------------------------------------------------------------------
_writer: Any = None


def _child_init(kind: str, args: tuple[Any, ...]) -> None:
    global _writer
    ignore_sigint()
    _writer = _BodyWriter(*args) if kind == "bodies" else _WarcWriter(*args)


def _child_call(method: str, *args: Any) -> Any:
    return getattr(_writer, method)(*args)


class _BodyWriter:
    def __init__(self, root: str) -> None:
        self._root = root
        self._dirs: set[str] = set()
        self._seq = itertools.count()
        self.written = 0

    def start(self) -> None:
        os.makedirs(self._root, exist_ok=True)
        probe = os.path.join(self._root, f".crawler-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def write(self, batch: list[tuple[str, bytes]]) -> None:
        for digest, body in batch:
            folder = os.path.join(self._root, digest[:2])
            path = os.path.join(folder, digest)
            if os.path.exists(path):
                continue  # content-addressed: the same body is already there
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            tmp = f"{path}.{os.getpid()}-{next(self._seq)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self.written += 1

    def close(self) -> int:
        return self.written


def warc_name(path: str, index: int) -> str:
    """``out.warc.gz``, then ``out-00001.warc.gz``, ``out-00002.warc.gz``, …"""
    if index == 0:
        return path
    for ext in (".warc.gz", ".warc"):
        if path.endswith(ext):
            return f"{path[: -len(ext)]}-{index:05d}{ext}"
    return f"{path}-{index:05d}"


# (url, method, request headers, HTTP version, status, reason, response headers, body)
WarcItem = tuple[str, str, list[tuple[str, str]], str, int, str, list[tuple[str, str]], bytes]


class _WarcWriter:
    def __init__(self, path: str, max_size: int, append: bool) -> None:
        from warcio.warcwriter import WARCWriter  # only the child needs warcio

        self._path = path
        self._max_size = max_size
        self._index = 0
        if append:  # a resumed run starts a new file rather than touch a finished one
            while os.path.exists(warc_name(path, self._index)):
                self._index += 1
        self._file: Any = None
        self._size = 0
        # warcio builds each record (headers, digests) into this buffer; we gzip it as its
        # own member at level 6 (warcio's own wrapper uses 9: slower, barely smaller).
        self._raw = io.BytesIO()
        self._builder = WARCWriter(self._raw, gzip=False, warc_version="1.1")
        self.records = 0
        self.files: list[str] = []

    def start(self) -> None:
        self._open_file()

    def write(self, batch: list[WarcItem]) -> None:
        if self._file is None:
            self._open_file()
        out = bytearray()
        for item in batch:
            out += self._pair(*item)
            if self._size + len(out) >= self._max_size:
                self._file.write(out)
                out.clear()
                self._close_file()
                self._index += 1
                self._open_file()
        if out:
            self._file.write(out)
            self._size += len(out)

    def close(self) -> tuple[int, list[str]]:
        self._close_file()
        return self.records, self.files

    def _open_file(self) -> None:
        name = warc_name(self._path, self._index)
        self._file = open(name, "wb")  # noqa: SIM115 - closed in _close_file
        self.files.append(name)
        info = self._builder.create_warcinfo_record(
            os.path.basename(name),
            {
                "software": f"crawler/{__version__} (warcio)",
                "format": "WARC File Format 1.1",
                "hostname": socket.gethostname(),
            },
        )
        head = self._encode(info)
        self._file.write(head)
        self._size = len(head)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

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

        headers = []
        for name, value in response_headers:
            lower = name.lower()
            if lower in _DROP:
                if lower != "content-length":
                    headers.append((f"X-Crawler-Original-{name}", value))
                continue
            headers.append((name, value))
        headers.append(("Content-Length", str(len(body))))
        builder = self._builder
        response = builder.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=StatusAndHeaders(f"{status} {reason}".strip(), headers, protocol=version),
        )
        parts = urlsplit(url)
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
