"""Review of the issue-12 shutdown, storage and state work: the gaps found, one test each.

Real pipes, real subprocesses of the CLI and a server on 127.0.0.1; states are waited for by
polling with a bound, never by sleeping."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios

import orjson

from crawler.config import SinkConfig
from crawler.records import Record
from crawler.sink import Sink, _Pipe


def _queued(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is ``fd``."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _drain(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def _until(check: object, what: str) -> None:
    for _ in range(2000):  # 20 s at most
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_nothing_is_written_after_a_line_cut_short_by_abandon() -> None:
    """An abandoned pipe may end in one cut-short line (README: "the last line"); a later
    batch written when the reader makes room must not be glued to it."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # one page: the first write is cut at 4096
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        sink = Sink(SinkConfig(output=None, batch_records=10_000, batch_bytes=1 << 20))
        sink._file = _Pipe(w, restore=False)
        pad = "y" * 997  # lines whose length does not divide 4096
        for i in range(40):
            sink.put_nowait(Record(url=f"http://a.test/{i}?{pad}"))
        flushing = asyncio.ensure_future(sink.flush())
        await _until(lambda: _queued(r) >= 4096 and sink._waiting is not None, "a full pipe")
        sink.abandon()
        await flushing
        first = _drain(r)  # the reader comes back and makes room...
        for i in range(40, 45):
            sink.put_nowait(Record(url=f"http://a.test/{i}?{pad}"))
        await sink.flush()  # ...and the next batch goes out
        out = first + _drain(r)
        lines = out.split(b"\n")
        for line in lines[:-1]:
            orjson.loads(line)  # every line but the last is a whole record
        assert sink.written == len(lines) - 1
        assert sink.lost == 45 - sink.written
    finally:
        os.close(r)
        os.close(w)
