"""Concurrency and pacing: the dynamic semaphore, per-host slots, RPS pacers, AIMD.

Concurrency model (read this before changing the frontier or the engine):

- ``-c`` workers exist; a ``DynamicSemaphore`` caps how many of them hold a request at
  once and can be resized while running (the adaptive controller shrinks it when the
  event loop lags, i.e. when more concurrency would only add queueing in our own process).
- Per host, ``HostState.active`` counts requests in flight and ``HostState.limit`` caps
  it (``--per-host``, lowered and raised by the AIMD controller with ``--adaptive``).
  These are plain integers changed without awaiting in between, so no lock is needed.
- Pacing uses GCRA (a token bucket expressed as a "theoretical arrival time"). Nothing
  sleeps in a pacer: the frontier asks whether a host's pacer (and the global one) allows
  a request now (``Pacer.allowance``), hands a URL to a worker only then, and commits
  both pacers at that moment (``Pacer.commit``, start = now). A URL whose pacer is not
  ready stays in the frontier, parked on its host, until ``Pacer.earliest``.
  The default burst is 1: "N requests/s" means requests at least 1/N s apart.

Per-host state is dropped when the host is idle and has nothing worth remembering (see
``HostTable.sweep``), so a list of a million hosts does not grow memory without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from crawler import errors
from crawler.breaker import Breaker
from crawler.config import BreakerConfig, LimitConfig

# Outcomes that count against a host's breaker: the host itself looks unwell. 4xx do not.
_HOST_FAILURES: Final = (
    errors.ConnectError,
    errors.DNSError,
    errors.Timeout,
    errors.TLSError,
    errors.ProtocolError,
)
# Outcomes that halve a host's AIMD limit (--adaptive).
_CONGESTION_STATUSES: Final = frozenset((429, 503))
_CONGESTION_ERRORS: Final = (errors.Timeout, errors.ConnectError)


class DynamicSemaphore:
    """A semaphore whose limit can change while permits are held.

    Shrinking never revokes a held permit: it just makes ``acquire`` wait until enough
    permits are released to be under the new limit.
    """

    __slots__ = ("_held", "_limit", "_waiters")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def held(self) -> int:
        return self._held

    def resize(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    def try_acquire(self) -> bool:
        """Take a permit if one is free right now, without awaiting."""
        if self._held < self._limit and not self._waiters:
            self._held += 1
            return True
        return False

    async def acquire(self) -> None:
        if self._held < self._limit and not self._waiters:
            self._held += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # We were handed a permit and then cancelled: give it back.
                self._held -= 1
                self._wake()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._held < self._limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._held += 1
                fut.set_result(None)


class Pacer:
    """GCRA rate limiter: at most ``rate``/s on average, bursts of up to ``burst``.

    With burst 1, two committed starts are never less than ``1/rate`` apart.
    """

    __slots__ = ("burst", "interval", "tat", "tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self.burst = burst
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self.tat = 0.0  # theoretical arrival time of the next conforming request

    def earliest(self, now: float) -> float:
        """When the next request may start (``now`` if it may start now)."""
        return max(now, self.tat - self.tolerance)

    def allowance(self, now: float) -> int:
        """How many requests may start at ``now``, one after another (0: wait until
        ``earliest(now)``)."""
        # The same comparison as earliest(): a wake-up set for earliest() finds the
        # pacer ready, whatever the rounding.
        first = self.tat - self.tolerance
        if first > now:
            return 0
        if self.tat <= now:
            return self.burst
        # The epsilon keeps a whole number of intervals from rounding down.
        return min(self.burst, 1 + int((now - first) / self.interval + 1e-9))

    def commit(self, start: float) -> None:
        """A request starts at ``start`` (never earlier than ``earliest``)."""
        self.tat = max(self.tat, start) + self.interval

    def idle(self, now: float) -> bool:
        return self.tat <= now


class AIMD:
    """Additive-increase / multiplicative-decrease of one host's concurrency limit, the way
    TCP runs its congestion window, with a request's latency as the round trip:

    - congestion (429, 503, timeouts, connect errors): limit halves, at most once per
      round trip (``cooldown``, by default the smoothed latency), so the burst of failures
      that one overload produces across concurrent requests counts once;
    - latency: a fast EWMA above twice a slow EWMA (and above 50 ms) is early congestion:
      limit x0.9, same pacing;
    - success: limit += 1/limit, i.e. +1 per round trip's worth of successes.
    """

    __slots__ = ("_clock", "_last_cut", "ceiling", "cooldown", "fast", "limit", "slow")

    def __init__(
        self, ceiling: int, clock: Callable[[], float], cooldown: float | None = None
    ) -> None:
        self.ceiling = float(ceiling)
        self.limit = float(ceiling)
        self._clock = clock
        self.cooldown = cooldown
        self._last_cut = float("-inf")
        self.fast = 0.0
        self.slow = 0.0

    def _cut(self, factor: float) -> None:
        now = self._clock()
        rtt = self.cooldown
        if rtt is None:
            rtt = min(1.0, max(0.01, self.fast or 0.1))
        if now - self._last_cut >= rtt:
            self._last_cut = now
            self.limit = max(1.0, self.limit * factor)

    def on_congestion(self) -> None:
        self._cut(0.5)

    def on_success(self, latency: float) -> None:
        if self.slow == 0.0:
            self.fast = self.slow = latency
        else:
            self.fast += 0.3 * (latency - self.fast)
            self.slow += 0.02 * (latency - self.slow)
        if self.fast > 2.0 * self.slow and self.fast > 0.05:
            self._cut(0.9)
        elif self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit + 1.0 / self.limit)

    @property
    def permits(self) -> int:
        return int(self.limit)

    def stale(self, now: float, memory: float = 60.0) -> bool:
        """Nothing learned recently: the host may be forgotten and start afresh."""
        return self.limit >= self.ceiling or now - self._last_cut >= memory


class HostState:
    """Everything kept per host: slots in use, parked URLs, pacer, breaker, AIMD.

    The per-host policy is asked and told through ``allow``/``refusal``, ``observe`` and
    ``abandon``: nothing outside reaches into the breaker or the AIMD controller."""

    __slots__ = (
        "active",
        "aimd",
        "breaker",
        "key",
        "limit",
        "pacer",
        "parked",
        "ready",
        "wake_at",
    )

    def __init__(
        self,
        key: str,
        limit: int,
        pacer: Pacer | None,
        breaker: Breaker | None,
        aimd: AIMD | None,
    ) -> None:
        self.key = key
        self.active = 0
        self.limit = limit
        self.pacer = pacer
        self.breaker = breaker
        self.aimd = aimd
        # The frontier's Items (typed loosely: the frontier imports this module, not the
        # other way round).
        self.parked: deque[Any] = deque()
        # Paced hosts (kept by the frontier): URLs of this host in its ready queue that
        # hold a slot and have yet to commit the pacer, and when the frontier's pacing
        # timer looks at this host again (None: not scheduled).
        self.ready = 0
        self.wake_at: float | None = None

    def has_room(self) -> bool:
        if self.aimd is not None:
            return self.active < self.aimd.permits
        return self.active < self.limit

    def allow(self) -> bool:
        """May a request go to this host now (its breaker)? True may make this attempt
        the breaker's probe: it must then be ``observe``d or ``abandon``ed."""
        breaker = self.breaker
        return breaker is None or breaker.allow()

    def refusal(self) -> str:
        """Why ``allow()`` said no: "circuit open for HOST after 5 consecutive ..."."""
        breaker = self.breaker
        return f"circuit open for {self.key} {breaker.reason() if breaker else ''}"

    def abandon(self) -> None:
        """An attempt ``allow()`` let through ended with no verdict (cancelled, or its
        URL's deadline ran out before it was sent): another request may probe."""
        if self.breaker is not None:
            self.breaker.release_probe()

    def observe(self, status: int, error: errors.FetchError | None, latency: float) -> None:
        """An attempt's outcome (``status`` 0: no response) feeds the breaker and, with
        --adaptive, the AIMD limit: congestion (429/503, timeouts, failed connects)
        halves it; a success raises it, unless latency is climbing (see AIMD)."""
        breaker = self.breaker
        if breaker is not None:
            if isinstance(error, _HOST_FAILURES):
                breaker.record(True, error.kind, error.message)
            elif status >= 500:
                breaker.record(True, "http", f"HTTP {status}")
            else:
                breaker.record(False)
        aimd = self.aimd
        if aimd is not None:
            if status in _CONGESTION_STATUSES or isinstance(error, _CONGESTION_ERRORS):
                aimd.on_congestion()
            elif error is None and status < 400:
                aimd.on_success(latency)

    def forgettable(self, now: float) -> bool:
        """Idle with nothing worth remembering: no request in flight or parked, a breaker
        and a pacer with nothing pending, an AIMD limit not cut in the last minute."""
        return (
            self.active == 0
            and not self.parked
            and (self.breaker is None or self.breaker.forgettable(now))
            and (self.pacer is None or self.pacer.idle(now))
            and (self.aimd is None or self.aimd.stale(now))
        )


class HostTable:
    """Per-host state, created on first use and dropped when forgettable."""

    def __init__(
        self, limits: LimitConfig, breaker: BreakerConfig, clock: Callable[[], float]
    ) -> None:
        self._limits = limits
        self._breaker = breaker
        self._clock = clock
        self.now = clock  # the pacers' clock (the engine's): the frontier reads it too
        self._hosts: dict[str, HostState] = {}
        # robots.txt Crawl-delay, by host key. An entry lives as long as a cached robots.txt
        # asks for it (counted in _delay_refs: several origins can share a host key), and
        # after that as long as the host itself: a host forgotten and met again has its
        # robots.txt read again, which sets the delay again. So the map is bounded by the
        # robots cache and the host table, and a delay never lapses while it applies.
        self._crawl_delays: dict[str, float] = {}
        self._delay_refs: dict[str, int] = {}
        self.global_pacer = Pacer(limits.rps, limits.burst) if limits.rps > 0 else None
        self.paced = limits.rps > 0 or limits.per_host_rps > 0 or limits.hosts.paced
        # Per-host overrides (crawler.hostrules), looked up when a host's state is made,
        # never per URL. Decided here, once: a run without any runs get() as it always did.
        self._overrides = limits.hosts if limits.hosts.limits else None
        if self._overrides is not None:
            self.get = self._get_overridden  # type: ignore[method-assign]
            self._host_pacer = self._overridden_pacer  # type: ignore[method-assign,assignment]

    def __len__(self) -> int:
        return len(self._hosts)

    def __iter__(self) -> Any:
        return iter(self._hosts.values())

    def get(self, key: str) -> HostState:
        host = self._hosts.get(key)
        if host is None:
            limits = self._limits
            host = HostState(
                key,
                limits.host_limit,
                self._host_pacer(key),
                Breaker(self._breaker.threshold, self._breaker.cooldown, self._clock)
                if self._breaker.threshold > 0
                else None,
                AIMD(limits.host_limit, self._clock) if limits.adaptive else None,
            )
            self._hosts[key] = host
        return host

    def _get_overridden(self, key: str) -> HostState:
        """``get`` in a run with per-host overrides: a host's state made with its own
        per_host (0: only the global limit) and per_host_rps, where it has them."""
        host = self._hosts.get(key)
        if host is None:
            limits = self._limits
            limit = limits.host_limit
            settings = self._overrides.find_key(key) if self._overrides is not None else None
            if settings is not None and settings.per_host is not None:
                limit = min(settings.per_host or limits.concurrency, limits.concurrency)
            host = HostState(
                key,
                limit,
                self._host_pacer(key),
                Breaker(self._breaker.threshold, self._breaker.cooldown, self._clock)
                if self._breaker.threshold > 0
                else None,
                AIMD(limit, self._clock) if limits.adaptive else None,
            )
            self._hosts[key] = host
        return host

    def _host_pacer(self, key: str, per_host_rps: float | None = None) -> Pacer | None:
        """The pacer of a host: at ``per_host_rps`` (None: --per-host-rps), slower if
        its robots.txt asks."""
        limits = self._limits
        if per_host_rps is None:
            per_host_rps = limits.per_host_rps
        delay = self._crawl_delays.get(key)
        if delay is not None:
            rate = 1.0 / delay
            if per_host_rps > 0:
                rate = min(rate, per_host_rps)
            # Crawl-delay: the site's own wish, one request per interval whatever --burst.
            return Pacer(rate, 1)
        return Pacer(per_host_rps, limits.burst) if per_host_rps > 0 else None

    def _overridden_pacer(self, key: str) -> Pacer | None:
        """``_host_pacer`` in a run with per-host overrides: a host's own rate, if set."""
        settings = self._overrides.find_key(key) if self._overrides is not None else None
        rate = settings.per_host_rps if settings is not None else None
        return HostTable._host_pacer(self, key, rate)

    def set_crawl_delay(self, key: str, delay: float) -> None:
        """robots.txt asked for ``delay`` seconds between requests to this host (one call
        per cached robots.txt that asks it; see forget_crawl_delay)."""
        self._crawl_delays[key] = delay
        self._delay_refs[key] = self._delay_refs.get(key, 0) + 1
        self.paced = True
        host = self._hosts.get(key)
        if host is not None:
            old, host.pacer = host.pacer, self._host_pacer(key)
            if old is not None and old.tat > 0 and host.pacer is not None:
                # Requests already started still count: the last one started at
                # old.tat - old.interval at the latest, the next waits the new interval.
                host.pacer.tat = old.tat - old.interval + host.pacer.interval

    def forget_crawl_delay(self, key: str) -> None:
        """A robots.txt that asked for a Crawl-delay left the cache: the delay goes once no
        cached robots.txt asks it and the host is forgotten (a live host keeps its pace)."""
        refs = self._delay_refs.pop(key, 0) - 1
        if refs > 0:
            self._delay_refs[key] = refs
        elif key not in self._hosts:
            self._crawl_delays.pop(key, None)

    def _drop(self, key: str) -> None:
        del self._hosts[key]
        if key not in self._delay_refs:
            self._crawl_delays.pop(key, None)  # no robots.txt cached asks it any more

    def waits_for_pacer(self, host: HostState) -> bool:
        """Whether a request to ``host`` waits for a pacer (the frontier's to decide)."""
        return host.pacer is not None or self.global_pacer is not None

    def release(self, host: HostState) -> None:
        """Called when a request of ``host`` ends; forgets the host at once if it can."""
        if host.active == 0 and host.forgettable(self._clock()) and host.key in self._hosts:
            self._drop(host.key)

    def sweep(self) -> int:
        """Drop every forgettable host (breakers that cooled down, pacers that caught up)."""
        now = self._clock()
        dead = [key for key, host in self._hosts.items() if host.forgettable(now)]
        for key in dead:
            self._drop(key)
        return len(dead)
