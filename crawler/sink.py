"""The one writer of the output (stdout or ``-o PATH``): records batched, never torn.

Workers append encoded records to an in-memory batch (no syscall, no await unless the
writer has fallen far behind). ``run()`` writes a batch when it reaches ``batch_records``
or ``batch_bytes``, or ``flush_interval`` seconds after its first record, so a slow run
still shows output promptly. Writes happen in a worker thread (aiofiles) so a slow
consumer of a pipe never blocks the event loop; while one batch is written the next one
fills. Each write is a whole number of lines, so a record is never torn or interleaved.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiofiles

from crawler.config import SinkConfig
from crawler.records import Record, encode


class OutputClosed(Exception):  # noqa: N818 - a state, not a failure
    """The reader of standard output went away (``crawler fetch … | head -1``)."""


class Sink:
    def __init__(self, config: SinkConfig) -> None:
        self._config = config
        self._buf = bytearray()
        self._count = 0
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._file: Any = None
        self._high_water = config.batch_bytes * 8
        self.broken = False  # standard output was closed by its reader
        self.records = 0  # records handed to the sink
        self.written = 0  # records written out
        self.bytes_written = 0

    async def open(self) -> None:
        path = self._config.output
        if path is None:
            self._file = await aiofiles.open(1, "wb", buffering=0, closefd=False)
        else:
            self._file = await aiofiles.open(path, "wb", buffering=0)

    def put_nowait(self, record: Record) -> None:
        """Queue one record without waiting (the record is in the batch on return)."""
        self._buf += encode(record)
        self._count += 1
        self.records += 1
        if self._count >= self._config.batch_records or len(self._buf) >= self._config.batch_bytes:
            self._kick.set()

    @property
    def behind(self) -> bool:
        """True when the writer has fallen far behind and producers should wait."""
        return len(self._buf) >= self._high_water and not self.broken

    async def backpressure(self) -> None:
        """Wait while the writer is far behind; returns at once otherwise."""
        if len(self._buf) >= self._high_water and not self.broken:
            self._drained.clear()
            await self._drained.wait()

    async def put(self, record: Record) -> None:
        self.put_nowait(record)
        await self.backpressure()

    async def run(self) -> None:
        """Write batches until ``close()``; then write what is left and return."""
        interval = self._config.flush_interval
        while True:
            if not self._buf and not self._closing:
                await self._kick.wait()
            if not self._closing and self._count < self._config.batch_records:
                # Give a batch up to ``interval`` to fill; a full batch kicks us early.
                try:
                    async with asyncio.timeout(interval):
                        await self._kick.wait()
                except TimeoutError:
                    pass
            self._kick.clear()
            await self._write_batch()
            if self._closing and not self._buf:
                return

    def close(self) -> None:
        """No more records: ``run()`` writes the rest and returns."""
        self._closing = True
        self._kick.set()

    async def _write_batch(self) -> None:
        if not self._buf:
            return
        # A fresh buffer per batch (one allocation per batch, not per record): the old
        # one may still be referenced by the writer thread's memoryview.
        buf, self._buf = self._buf, bytearray()
        count, self._count = self._count, 0
        try:
            if not self.broken:
                await self._write_all(buf)
                self.written += count
                self.bytes_written += len(buf)
        finally:
            if len(self._buf) < self._high_water:
                self._drained.set()

    async def _write_all(self, data: bytearray) -> None:
        try:
            written = await self._file.write(data)
            while written < len(data):  # a short write: rare, but a pipe may do it
                written += await self._file.write(data[written:])
        except BrokenPipeError:
            self.broken = True
            self._drained.set()
            # Point fd 1 at /dev/null so nothing at exit tries the dead pipe again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
            raise OutputClosed from None

    async def flush(self) -> None:
        """Write everything queued now (used at shutdown, shielded by the caller)."""
        while self._buf and not self.broken:
            await self._write_batch()

    async def aclose(self) -> None:
        """Idempotent: flush what is left and close the file."""
        if self._file is None:
            return
        try:
            await self.flush()
        except OutputClosed:
            pass
        finally:
            file, self._file = self._file, None
            await file.close()
