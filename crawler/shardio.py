"""What a worker process of ``--workers N`` has behind the engine's seams (see
``crawler.shardworker``): the coordinator's pipes, as a Source (``PipeSource``), a Seen
(``RemoteSeen``), a crawl's WorkQueue (``ShardQueue``), a Ledger (``StandInLedger``) and a
RecordSink (``PipeSink``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

from crawler import shards
from crawler.config import SinkConfig
from crawler.inputs import Uncounted
from crawler.linkqueue import Link
from crawler.records import Record, encode
from crawler.recordsink import SinkHooks
from crawler.stores import FRESH

_HIGH_WATER: Final = 1 << 20  # bytes waiting in the pipe to the coordinator: producers wait


class Channel:
    """The worker's two pipes: frames in (standard input), frames out (standard output)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.gone = False  # the coordinator went away: nothing more can be sent

    def send(self, data: bytes) -> None:
        if not self.gone:
            self.writer.write(data)

    @property
    def behind(self) -> bool:
        return not self.gone and self.writer.transport.get_write_buffer_size() > _HIGH_WATER

    async def drain(self) -> None:
        if self.gone:
            return
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.gone = True


class PipeSource(Uncounted):
    """The lines the coordinator sends, batch by batch; ``current`` names the batch the
    reader is working on (its claim goes with that id)."""

    lines_total: int | None = None
    eof = False

    def __init__(self) -> None:
        self.lines_read = 0
        self.received = 0  # lines the coordinator sent
        self.current = 0
        self._batches: asyncio.Queue[tuple[int, list[str]] | None] = asyncio.Queue()

    def put(self, batch: int, lines: list[str]) -> None:
        self.received += len(lines)
        self._batches.put_nowait((batch, lines))

    def end(self) -> None:
        self._batches.put_nowait(None)

    async def batches(self) -> AsyncIterator[list[str]]:
        while (item := await self._batches.get()) is not None:
            self.current, lines = item
            self.lines_read += len(lines)
            yield lines
        self.eof = True


class RemoteSeen:
    """Dedup is the coordinator's (it may be the --state file): one claim per batch, with
    the batch's id, so the coordinator knows which of its lines now wait for a record."""

    def __init__(self, channel: Channel, source: PipeSource) -> None:
        self._channel = channel
        self._source = source
        self._waiting: dict[int, asyncio.Future[list[int]]] = {}

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        if remember_done:  # a page's links: the coordinator claims them when forwarded
            return [FRESH] * len(fps)
        batch = self._source.current
        answer: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting[batch] = answer
        self._channel.send(shards.ids_frame(shards.CLAIM, batch, shards.fingerprints(fps)))
        try:
            return await answer
        finally:
            del self._waiting[batch]

    def answered(self, batch: int, answers: bytes | memoryview) -> None:
        future = self._waiting.get(batch)
        if future is not None and not future.done():
            future.set_result(list(answers))


class ShardQueue:
    """Crawl mode: the links this worker finds go to the coordinator (``push``), which
    claims them and hands each to the worker that owns its host; those handed here wait
    in ``take``'s queue. Forwarded in a batch per loop turn, always before the records
    that follow (``flush``): a page's record never reaches the coordinator before its
    links."""

    spilled = 0

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._links: deque[Link] = deque()
        self._out: list[tuple[str, int, str | None, int]] = []
        self.received = 0  # links handed to this worker

    def __len__(self) -> int:
        return len(self._links)

    def push(self, link: Link) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(tuple(link))  # type: ignore[arg-type]

    def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._channel.send(shards.pickled(shards.FORWARD, out))

    def deliver(self, links: list[tuple[str, int, str | None, int]]) -> None:
        self._links.extend(Link(*link) for link in links)
        self.received += len(links)

    async def take(self, n: int) -> list[Link]:
        links = self._links
        return [links.popleft() for _ in range(min(n, len(links)))]

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        return  # an earlier run's waiting links are the coordinator's
        yield

    def close(self) -> None:
        pass


class StandInLedger:
    """The coordinator commits; the worker only needs to know whether the run is durable
    (with --state a URL cut off by a stop gets no ``cancelled`` record)."""

    committed_offset = 0
    done_before = 0

    def __init__(self, durable: bool, resumed: bool) -> None:
        self.durable = durable
        self.resumed = resumed  # a resumed job: a --warc file of this worker is added to

    async def open(self) -> None:
        pass

    async def commit(
        self, fps: list[int], offset: int, sync_fd: int | None, links: Sequence[Link] = ()
    ) -> None:
        pass

    async def aclose(self) -> None:
        pass


class PipeSink:
    """Records to the coordinator: encoded here (the CPU spent where the URL was
    fetched), sent in batches with their fingerprints (0: none, a ``cancelled`` record).
    With --save-dir/--warc a batch goes once the bodies it names are on disk (and, with
    --state, synced: the coordinator commits what it receives), as a run's own sink
    waits for them (crawler.recordsink.SinkHooks)."""

    broken = False
    lost = 0

    def __init__(
        self, config: SinkConfig, channel: Channel, before: Callable[[], None] | None = None
    ) -> None:
        self._channel = channel
        self._before = before  # what must reach the coordinator first (a page's links)
        self._batch_records = config.batch_records
        self._batch_bytes = config.batch_bytes
        self._interval = min(config.flush_interval, 0.05)
        self._buf = bytearray()
        self._fps: list[int] = []
        self._kick = asyncio.Event()
        self._closing = False
        self._waits: list[Callable[[], Awaitable[None]]] = []
        self._sent: Callable[[], None] | None = None

    def hooks(self, hooks: SinkHooks, durable: bool, sent: Callable[[], None]) -> None:
        """The run's storage hooks (awaited before each batch goes), and what to call once
        a batch that had to wait for them went (a crawl's idle check)."""
        waits = [hooks.before_write, hooks.before_commit if durable else None]
        self._waits = [wait for wait in waits if wait is not None]
        self._sent = sent

    async def open(self) -> None:
        pass

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        self._buf += encode(record)
        self._fps.append(fp or 0)
        n = len(self._fps)
        if n == 1 or n >= self._batch_records or len(self._buf) >= self._batch_bytes:
            self._kick.set()

    @property
    def behind(self) -> bool:
        return self._channel.behind

    async def backpressure(self) -> None:
        await self._channel.drain()

    def _send(self) -> None:
        if self._before is not None:
            self._before()
        if self._fps:
            data, self._buf = self._buf, bytearray()
            fps, self._fps = self._fps, []
            self._channel.send(shards.records_frame(fps, data))

    async def _send_stored(self) -> None:
        """Send what is here once the bodies it names are stored."""
        if self._waits and self._fps:
            data, self._buf = self._buf, bytearray()
            fps, self._fps = self._fps, []
            for wait in self._waits:
                await wait()
            if self._before is not None:
                self._before()
            self._channel.send(shards.records_frame(fps, data))
            if self._sent is not None:
                self._sent()
        else:
            self._send()

    async def run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self._closing and len(self._fps) < self._batch_records:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._kick.wait()
                self._kick.clear()
            await self._send_stored()
            await self._channel.drain()
            if self._closing:
                return

    def close(self) -> None:
        self._closing = True
        self._kick.set()

    def abandon(self) -> None:
        pass

    def send_now(self) -> bool:
        """Send what is here now, if it need not wait for its bodies; else have ``run()``
        send it (and call back). True if nothing is left here."""
        if self._waits and self._fps:
            self._kick.set()
            return False
        self._send()
        return True

    async def aclose(self) -> None:
        await self._send_stored()
        await self._channel.drain()
