"""WARC 1.1 archives of ``--warc`` (with warcio), written by a child process
(crawler.offload): a warcinfo record per file, then a response and a request record per
page, each record its own gzip member (any record can be read alone); files rotate past
``--warc-max-size``: ``out.warc.gz``, ``out-00001.warc.gz``, …

A checkpoint's ``sync`` fsyncs the file and, for a new one, its directory. A resumed run
first cuts a torn last record (a SIGKILL mid-write) off the previous run's last file, so
every file reads to its end; its whole records stay, and the pages after the last
checkpoint are written again (they can appear twice).

Decoded bodies: the fetcher hands us the body after chunked decoding, and after
gzip/deflate decoding when the response has exactly one Content-Encoding field naming one of
those (``crawler.response.DECODED``). The response record carries that body with headers that
say so: ``Transfer-Encoding`` and the decoded ``Content-Encoding`` are renamed
``X-Crawler-Original-…`` and ``Content-Length`` is the body's length, so replay tools and
``warcio check`` read a consistent record. Whatever was not decoded (``br``, ``gzip, gzip``,
two Content-Encoding fields) stays in the headers, as the body still has it.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import socket
import stat
import zlib
from typing import Any, Final
from urllib.parse import urlsplit

from crawler import __version__
from crawler.offload import Offloaded, named
from crawler.paths import a_stream_by_name, not_a_file
from crawler.response import DECODED, Exchange

_GZIP_LEVEL: Final = 6
_GZIP_WBITS: Final = 31  # a gzip member (header and trailer), not a raw deflate stream
_GZIP_MAGIC: Final = b"\x1f\x8b\x08"
_SCAN_CHUNK: Final = 1 << 20

# (url, method, request headers, HTTP version, status, reason, response headers, body)
WarcItem = tuple[str, str, list[tuple[str, str]], str, int, str, list[tuple[str, str]], bytes]


class WarcArchive(Offloaded):
    """Request and response records of every stored page, in rotated WARC files.
    ``start()`` opens the first file: a bad path raises OSError before the run."""

    def __init__(self, path: str, max_size: int, *, append: bool = False) -> None:
        super().__init__("warc", _WarcWriter, path, max_size, append)
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


# -- the child process ---------------------------------------------------------------------
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
        # A resumed run starts a new file; not beside a stream (/dev/null-00001).
        if self._append and not not_a_file(self._path):
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
                raise named(exc, warc_name(self._path, self._index)) from None
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
            raise named(exc, warc_name(self._path, self._index)) from None
        self._size += len(data)

    def _open_file(self) -> None:
        name = warc_name(self._path, self._index)
        # O_NONBLOCK: a FIFO that no process reads is an error now, not a run that
        # blocks for ever (as -o); written blocking, as a file.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
        try:
            self._fd = os.open(name, flags, 0o644)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            raise OSError(exc.errno, "a FIFO that no process reads", name) from None
        os.set_blocking(self._fd, True)
        self._device = a_stream_by_name(name) or not stat.S_ISREG(os.fstat(self._fd).st_mode)
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
            # field naming one coding it knows (crawler.body's BodyReader.read); anything else
            # (stacked codings, two fields, br, …) is kept as sent, and so is its header.
            value = response_headers[codings[0]][1]
            if value.isascii() and value.strip().lower() in DECODED:
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
