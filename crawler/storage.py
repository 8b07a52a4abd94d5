"""Keeping what was fetched: content-addressed body files (``--save-dir``) and WARC 1.1
archives (``--warc``, with warcio).

Both work off the event loop. A body file is one executor hop (aiofiles' ``wrap``): hash,
write to a temporary name, rename into place, so a reader never sees half a file and equal
bodies are stored once. WARC records are batched and written by one thread of their own
(gzip per record, so any record can be read alone; rotation by size).

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
import os
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final
from urllib.parse import urlsplit

from aiofiles.os import wrap
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawler import __version__
from crawler.fetcher import Exchange

_DROP: Final = frozenset(("content-encoding", "transfer-encoding", "content-length"))
_BATCH_RECORDS: Final = 64
_BATCH_BYTES: Final = 1 << 20
_MAX_PENDING_BYTES: Final = 64 << 20  # unwritten WARC bytes before workers wait


class BodyStore:
    """``DIR/ab/abcdef…``: one file per distinct body, named by its SHA-256."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._dirs: set[str] = set()
        self._seq = itertools.count()
        self._save = wrap(self._save_sync)

    def check(self) -> None:
        """Fail early (a usage error in the CLI) if the directory cannot be used."""
        os.makedirs(self._root, exist_ok=True)
        probe = os.path.join(self._root, f".crawler-probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    async def save(self, body: bytes) -> tuple[str, str]:
        """Store ``body``; returns (path, sha256 hex)."""
        result: tuple[str, str] = await self._save(body)
        return result

    def _save_sync(self, body: bytes) -> tuple[str, str]:
        digest = hashlib.sha256(body).hexdigest()
        folder = os.path.join(self._root, digest[:2])
        path = os.path.join(folder, digest)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}-{next(self._seq)}.tmp"  # equal bodies may race
            with open(tmp, "wb") as fh:
                fh.write(body)
            os.replace(tmp, path)
        return path, digest


def warc_name(path: str, index: int) -> str:
    """``out.warc.gz``, then ``out-00001.warc.gz``, ``out-00002.warc.gz``, …"""
    if index == 0:
        return path
    for ext in (".warc.gz", ".warc"):
        if path.endswith(ext):
            return f"{path[: -len(ext)]}-{index:05d}{ext}"
    return f"{path}-{index:05d}"


class WarcArchive:
    """Request and response records of every stored page, in rotated WARC files."""

    def __init__(self, path: str, max_size: int, *, append: bool = False) -> None:
        self._path = path
        self._max_size = max_size
        self._index = 0
        if append:  # a resumed run starts a new file rather than touch a finished one
            while os.path.exists(warc_name(path, self._index)):
                self._index += 1
        self._file: Any = None
        self._writer: WARCWriter | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="crawler-warc")
        self._batch: list[tuple[str, Exchange, bytes]] = []
        self._batch_bytes = 0
        self._pending: list[tuple[Future[None], int]] = []
        self._pending_bytes = 0
        self.records = 0
        self.files: list[str] = []

    def open(self) -> None:
        """Open the first file now, so a bad path is a usage error before the run."""
        self._executor.submit(self._open_file).result()

    async def add(self, url: str, exchange: Exchange, body: bytes) -> None:
        self._batch.append((url, exchange, body))
        self._batch_bytes += len(body)
        if len(self._batch) >= _BATCH_RECORDS or self._batch_bytes >= _BATCH_BYTES:
            self._submit()
            while self._pending_bytes > _MAX_PENDING_BYTES:
                await self._wait_oldest()

    def _submit(self) -> None:
        batch, self._batch = self._batch, []
        size, self._batch_bytes = self._batch_bytes, 0
        if batch:
            self._pending.append((self._executor.submit(self._write, batch), size))
            self._pending_bytes += size

    async def _wait_oldest(self) -> None:
        fut, size = self._pending.pop(0)
        try:
            await asyncio.wrap_future(fut)
        finally:
            self._pending_bytes -= size

    async def aclose(self) -> None:
        """Write what is left and close the file (idempotent)."""
        self._submit()
        try:
            while self._pending:
                await self._wait_oldest()
        finally:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_file)
            self._executor.shutdown(wait=True)

    # -- the WARC thread -----------------------------------------------------------------
    def _open_file(self) -> None:
        name = warc_name(self._path, self._index)
        self._file = open(name, "wb")  # noqa: SIM115 - closed in _close_file
        self.files.append(name)
        writer = self._writer = WARCWriter(self._file, gzip=True, warc_version="1.1")
        info = writer.create_warcinfo_record(
            os.path.basename(name),
            {
                "software": f"crawler/{__version__} (warcio)",
                "format": "WARC File Format 1.1",
                "hostname": socket.gethostname(),
            },
        )
        writer.write_record(info)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None

    def _write(self, batch: list[tuple[str, Exchange, bytes]]) -> None:
        if self._writer is None:
            self._open_file()
        for url, exchange, body in batch:
            self._write_pair(url, exchange, body)
            if self._file.tell() >= self._max_size:
                self._close_file()
                self._index += 1
                self._open_file()

    def _write_pair(self, url: str, exchange: Exchange, body: bytes) -> None:
        writer = self._writer
        assert writer is not None  # noqa: S101
        headers = []
        for name, value in exchange.response_headers:
            lower = name.lower()
            if lower in _DROP:
                if lower != "content-length":
                    headers.append((f"X-Crawler-Original-{name}", value))
                continue
            headers.append((name, value))
        headers.append(("Content-Length", str(len(body))))
        status = f"{exchange.status} {exchange.reason}".strip()
        response = writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=StatusAndHeaders(status, headers, protocol=exchange.version),
        )
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        request = writer.create_warc_record(
            url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            http_headers=StatusAndHeaders(
                f"{exchange.method} {target} {exchange.version}",
                exchange.request_headers,
                is_http_request=True,
            ),
            warc_headers_dict={
                "WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID")
            },
        )
        writer.write_record(response)
        writer.write_record(request)
        self.records += 1
