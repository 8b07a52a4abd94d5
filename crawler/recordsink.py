"""Where records go: the ``RecordSink`` seam, and the channel the Python API reads from.

The engine hands every record to one sink, synchronously (``put_nowait``: a cancellation
can neither lose nor duplicate a record), and waits on ``backpressure()`` when the sink
says it is ``behind``. Two sinks stand behind the protocol: ``crawler.sink.Sink`` writes
JSON lines to a file or standard output; ``ChannelSink`` hands ``Record`` objects to a
consumer in the same process (``crawler.fetch``). The engine does not know which it has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

from msgspec import Struct

if TYPE_CHECKING:
    from crawler.config import SinkConfig
    from crawler.linkqueue import Link
    from crawler.records import Record
    from crawler.stores import Ledger

# Records a channel holds before the engine waits for its consumer. Workers put their
# record and then wait, so at most this many plus one per worker are ever held.
CHANNEL_SIZE: Final = 256


class SinkHooks(Struct, frozen=True):
    """What a sink awaits: before records are handed on (--save-dir: the bodies they
    name are on disk) and before a --state checkpoint commits (bodies and WARC records
    durable; raising keeps the checkpoint from committing)."""

    before_write: Callable[[], Awaitable[None]] | None = None
    before_commit: Callable[[], Awaitable[None]] | None = None


class RecordSink(Protocol):
    """What the engine needs of the place its records go."""

    broken: bool  # the consumer went away (a closed pipe): the run ends quietly

    async def open(self) -> None: ...

    async def run(self) -> None:
        """Hand records on until ``close()``; then hand on the rest and return."""

    def close(self) -> None: ...

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None: ...

    @property
    def behind(self) -> bool:
        """True when producers should wait on ``backpressure()``."""

    @property
    def lost(self) -> int:
        """Records handed to the sink and not handed on (yet, or ever)."""

    async def backpressure(self) -> None: ...

    def abandon(self) -> None:
        """Shutdown: stop waiting for a consumer that does not take records."""

    async def aclose(self) -> None:
        """Idempotent: hand on what can be and release the output."""


# Made by the engine once the run's Ledger is open and its stores exist.
SinkFactory = Callable[["SinkConfig", "Ledger", SinkHooks], RecordSink]


class ChannelSink:
    """A bounded in-process channel of records: the engine puts, one consumer ``get()``s.

    ``behind`` once ``size`` records wait, so a consumer that reads slowly slows the
    run down instead of letting records pile up. ``get()`` returns None once the run has
    closed the channel (or ended, see ``end()``) and every record was taken.

    With a durable ``ledger`` (``state=``), a record's URL is marked done (and a crawled
    page's links made durable) once the consumer has taken the record: at a checkpoint every
    ``interval`` seconds and at the end, where the run waits for the consumer to take
    what is left (unless told to stop waiting: ``abandon()``). A record never taken is
    never marked done: the resumed run fetches its URL again.
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        hooks: SinkHooks | None = None,
        interval: float = 1.0,
        size: int = CHANNEL_SIZE,
    ) -> None:
        self._items: deque[tuple[Record, int | None, list[Link] | None]] = deque()
        self._size = size
        self._ready = asyncio.Event()  # a record, or the end, for the consumer
        self._room = asyncio.Event()  # room again for the producers
        self._room.set()
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()  # closed, and every record taken (or abandoned)
        self._ended = False
        self._abandoned = False
        self._released = 0  # records whose before_write() has run
        self._ledger = ledger if ledger is not None and ledger.durable else None
        self._interval = interval
        self._taken_fps: list[int] = []  # taken since the last checkpoint
        self._taken_links: list[Link] = []
        hooks = hooks or SinkHooks()
        self._before_write = hooks.before_write
        self._before_commit = hooks.before_commit
        self.broken = False
        self.records = 0  # records handed to the channel
        self.delivered = 0  # records taken by the consumer

    # -- the engine's side ----------------------------------------------------------------
    async def open(self) -> None:
        pass

    async def run(self) -> None:
        if self._ledger is None:
            await self._closed.wait()
            return
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._closed.wait()
            await self.checkpoint()

    def close(self) -> None:
        self._closed.set()
        self._ready.set()
        if not self._items:
            self._drained.set()

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        self._items.append((record, fp, links))
        self.records += 1
        self._ready.set()

    @property
    def behind(self) -> bool:
        return len(self._items) >= self._size and not self._abandoned

    @property
    def lost(self) -> int:
        return self.records - self.delivered

    async def backpressure(self) -> None:
        while self.behind:
            self._room.clear()
            await self._room.wait()

    def abandon(self) -> None:
        self._abandoned = True
        self._room.set()
        self._drained.set()

    async def checkpoint(self) -> None:
        """With a durable ledger: mark the URLs of the records taken so far done."""
        if self._ledger is None or not (self._taken_fps or self._taken_links):
            return
        fps, self._taken_fps = self._taken_fps, []
        links, self._taken_links = self._taken_links, []
        try:
            if self._before_commit is not None:
                await self._before_commit()
            await self._ledger.commit(fps, 0, None, links)
        except BaseException:
            self._taken_fps[:0] = fps  # not committed: keep them for the next try
            self._taken_links[:0] = links
            raise

    async def aclose(self) -> None:
        self.close()
        if self._ledger is not None:
            await self._drained.wait()  # the consumer takes the rest: then they are done
            await self.checkpoint()

    # -- the consumer's side --------------------------------------------------------------
    def end(self) -> None:
        """The run is over (whichever way): ``get()`` stops waiting for more."""
        self._ended = True
        self.close()
        self.abandon()

    async def get(self) -> Record | None:
        """The next record, or None when there will be no more."""
        items = self._items
        while not items:
            if self._ended or self._closed.is_set():
                return None
            self._ready.clear()
            await self._ready.wait()
        if not self._released and self._before_write is not None:
            count = len(items)
            await self._before_write()  # the body files these records name are written
            self._released = count
        if self._released:
            self._released -= 1
        self.delivered += 1
        record, fp, links = items.popleft()
        if self._ledger is not None:
            if fp is not None:
                self._taken_fps.append(fp)
            if links:
                self._taken_links += links
        if len(items) < self._size:
            self._room.set()
        if not items and self._closed.is_set():
            self._drained.set()
        return record
