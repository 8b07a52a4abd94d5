"""The one writer of the output (stdout or ``-o PATH``): records batched, never torn.

Workers append encoded records to an in-memory batch (no syscall, no await unless the
writer has fallen far behind). ``run()`` writes a batch when it reaches ``batch_records``
or ``batch_bytes``, or ``flush_interval`` seconds after its first record, so a slow run
still shows output promptly. Writes happen in a worker thread (aiofiles) so a slow
consumer of a pipe never blocks the event loop; while one batch is written the next one
fills. Each write is a whole number of lines, so a record is never torn or interleaved.

Standard output that is a pipe or socket of its own is written without blocking, from the
event loop: a reader that stops reading then holds up the run, but can be given up on
(``abandon()``, at shutdown), and exactly the records whose whole line went out count as
written (with --state only those are marked done; the rest are ``lost``, redone on resume).
A thread blocked in write() could be neither interrupted nor accounted for. A pipe shared
with stderr (``2>&1``) stays blocking (stderr's writers expect it), so it is written from
the loop too, ``select.PIPE_BUF`` bytes at a time and only when the loop sees room: such a
write cannot block.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
from typing import Any

import aiofiles

from crawler.config import SinkConfig
from crawler.errors import UsageError
from crawler.linkqueue import Link
from crawler.pipes import Pipe, nonblocking_stdout, resolve
from crawler.records import Record, encode
from crawler.recordsink import SinkHooks
from crawler.stores import Ledger, MemoryLedger


class OutputClosed(Exception):  # noqa: N818 - a state, not a failure
    """The reader of standard output went away (``crawler fetch … | head -1``)."""


class Sink:
    def __init__(
        self,
        config: SinkConfig,
        ledger: Ledger | None = None,
        hooks: SinkHooks | None = None,
    ) -> None:
        self._config = config
        # Where written records become durable (--state: the SQLite file) at checkpoints.
        self._ledger = ledger = ledger if ledger is not None else MemoryLedger()
        # Marks are kept for a ledger that makes them durable (--state), not otherwise.
        self._durable = ledger.durable
        self._buf = bytearray()
        # One fingerprint per record in _buf (None: nothing to mark done), so a batch cut
        # short knows whose lines went out; and those written since the last checkpoint.
        self._fps: list[int | None] = []
        self._written_fps: list[int | None] = []
        # Crawl mode: links found by each page in _buf (one entry per record, so a batch
        # cut short keeps only its written pages' links) / by the pages written since the
        # last checkpoint; committed with their pages (see the Ledger in stores.py).
        self._links: list[list[Link] | None] = []
        self._written_links: list[Link] = []
        self._offset = 0  # bytes of the output file written so far
        self._last_checkpoint = 0.0
        self._count = 0
        self._writing: asyncio.Future[None] | None = None
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._abandoned = False  # see abandon()
        self._torn = False  # the output ends in a cut-short line: nothing may follow it
        self._waiting: asyncio.Future[bool] | None = None  # for a full pipe to drain
        self._file: Any = None
        # The output is a stream (stdout, or -o naming a device or FIFO such as
        # /dev/stdout): nothing to fsync at a checkpoint, nothing to cut back on resume.
        self._stream = config.output is None
        self._high_water = config.batch_bytes * 8
        self._batch_records = config.batch_records
        self._batch_bytes = config.batch_bytes
        # Awaited before each batch is written (--save-dir: the bodies its records name),
        # and before a checkpoint commits (--save-dir/--warc: what its records name, on
        # disk; raising keeps the checkpoint from committing).
        hooks = hooks or SinkHooks()
        self._before_write = hooks.before_write
        self._before_commit = hooks.before_commit
        self._resumed = ledger.resumed
        self.broken = False  # standard output was closed by its reader
        self.records = 0  # records handed to the sink
        self.written = 0  # records written out
        self.bytes_written = 0

    async def open(self) -> None:
        self._last_checkpoint = asyncio.get_running_loop().time()
        path = self._config.output
        if path is None:
            self._file = nonblocking_stdout() or await aiofiles.open(
                1, "wb", buffering=0, closefd=False
            )
            return
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = 0
        if stat.S_ISFIFO(mode):
            # A pipe of our own (``-o /dev/stdout`` opens the pipe anew): written like a
            # standard output pipe, so a reader that stops can be given up on at shutdown.
            # No reader at all is an error now, not a run that blocks before it starts.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                raise UsageError(
                    f"cannot write output {path!r}: a FIFO that no process reads"
                ) from None
            self._file = Pipe(fd, restore=False, owned=True)
            self._stream = True
            return
        stream = mode != 0 and not stat.S_ISREG(mode)  # /dev/null, a terminal, a device
        if not self._resumed or stream:
            self._file = await aiofiles.open(path, "wb", buffering=0)
            self._stream = stream  # no fsync, no seek, nothing to cut back on resume
            return
        # Resuming into the same file: cut it back to what the state says is committed
        # (a torn last line or records written after the last checkpoint go).
        committed = self._ledger.committed_offset
        try:
            self._file = await aiofiles.open(path, "r+b", buffering=0)
        except FileNotFoundError:
            if committed:
                raise UsageError(
                    f"cannot resume: output {path!r} is gone but --state says "
                    f"{committed} bytes of it were committed"
                ) from None
            self._file = await aiofiles.open(path, "wb", buffering=0)
            return
        size = await self._file.seek(0, os.SEEK_END)
        if size < committed:
            await self._file.close()
            raise UsageError(
                f"cannot resume: output {path!r} has {size} bytes but --state says "
                f"{committed} were committed (was it changed?)"
            )
        await self._file.truncate(committed)
        self._offset = await self._file.seek(committed)

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        """Queue one record without waiting (the record is in the batch on return).

        ``fp`` is the URL's fingerprint: a durable Ledger (--state) marks it done at the
        first checkpoint after the record is written. Records without one (cancelled URLs)
        leave their URL to be fetched again on resume. ``links`` (crawl mode) are the
        links the page discovered: they become durable with the record.
        """
        self._buf += encode(record)
        if self._durable:
            self._fps.append(fp)
            self._links.append(links)
        self._count = count = self._count + 1
        self.records += 1
        # Wake the writer for the first record of a batch (it starts the batch's timer)
        # and again when the batch is full.
        if count == 1 or count >= self._batch_records or len(self._buf) >= self._batch_bytes:
            self._kick.set()

    def put_encoded(self, data: bytes | memoryview, fps: list[int]) -> None:
        """Queue records encoded elsewhere (a worker of --workers N): ``data`` holds
        ``len(fps)`` whole lines, ``fps`` their fingerprints (0: nothing to mark done)."""
        count = len(fps)
        if not count:
            return
        self._buf += data
        if self._durable:
            self._fps += [fp or None for fp in fps]
            self._links += [None] * count
        self._count += count
        self.records += count
        if (
            self._count == count
            or self._count >= self._batch_records
            or len(self._buf) >= self._batch_bytes
        ):
            self._kick.set()

    def put_links(self, links: list[Link]) -> None:
        """Links waiting to be fetched that no record here carries (crawl --workers: a
        worker forwarded them): made durable at the next checkpoint (--state)."""
        if self._durable:
            self._written_links += links

    @property
    def behind(self) -> bool:
        """True when the writer has fallen far behind and producers should wait."""
        return len(self._buf) >= self._high_water and not (self.broken or self._abandoned)

    @property
    def lost(self) -> int:
        """Records handed to the sink and not written (so far, or ever: see abandon())."""
        return self.records - self.written

    async def backpressure(self) -> None:
        """Wait while the writer is far behind; returns at once otherwise."""
        if self.behind:
            self._drained.clear()
            await self._drained.wait()

    async def put(self, record: Record, fp: int | None = None) -> None:
        self.put_nowait(record, fp)
        await self.backpressure()

    async def run(self) -> None:
        """Write batches until ``close()``; then write what is left and return.

        The first record of a batch wakes us; the batch then gets ``flush_interval``
        seconds to fill, and a full batch wakes us early. So a fast run writes full
        batches and a slow one shows each record within ``flush_interval``.
        """
        interval = self._config.flush_interval
        cfg = self._config
        while True:
            if not self._buf and not self._closing:
                if self._written_fps or self._written_links:
                    # Records are written but not checkpointed: do not leave them
                    # uncommitted for long just because no new record arrives.
                    try:
                        async with asyncio.timeout(cfg.checkpoint_interval):
                            await self._kick.wait()
                    except TimeoutError:
                        await self.checkpoint()
                        continue
                else:
                    await self._kick.wait()
            self._kick.clear()
            if (
                not self._closing
                and self._count < cfg.batch_records
                and len(self._buf) < cfg.batch_bytes
            ):
                try:
                    async with asyncio.timeout(interval):
                        await self._kick.wait()
                except TimeoutError:
                    pass
                self._kick.clear()
            await self._write_batch()
            if self._closing and not self._buf:
                await self.checkpoint()
                return
            if self._durable:
                now = asyncio.get_running_loop().time()
                if now - self._last_checkpoint >= cfg.checkpoint_interval:
                    self._last_checkpoint = now
                    await self.checkpoint()

    def close(self) -> None:
        """No more records: ``run()`` writes the rest and returns."""
        self._closing = True
        self._kick.set()

    def abandon(self) -> None:
        """Stop waiting for a pipe that is not read (shutdown): from now on, what the pipe
        takes at once is written and the rest of each batch is dropped, counted as lost.
        Output that is not a non-blocking pipe (a file) never waits this way: no effect."""
        self._abandoned = True
        self._drained.set()  # nobody waits for room any more
        if self._waiting is not None:
            resolve(self._waiting, False)

    async def _write_batch(self) -> None:
        if not self._buf:
            return
        if self._before_write is not None:
            await self._before_write()
        # A fresh buffer per batch (one allocation per batch, not per record): the old
        # one may still be referenced by the writer thread.
        buf, self._buf = self._buf, bytearray()
        fps, self._fps = self._fps, []
        links, self._links = self._links, []
        count, self._count = self._count, 0
        # The write runs in a thread and completes even if we are cancelled meanwhile, so
        # it is shielded and does its own bookkeeping: the offset and the done marks then
        # always describe what really is in the file. flush() waits for it. (The one task
        # outside the TaskGroup, on purpose: it must outlive a cancelled writer.)
        self._writing = asyncio.ensure_future(self._write_accounted(buf, fps, links, count))
        await asyncio.shield(self._writing)

    async def _write_accounted(
        self,
        buf: bytearray,
        fps: list[int | None],
        links: list[list[Link] | None],
        count: int,
    ) -> None:
        try:
            if not (self.broken or self._torn):
                size = await self._write_all(buf)
                if size < len(buf):  # abandoned part-way: whole lines count, no more
                    count = buf.count(b"\n", 0, size)
                    fps = fps[:count]
                    links = links[:count]  # a lost page's links are not committed either
                    # A later batch must not be glued to the cut-short line: the torn
                    # line stays the last one (README), the rest is lost.
                    self._torn = size > 0 and buf[size - 1] != 0x0A
                self.written += count
                self.bytes_written += size
                self._offset += size
                self._written_fps += fps
                for found in links:
                    if found:
                        self._written_links += found
        finally:
            if len(self._buf) < self._high_water:
                self._drained.set()

    async def _write_all(self, data: bytearray) -> int:
        """Write ``data``; the bytes written (fewer only once abandoned)."""
        try:
            if isinstance(self._file, Pipe):
                if self._file.chunk:
                    return await self._write_blocking_pipe(self._file, data)
                return await self._write_pipe(self._file.fd, data)
            written: int = await self._file.write(data)
            while written < len(data):  # a short write: rare, but a pipe may do it
                written += await self._file.write(data[written:])
            return written
        except BrokenPipeError:
            self.broken = True
            self._drained.set()
            if self._config.output is None:
                # Point fd 1 at /dev/null so nothing at exit tries the dead pipe again.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
            raise OutputClosed from None
        except OSError as exc:  # disk full, I/O error: the message names the output
            raise self._named(exc) from None

    def _named(self, exc: OSError) -> OSError:
        """``exc`` naming the output it is about (a write's error names no file)."""
        if exc.filename is not None or exc.errno is None:
            return exc
        return type(exc)(exc.errno, exc.strerror, self._config.output or "<stdout>")

    async def _write_pipe(self, fd: int, data: bytearray) -> int:
        size, written = len(data), 0
        with memoryview(data) as view:
            while written < size:
                try:
                    written += os.write(fd, view[written:])
                except BlockingIOError:
                    if not await self._writable(fd):
                        break
        return written

    async def _write_blocking_pipe(self, pipe: Pipe, data: bytearray) -> int:
        fd, chunk = pipe.fd, pipe.chunk
        room = select.poll()
        room.register(fd, select.POLLOUT)
        size, written = len(data), 0
        with memoryview(data) as view:
            while written < size:
                # A pipe polls writable with at least PIPE_BUF bytes free: this write
                # returns at once.
                if not room.poll(0) and not await self._writable(fd):
                    break
                written += os.write(fd, view[written : written + chunk])
        return written

    async def _writable(self, fd: int) -> bool:
        """Wait until the pipe has room: True, or False once abandoned."""
        if self._abandoned:
            return False
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[bool] = loop.create_future()
        self._waiting = waiting
        loop.add_writer(fd, resolve, waiting, True)
        try:
            return await waiting
        finally:
            loop.remove_writer(fd)
            self._waiting = None

    async def flush(self) -> None:
        """Write everything queued now and checkpoint (at shutdown, shielded by the caller)."""
        writing = self._writing
        if writing is not None and not writing.done():
            with contextlib.suppress(OutputClosed):
                await writing  # a write cut off by a cancellation: let it land first
        while self._buf and not self.broken:
            await self._write_batch()
        await self.checkpoint()

    async def checkpoint(self) -> None:
        """Hand what is written to the Ledger (--state: made durable, its URLs done).

        The records, their body files and WARC records are all durable before the
        commit names them: the output is fsynced by the commit, the stores by
        ``before_commit``. The offset is taken with the marks, before any await, so the
        two describe the same records."""
        ledger = self._ledger
        if self._file is None:
            return
        if (
            not self._written_fps
            and not self._written_links
            and self._offset == ledger.committed_offset
        ):
            return
        fps, self._written_fps = self._written_fps, []
        links, self._written_links = self._written_links, []
        done = [fp for fp in fps if fp is not None]
        offset = self._offset
        sync_fd = None if self._stream else self._file.fileno()
        try:
            if self._before_commit is not None:
                await self._before_commit()
            try:
                await ledger.commit(done, offset, sync_fd, links)
            except OSError as exc:  # fsync of the output (the state's are sqlite3 errors)
                raise self._named(exc) from None
        except BaseException:
            self._written_fps[:0] = fps  # not committed: keep them for the next try
            self._written_links[:0] = links
            raise

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
