"""The frontier's wake-ups: of tasks waiting in ``get``/``put`` (``Waiters``), and of hosts
whose pacer holds their parked URLs back (``Wakeups``)."""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Callable, Iterator
from itertools import count

from crawler.limiter import HostState


class Waiters(deque[asyncio.Future[None]]):
    """Futures of waiting tasks, woken in the order they came. A deque itself, so that
    ``if waiters:`` on the frontier's hot path costs no Python call; the waits stay
    inline in ``Frontier.get``/``put`` (a coroutine per wait would cost one more frame)."""

    def wake_one(self) -> None:
        while self:
            fut = self.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        while self:
            fut = self.popleft()
            if not fut.done():
                fut.set_result(None)


class Wakeups:
    """Hosts to look at again when their pacer allows their next request, by that time on
    the pacers' clock (``HostTable.now``), and one loop timer for the earliest of them, or
    of the global pacer's next start when a hand-out waits for it. What a wake-up does is
    the frontier's (``Frontier._on_pacing_timer``)."""

    __slots__ = ("_at", "_fire", "_heap", "_seq", "_timer")

    def __init__(self, fire: Callable[[], None]) -> None:
        self._heap: list[tuple[float, int, HostState]] = []
        self._seq = count()
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the armed timer fires
        self._fire = fire  # called when it does

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, host: HostState, now: float) -> None:
        """Look at ``host`` again when its pacer allows the next request (at most one
        pending wake-up per host: an earlier one replaces a later one)."""
        pacer = host.pacer
        assert pacer is not None  # noqa: S101 - only paced hosts wait for their pacer
        at = pacer.earliest(now)
        if host.wake_at is not None and host.wake_at <= at:
            return
        host.wake_at = at
        heapq.heappush(self._heap, (at, next(self._seq), host))
        self.arm(at, now)

    def arm(self, at: float, now: float) -> None:
        """Have the timer fire at ``at``, unless it is armed to fire no later already."""
        if self._timer is not None:
            if self._at <= at:
                return
            self._timer.cancel()
        self._at = at
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._fire()

    def due(self, now: float) -> Iterator[HostState]:
        """The hosts whose wake-up time has come, each taken off as it is yielded (one
        scheduled again meanwhile, and due by ``now``, comes later in the same walk)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, host = heapq.heappop(heap)
            if host.wake_at != at:
                continue  # replaced by an earlier wake-up (or the host was forgotten)
            host.wake_at = None
            yield host

    def rearm(self, now: float) -> None:
        """Arm the timer for the earliest wake-up left, if any."""
        if self._heap:
            self.arm(self._heap[0][0], now)

    def clear(self) -> None:
        """Forget every wake-up and the timer (the frontier stops)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, host in self._heap:
            host.wake_at = None
        self._heap.clear()
