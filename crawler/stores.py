"""What a run remembers, behind three small seams the engine is given at construction.

    Seen       claim a batch of URL fingerprints: which are new to this job
    Ledger     commit finished records with their done marks, the links their pages
               found and the output's committed position, in one step
    WorkQueue  where discovered links wait for the frontier

Two sets stand behind them today: ``memory()`` here (a run on its own: a
``FingerprintSet``, nothing to commit, a ``LinkQueue`` that spills to a temporary file)
and, with ``--state``, ``crawler.state.resumable()`` (SQLite: the ``StateStore`` is both
the Seen and the Ledger, so a claim and a commit share one database, and a
``ResumedQueue`` first hands back the links an earlier run left waiting). Shared ones
(several processes, several machines) come next; the engine never asks which it has.

Seen and Ledger are called once per batch (an input batch, a page's links, a
checkpoint), never per URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final, Protocol

from msgspec import Struct

from crawler.dedup import FingerprintSet
from crawler.linkqueue import Link, LinkQueue

# What Seen.claim says of each fingerprint:
FRESH: Final = 1  # new: claimed now, for this run to do
REPEAT: Final = 0  # claimed earlier in this run
DONE_BEFORE: Final = 2  # done by an earlier run of this job (a resumed --state)
assert (FRESH, REPEAT) == (1, 0)  # noqa: S101 - FingerprintSet.add_many's answers


class Seen(Protocol):
    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        """Per fingerprint: ``FRESH``, ``REPEAT`` or ``DONE_BEFORE``. ``remember_done``:
        a URL done before is said so once, ``REPEAT`` after that (links: counted once;
        input lines are counted each time)."""
        ...


class Ledger(Protocol):
    """Where finished work becomes durable: records, their done marks, the links their
    pages found and the output's committed position, committed together."""

    # A URL left without a record (a stop) is done by the job's next run: it gets no
    # ``cancelled`` record now.
    durable: bool
    resumed: bool  # an earlier run of this job was found
    committed_offset: int  # bytes of the output the earlier runs committed
    done_before: int  # URLs the earlier runs did

    async def open(self) -> None: ...

    async def commit(
        self, fps: list[int], offset: int, sync_fd: int | None, links: Sequence[Link] = ()
    ) -> None:
        """Make ``offset`` bytes of the output durable (``sync_fd``: fsync it first, when
        the output is a file), mark ``fps`` done and keep ``links`` as waiting."""
        ...

    async def aclose(self) -> None: ...


class WorkQueue(Protocol):
    """Discovered links waiting for the frontier: ``push`` never waits (workers push)."""

    spilled: int  # links held outside memory so far

    def __len__(self) -> int: ...

    def push(self, link: Link) -> None: ...

    async def take(self, n: int) -> list[Link]:
        """Up to ``n`` links, oldest first; [] when none waits."""
        ...

    def carried_over(self) -> AsyncIterator[list[Link]]:
        """Links an earlier run of this job found and did not do, in batches: they are
        claimed again (``Seen``) and pushed like new ones."""
        ...

    def close(self) -> None: ...


class MemorySeen:
    """This run's claims, in memory: about 16 bytes a URL (see ``FingerprintSet``)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = FingerprintSet()

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        return self._set.add_many(fps)  # 1 (FRESH) or 0 (REPEAT)


class NoSeen:
    """``--no-dedup``: every URL is new."""

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        return [FRESH] * len(fps)


class MemoryLedger:
    """A run on its own: nothing outlives it, so a commit only notes the position."""

    durable = False
    resumed = False
    done_before = 0

    def __init__(self) -> None:
        self.committed_offset = 0

    async def open(self) -> None:
        pass

    async def commit(
        self, fps: list[int], offset: int, sync_fd: int | None, links: Sequence[Link] = ()
    ) -> None:
        self.committed_offset = offset

    async def aclose(self) -> None:
        pass


class MemoryQueue(LinkQueue):
    """A ``LinkQueue`` (memory, spilling to a temporary file): nothing carried over."""

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        return
        yield  # an async generator that yields nothing


class Stores(Struct, frozen=True):
    """The three seams of one run, handed to the engine."""

    seen: Seen
    ledger: Ledger
    queue: WorkQueue


def memory(*, dedup: bool = True, queue_memory: int = 512) -> Stores:
    """A run that remembers nothing past its end."""
    return Stores(MemorySeen() if dedup else NoSeen(), MemoryLedger(), MemoryQueue(queue_memory))
