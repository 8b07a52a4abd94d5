"""The frontier: a bounded queue of URLs that hands workers only URLs they may start now.

Items move through these places (``maxsize`` bounds ``fresh`` + ``parked``, so the
reader waits when workers are busy and memory stays O(concurrency + queue size)):

    reader --put--> fresh --get--> worker (holds a host slot) --done--> gone
                      |   ^                         |
                      v   |                         +--retry_later--> delayed (heap)
             parked (host full)                                          |
                      |                           due <---timer----------+
                      +--host slot frees--> ready (slot already reserved)

A worker never waits for a busy host while other hosts have work: a URL whose host is
full is parked on that host and handed over, together with the slot, by the request that
frees it. A parked URL always has a request of its host in flight, so it cannot be stranded.
Back-off waits do not hold a worker either: the URL sits in ``delayed`` until it is due.

All of this is synchronous state change between awaits; the only awaits are the waits of
``get`` (nothing runnable) and ``put`` (queue full), implemented with plain futures.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable
from itertools import count

from yarl import URL

from crawler.limiter import HostState, HostTable
from crawler.retry import Deadline


class Item:
    """One URL on its way through the pipeline, with the state its retries share."""

    __slots__ = (
        "attempts",
        "deadline",
        "depth",
        "finished",
        "fp",
        "host",
        "host_key",
        "parent",
        "raw",
        "url",
    )

    def __init__(
        self,
        raw: str,
        url: URL,
        host_key: str,
        fp: int = 0,
        depth: int = 0,
        parent: str | None = None,
    ) -> None:
        self.raw = raw
        self.depth = depth  # crawl mode: links followed from a seed
        self.parent = parent
        self.fp = fp  # fingerprint of the dedup key (0 with --no-dedup)
        self.url = url
        self.host_key = host_key
        self.host: HostState | None = None  # set while the item holds a slot of its host
        self.attempts = 0
        self.deadline: Deadline | None = None  # starts with the first attempt
        self.finished = False  # its record is in the sink


class Frontier:
    def __init__(self, maxsize: int, hosts: HostTable) -> None:
        self._maxsize = maxsize
        # The reader is woken only when a quarter of the queue has drained, so it refills
        # in bursts: one task switch per burst instead of one per URL.
        self._low_water = maxsize - max(1, maxsize // 4)
        self._hosts = hosts
        self._fresh: deque[Item] = deque()
        self._ready: deque[Item] = deque()
        self._due: deque[Item] = deque()
        self._delayed: list[tuple[float, int, Item]] = []
        self._seq = count()
        self._parked = 0
        self.in_flight = 0
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._input_closed = False
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        # Crawl mode: called when the last request in flight ends (links may be waiting).
        self.on_idle: Callable[[], None] | None = None
        # Called once, the first time a worker has to wait while URLs are parked: the
        # per-host limit, not the number of workers, is what bounds the run then.
        self.on_host_bound: Callable[[], None] | None = None

    # -- sizes, for stats and tests -------------------------------------------------
    @property
    def queued(self) -> int:
        """URLs waiting to start (fresh, parked, due, ready); back-offs not included."""
        return len(self._fresh) + self._parked + len(self._due) + len(self._ready)

    @property
    def delayed(self) -> int:
        return len(self._delayed)

    @property
    def idle(self) -> bool:
        """Nothing in flight, queued or waiting for a retry."""
        return self.in_flight == 0 and not self._delayed and self.queued == 0

    @property
    def finished(self) -> bool:
        return self._stopped or (
            self._input_closed
            and self.in_flight == 0
            and not self._fresh
            and not self._ready
            and not self._due
            and not self._delayed
            and self._parked == 0
        )

    # -- the reader's side ----------------------------------------------------------
    def full(self) -> bool:
        return len(self._fresh) + self._parked >= self._maxsize

    def offer(self, item: Item) -> bool:
        """``put`` without the wait: False (nothing done) if the frontier is full."""
        if self._stopped:
            return True  # dropped, as put() drops it: stop() has handed out the rest
        if len(self._fresh) + self._parked >= self._maxsize:
            return False
        self._fresh.append(item)
        if self._getters:
            self._wake_getter()
        return True

    async def put(self, item: Item) -> None:
        """Add a URL, waiting while the frontier is full (backpressure on the reader)."""
        while self.full() and not self._stopped:
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
        if self._stopped:
            return
        self._fresh.append(item)
        self._wake_getter()

    def close_input(self) -> None:
        """No more URLs will be put; the run ends once everything queued is done."""
        self._input_closed = True
        if self.finished:
            self._wake_all()

    # -- the workers' side ----------------------------------------------------------
    def get_nowait(self) -> Item | None:
        """The next runnable URL if there is one right now (its slot held), else None."""
        if self._stopped:
            return None
        item = self._take()
        if item is not None:
            self.in_flight += 1
            if self._getters and self._runnable():
                self._wake_getter()
        return item

    async def get(self) -> Item | None:
        """The next URL whose host has room (its slot now held), or None when done."""
        while True:
            item = self.get_nowait()
            if item is not None or self._stopped:
                return item
            if self.finished:
                self._wake_all()
                return None
            if self._parked and self.on_host_bound is not None:
                hook, self.on_host_bound = self.on_host_bound, None
                hook()
            fut = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def _runnable(self) -> bool:
        return bool(self._ready or self._due or self._fresh)

    def _take(self) -> Item | None:
        item: Item | None
        if self._ready:
            item = self._ready.popleft()
        else:
            item = self._take_queued()
            if item is None:
                return None
        if self._putters and len(self._fresh) + self._parked <= self._low_water:
            self._wake_putter()
        return item

    def _take_queued(self) -> Item | None:
        """The first due retry or fresh URL whose host has room, its slot now held;
        the ones before it whose host is full are parked on their host."""
        hosts = self._hosts
        for source in (self._due, self._fresh):
            while source:
                item = source.popleft()
                host = hosts.get(item.host_key)
                if host.has_room():
                    host.active += 1
                    item.host = host
                    return item
                # Parked URLs (retries included) count toward the bound like fresh ones.
                host.parked.append(item)
                self._parked += 1
        return None

    def done(self, item: Item) -> None:
        """The worker is finished with ``item`` (its record is written)."""
        self.in_flight -= 1
        self._release_slot(item)
        if (self._input_closed or self._stopped) and self.finished:
            self._wake_all()
        elif self.on_idle is not None and self.in_flight == 0:
            self.on_idle()

    def retry_later(self, item: Item, delay: float) -> bool:
        """Give up the worker and the host slot; ``item`` comes back after ``delay`` s.

        Returns False, keeping nothing, once the frontier is stopped: the caller must
        then finish the item itself (``stop()`` has already handed out what it held).
        """
        self.in_flight -= 1
        self._release_slot(item)
        if self._stopped:
            return False
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        heapq.heappush(self._delayed, (due, next(self._seq), item))
        if self._delayed[0][2] is item:
            self._arm_timer(due)
        return True

    def _release_slot(self, item: Item) -> None:
        host = item.host
        if host is None:
            return
        item.host = None
        host.active -= 1
        # Hand freed slots straight to URLs parked on this host.
        while host.parked and host.has_room():
            nxt = host.parked.popleft()
            self._parked -= 1
            host.active += 1
            nxt.host = host
            self._ready.append(nxt)
            self._wake_getter()
        if host.active == 0:
            self._hosts.release(host)

    def _arm_timer(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, item = heapq.heappop(self._delayed)
            self._due.append(item)
            self._wake_getter()
        if self._delayed:
            self._arm_timer(self._delayed[0][0])

    # -- shutdown ---------------------------------------------------------------------
    def stop(self) -> list[Item]:
        """Stop handing out URLs; return every URL that was queued and not started."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        left = list(self._ready) + list(self._due) + list(self._fresh)
        left.extend(item for _, _, item in self._delayed)
        for host in list(self._hosts):
            left.extend(host.parked)
            host.parked.clear()
        self._ready.clear()
        self._due.clear()
        self._fresh.clear()
        self._delayed.clear()
        self._parked = 0
        self._wake_all()
        for fut in self._putters:
            if not fut.done():
                fut.set_result(None)
        self._putters.clear()
        return left

    # -- wake-ups -----------------------------------------------------------------------
    def _wake_getter(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            fut = self._putters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
