"""Where records go: the ``RecordSink`` seam, and the channel the Python API reads from.

The engine hands every record to one sink, synchronously (``put_nowait``: a cancellation
can neither lose nor duplicate a record), and waits on ``backpressure()`` when the sink
says it is ``behind``. Two sinks stand behind the protocol: ``crawler.sink.Sink`` writes
JSON lines to a file or standard output; ``ChannelSink`` hands ``Record`` objects to a
consumer in the same process (``crawler.fetch``). The engine does not know which it has.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from crawler.config import SinkConfig
    from crawler.linkqueue import Link
    from crawler.records import Record
    from crawler.stores import Ledger

# Records a channel holds before the engine waits for its consumer. Workers put their
# record and then wait, so at most this many plus one per worker are ever held.
CHANNEL_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class SinkHooks:
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
    """

    def __init__(self, hooks: SinkHooks | None = None, size: int = CHANNEL_SIZE) -> None:
        self._items: deque[Record] = deque()
        self._size = size
        self._ready = asyncio.Event()  # a record, or the end, for the consumer
        self._room = asyncio.Event()  # room again for the producers
        self._room.set()
        self._closed = asyncio.Event()
        self._ended = False
        self._abandoned = False
        self._released = 0  # records whose before_write() has run
        self._before_write = (hooks or SinkHooks()).before_write
        self.broken = False
        self.records = 0  # records handed to the channel
        self.delivered = 0  # records taken by the consumer

    # -- the engine's side ----------------------------------------------------------------
    async def open(self) -> None:
        pass

    async def run(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        self._closed.set()
        self._ready.set()

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        self._items.append(record)
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

    async def aclose(self) -> None:
        self.close()

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
        record = items.popleft()
        if len(items) < self._size:
            self._room.set()
        return record
