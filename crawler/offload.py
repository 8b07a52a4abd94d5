"""Writers that live in a child process of their own, fed in batches: ``Offloaded`` is the
event loop's side (crawler.bodies and crawler.warc build on it), ``named`` the one-line
form of a writer's OSError.

A child process, not a thread: a thread doing Python work (warcio builds each record in
Python, ``open()`` builds file objects) takes the GIL from the event loop every time the
loop releases it for a syscall, and measured, that cost more than half the bench's
throughput (benchmarks/RESULTS.md). The event loop only appends items to a batch; a batch
travels to the child as one pickled message.

Durability (``--state``). A checkpoint commits URLs only after ``sync()``: every batch
queued so far is written by the child (unbuffered, so it survives a SIGKILL of either
process) and on disk (the writer's ``sync``), so a power cut cannot lose what a commit
names either. Once per checkpoint, never per URL. A writer that failed or died stays
failed: every later ``flush``/``sync`` raises, so nothing is committed after a lost batch.

Children die with the parent (``crawler.lifeline``): a SIGKILLed run leaves no writer
behind, and with the writers gone multiprocessing's resource tracker sees its pipe close
and exits too. The child imports this module and its writer's: keep aiohttp out of them.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections import deque
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from typing import Any, Final

from crawler.lifeline import die_with_parent
from crawler.links import ignore_sigint

_BATCH_ITEMS: Final = 64
_BATCH_BYTES: Final = 1 << 20
_MAX_PENDING_BYTES: Final = 64 << 20  # bytes sent to the child and not written yet


class Offloaded:
    """Batches of items handed to a writer object living in a child process.

    ``_queue`` never waits; ``backpressure`` waits while too many bytes are in flight;
    ``flush`` returns once everything queued so far is written; ``sync`` once it is on
    disk. Batches are written in the order they were added (one worker). The first
    failure (a write that raised, the child gone) sticks: every later call raises it."""

    def __init__(self, kind: str, writer: type, *args: Any) -> None:
        """``writer(*args)`` is made in the child (a class: pickled by its name); ``kind``
        names it in errors."""
        self._kind = kind
        # PR_SET_PDEATHSIG is tied to the thread that starts the child: ask for it only
        # when that is the main thread (the child is started by the first submit, in
        # start(), on the thread that made us), which lives as long as the process.
        main = threading.current_thread() is threading.main_thread()
        self._pool = ProcessPoolExecutor(
            1,
            # spawn, not fork: forking a process that runs threads (state, input) is unsafe
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_init,
            initargs=(os.getpid(), main, writer, args),
        )
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[Future[Any], int]] = deque()
        self._pending_bytes = 0
        self._closed = False
        self._failed: OSError | None = None

    async def start(self) -> None:
        """Start the child and let it open its files: errors surface here, before the run
        (as OSError, also when the child could not start at all). Awaited, never waited
        for on the loop: a spawned child takes a good part of a second to start."""
        try:
            await asyncio.wrap_future(self._pool.submit(_child_call, "start"))
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            raise self._fail(exc) from None

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
        if self._failed is not None:
            raise self._failed

    async def sync(self) -> None:
        """Everything queued so far written and on disk: a checkpoint may then commit it."""
        await self.flush()
        await self._call("sync")

    async def aclose(self) -> None:
        """Write what is left, close the files (idempotent)."""
        if self._closed:
            return
        try:
            # After a failure (already raised to whoever met it first, and reported from
            # there) there is nothing more to write: close without raising it again.
            if self._failed is None:
                await self.flush()
                self._closed_with(await self._call("close"))
        finally:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=self._failed is not None)

    def _closed_with(self, report: Any) -> None:
        """The writer's final report (subclasses keep what they need of it)."""

    async def _call(self, method: str) -> Any:
        try:
            fut = self._pool.submit(_child_call, method)
            return await asyncio.shield(asyncio.wrap_future(fut))
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            raise self._fail(exc) from None

    def _fail(self, exc: BaseException) -> OSError:
        """Remember the writer's first failure as an OSError (the engine reports those as
        one line) and return it; later calls raise the same."""
        if self._failed is None:
            if isinstance(exc, BrokenExecutor):
                self._failed = OSError(f"the {self._kind} writer process died")
            elif isinstance(exc, OSError):
                self._failed = exc
            else:
                self._failed = OSError(f"the {self._kind} writer failed: {exc!r}")
        return self._failed

    def _submit(self) -> None:
        if self._failed is not None:
            raise self._failed
        batch, self._batch = self._batch, []
        size, self._batch_bytes = self._batch_bytes, 0
        if batch:
            try:
                fut = self._pool.submit(_child_call, "write", batch)
            except (BrokenExecutor, RuntimeError) as exc:
                raise self._fail(exc) from None
            self._pending.append((fut, size))
            self._pending_bytes += size

    async def _wait_oldest(self) -> None:
        fut, size = self._pending[0]
        try:
            # Shielded: cancelling the wrapper would cancel a batch not yet handed to
            # the child, and that batch would be lost without a trace. A cancelled
            # waiter leaves the batch pending, so the next flush still waits for it.
            await asyncio.shield(asyncio.wrap_future(fut))
        except Exception as exc:  # noqa: BLE001 - any failure of the writer sticks (see _fail)
            self._forget(fut, size)
            raise self._fail(exc) from None
        self._forget(fut, size)

    def _forget(self, fut: Future[Any], size: int) -> None:
        if self._pending and self._pending[0][0] is fut:
            self._pending.popleft()
            self._pending_bytes -= size


# -- the child process ---------------------------------------------------------------------
_writer: Any = None


def _child_init(parent: int, pdeathsig: bool, writer: type, args: tuple[Any, ...]) -> None:
    global _writer
    die_with_parent(parent, pdeathsig=pdeathsig)
    ignore_sigint()
    _writer = writer(*args)


def _child_call(method: str, *args: Any) -> Any:
    return getattr(_writer, method)(*args)


def named(exc: OSError, path: str) -> OSError:
    """``exc`` naming the file it is about (the parent reports it as one line)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, path)
