"""The frontier: a bounded queue of URLs that hands workers only URLs they may start now.

Items move through these places (``maxsize`` bounds ``fresh`` + ``parked``, so the
reader waits when workers are busy and memory stays O(concurrency + queue size)):

    reader --put--> fresh --get--> worker (holds a host slot) --done--> gone
                      |   ^                         |
                      v   |                         +--retry_later--> delayed (heap)
             parked (host full, or                                       |
             its pacer not ready)                 due <---timer----------+
                      |
                      +--slot frees / pacer ready--> ready (slot already reserved)

A worker never waits for a busy host while other hosts have work: a URL whose host is
full is parked on that host and handed over, together with the slot, by the request that
frees it. Back-off waits do not hold a worker either: the URL sits in ``delayed`` until
it is due.

Pacing (--rps, --per-host-rps, Crawl-delay) is decided here too, at hand-out: a URL goes
to a worker only when its host's pacer and the global one allow a request now, and both
are committed at that moment (start = now, never earlier: a URL that waited in ``ready``
for a worker must not have reserved an earlier start). A URL whose host's pacer is not
ready is parked on the host, and the host is put in a wake-up heap at the pacer's ready
time; when the global pacer is not ready nothing is handed out until it is. So a parked
URL always has a request of its host in flight, a URL of its host in ``ready``, or its
host in the wake-up heap: it cannot be stranded, and no worker ever sleeps for a pacer.
Without any pacer (``HostTable.paced`` false) none of this runs.

Idle connections: ``waiting`` maps each host name with a URL still queued (or a retry
waiting) to the last such URL put; the fetcher pools a finished request's connection
only for a host found there (Fetcher.keep_idle_for), so a host whose work is done leaves
no idle socket behind, and a host with more work queued reuses its connection.

All of this is synchronous state change between awaits; the only awaits are the waits of
``get`` (nothing runnable) and ``put`` (queue full), implemented with plain futures.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable
from itertools import count

from crawler.limiter import HostState, HostTable
from crawler.task import Item
from crawler.wakeups import Waiters, Wakeups


class Frontier:
    def __init__(
        self,
        maxsize: int,
        hosts: HostTable,
        *,
        on_idle: Callable[[], None] | None = None,
        on_host_bound: Callable[[], None] | None = None,
        checks_first: bool = False,
    ) -> None:
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
        self._getters = Waiters()  # workers in get(): nothing runnable
        self._putters = Waiters()  # the reader in put(): the frontier is full
        self._input_closed = False
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        self._wakes = Wakeups(self._on_pacing_timer)  # hosts waiting for their pacer
        self._global_wait = False  # a hand-out waits for the global pacer
        # Crawl mode with robots.txt: a URL's first hand-out is for its robots check, not
        # a request, so it is not paced; the engine gives it back (``requeue``) once
        # robots.txt allows it, and its request is paced like any other.
        self.checks_first = checks_first
        # Crawl mode: called when the last request in flight ends (links may be waiting).
        self._on_idle = on_idle
        # Called once, the first time a worker has to wait while URLs are parked: the
        # per-host limit, not the number of workers, is what bounds the run then.
        self._on_host_bound = on_host_bound
        # Host name -> its last URL put and not yet handed out (see the module's docstring;
        # by name, not host key: the fetcher has the name of a URL at hand, not its key).
        self.waiting: dict[str | None, Item] = {}

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
        self.waiting[item.url.raw_host] = item
        if self._getters:
            self._getters.wake_one()
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
        self.waiting[item.url.raw_host] = item
        self._getters.wake_one()

    def close_input(self) -> None:
        """No more URLs will be put; the run ends once everything queued is done."""
        self._input_closed = True
        if self.finished:
            self._getters.wake_all()

    # -- the workers' side ----------------------------------------------------------
    def get_nowait(self) -> Item | None:
        """The next runnable URL if there is one right now (its slot held), else None."""
        if self._stopped:
            return None
        item: Item | None
        if self._hosts.paced:
            item = self._take_paced()
        elif self._ready:
            item = self._ready.popleft()
        else:
            item = self._take_queued()
        if item is None:
            return None
        if self._putters and len(self._fresh) + self._parked <= self._low_water:
            self._putters.wake_one()
        self.in_flight += 1
        if self.waiting.get(item.url.raw_host) is item and self._gated(item):
            del self.waiting[item.url.raw_host]  # its host's last URL (not a robots check)
        if self._getters and self._runnable():
            self._getters.wake_one()
        return item

    async def get(self) -> Item | None:
        """The next URL whose host has room (its slot now held), or None when done."""
        while True:
            item = self.get_nowait()
            if item is not None or self._stopped:
                return item
            if self.finished:
                self._getters.wake_all()
                return None
            # (With pacing, URLs are parked for their pacer too: the note would mislead.)
            if self._parked and self._on_host_bound is not None and not self._hosts.paced:
                hook, self._on_host_bound = self._on_host_bound, None
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

    # -- pacing -------------------------------------------------------------------------
    def _gated(self, item: Item) -> bool:
        """Whether handing out ``item`` starts a request (that the pacers must allow)."""
        return not self.checks_first or item.attempts > 0 or item.checked

    def _take_paced(self) -> Item | None:
        """``get_nowait`` when some pacer exists: only a URL whose request may start now."""
        hosts = self._hosts
        now = hosts.now()
        glob = hosts.global_pacer
        if glob is not None and glob.allowance(now) == 0:
            self._global_wait = True
            self._wakes.arm(glob.earliest(now), now)
            return None
        ready = self._ready
        while ready:
            item = ready.popleft()
            host = item.host
            assert host is not None  # noqa: S101 - a ready URL holds its host's slot
            pacer = host.pacer
            if pacer is None or not self._gated(item):
                self._start(item, host, now)
                return item
            if host.ready > 0:
                host.ready -= 1
            if pacer.allowance(now) > 0:
                self._start(item, host, now)
                return item
            # Its pacer was taken meanwhile (a new Crawl-delay): back to the front of its
            # host's queue, slot given back, until the pacer is ready.
            host.active -= 1
            item.host = None
            host.parked.appendleft(item)
            self._parked += 1
            self._wakes.schedule(host, now)
        for source in (self._due, self._fresh):
            while source:
                item = source.popleft()
                host = hosts.get(item.host_key)
                if host.has_room():
                    pacer = host.pacer
                    if pacer is None or not self._gated(item):
                        host.active += 1
                        item.host = host
                        self._start(item, host, now)
                        return item
                    if pacer.allowance(now) > host.ready:
                        if host.parked:  # its host's older URLs go first
                            host.parked.append(item)
                            item = host.parked.popleft()
                        host.active += 1
                        item.host = host
                        self._start(item, host, now)
                        return item
                    host.parked.append(item)
                    self._parked += 1
                    if host.ready == 0:  # else: the ready one's start looks again
                        self._wakes.schedule(host, now)
                    continue
                host.parked.append(item)  # host full: a request of it frees a slot
                self._parked += 1
        return None

    def _start(self, item: Item, host: HostState, now: float) -> None:
        """``item`` goes to a worker: its request starts now in both pacers."""
        if not self._gated(item):
            return
        glob = self._hosts.global_pacer
        if glob is not None:
            glob.commit(now)
        pacer = host.pacer
        if pacer is not None:
            pacer.commit(now)
            if host.parked:
                self._kick(host, now)

    def _kick(self, host: HostState, now: float) -> None:
        """Move URLs parked on ``host`` to ``ready``, as many as its free slots and its
        pacer allow now; if the pacer holds the rest back, look again when it is ready."""
        pacer = host.pacer
        parked = host.parked
        allowed = pacer.allowance(now) - host.ready if pacer is not None else 0
        while parked and host.has_room():
            item = parked[0]
            if pacer is not None and self._gated(item):
                if allowed <= 0:
                    if host.ready == 0:  # else: the ready one's start looks again
                        self._wakes.schedule(host, now)
                    return
                allowed -= 1
                host.ready += 1
            parked.popleft()
            self._parked -= 1
            host.active += 1
            item.host = host
            self._ready.append(item)
            self._getters.wake_one()

    def _on_pacing_timer(self) -> None:
        now = self._hosts.now()
        wakes = self._wakes
        for host in wakes.due(now):
            if host.parked:
                self._kick(host, now)
        glob = self._hosts.global_pacer
        if self._global_wait and glob is not None:
            if glob.allowance(now) > 0:
                self._global_wait = False
                if self._runnable():
                    self._getters.wake_one()
            else:
                wakes.arm(glob.earliest(now), now)
        wakes.rearm(now)

    # -- the end of a hand-out ------------------------------------------------------------
    def done(self, item: Item) -> None:
        """The worker is finished with ``item`` (its record is written)."""
        self.in_flight -= 1
        self._release_slot(item)
        if (self._input_closed or self._stopped) and self.finished:
            self._getters.wake_all()
        elif self._on_idle is not None and self.in_flight == 0:
            self._on_idle()

    def retry_later(self, item: Item, delay: float) -> bool:
        """Give up the worker and the host slot; ``item`` comes back after ``delay`` s.

        Returns False, keeping nothing, once the frontier is stopped: the caller must
        then finish the item itself (``stop()`` has already handed out what it held).
        """
        self.in_flight -= 1
        self._release_slot(item)
        if self._stopped:
            return False
        self.waiting.setdefault(item.url.raw_host, item)  # its host has work waiting again
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        heapq.heappush(self._delayed, (due, next(self._seq), item))
        if self._delayed[0][2] is item:
            self._arm_timer(due)
        return True

    def requeue(self, item: Item) -> bool:
        """Give back an unstarted URL (crawl mode: handed out for its robots.txt check,
        which allows it); it is handed out again when its host and pacers allow.

        Returns False, keeping nothing, once the frontier is stopped (as ``retry_later``).
        """
        self.in_flight -= 1
        self._release_slot(item)
        if self._stopped:
            return False
        self._due.append(item)
        self.waiting.setdefault(item.url.raw_host, item)
        self._getters.wake_one()
        return True

    def _release_slot(self, item: Item) -> None:
        host = item.host
        if host is None:
            return
        item.host = None
        host.active -= 1
        if host.parked:
            if self._hosts.paced:
                self._kick(host, self._hosts.now())
            else:
                # Hand freed slots straight to URLs parked on this host.
                while host.parked and host.has_room():
                    nxt = host.parked.popleft()
                    self._parked -= 1
                    host.active += 1
                    nxt.host = host
                    self._ready.append(nxt)
                    self._getters.wake_one()
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
            self._getters.wake_one()
        if self._delayed:
            self._arm_timer(self._delayed[0][0])

    # -- shutdown ---------------------------------------------------------------------
    def stop(self) -> list[Item]:
        """Stop handing out URLs; return every URL that was queued and not started."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wakes.clear()
        left = list(self._ready) + list(self._due) + list(self._fresh)
        left.extend(item for _, _, item in self._delayed)
        for host in list(self._hosts):
            left.extend(host.parked)
            host.parked.clear()
            host.ready = 0
        self._ready.clear()
        self._due.clear()
        self._fresh.clear()
        self._delayed.clear()
        self._parked = 0
        self.waiting.clear()
        self._getters.wake_all()
        self._putters.wake_all()
        return left
