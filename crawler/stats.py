"""Run statistics: counters by outcome and error kind, latency histogram, event-loop lag.

Updating is a few integer operations per URL; ``snapshot()`` builds a frozen view for the
progress display, the summary and ``--stats-json``.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

# Log-scale latency buckets: 8 per doubling from 0.1 ms to ~100 s (~9% resolution).
_BUCKETS_PER_OCTAVE = 8
_MIN_LATENCY = 1e-4
_NBUCKETS = 8 * 20


# Lower edges of buckets 1.._NBUCKETS: bucket i holds [_EDGES[i-1], _EDGES[i]), bucket 0
# what is below the first edge, the last bucket everything from its edge up.
_EDGES = [_MIN_LATENCY * 2 ** (i / _BUCKETS_PER_OCTAVE) for i in range(_NBUCKETS)]


class Histogram:
    __slots__ = ("count", "counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * (_NBUCKETS + 1)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_right(_EDGES, seconds)] += 1  # one C call: this runs per URL
        self.count += 1
        if seconds > self.max:
            self.max = seconds

    def quantile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile, in seconds (0 if empty)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                upper = _MIN_LATENCY * 2 ** (i / _BUCKETS_PER_OCTAVE)
                return min(upper, self.max)
        return self.max


@dataclass(frozen=True, slots=True)
class Snapshot:
    elapsed_s: float
    urls_done: int
    ok: int
    failed: int
    by_status: dict[str, int]
    by_error: dict[str, int]
    requests: int
    retries: int
    bytes: int
    urls_per_s: float
    latency_ms: dict[str, float]
    loop_lag_ms: dict[str, float]
    in_flight: int
    queued: int
    duplicates: int
    done_before: int
    peak_rss_mib: float
    input_fraction: float | None
    crawl: dict[str, int] | None = None  # crawl mode and storage counters
    lost: int = 0  # records made but never written (an output given up at shutdown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mib() -> float:
    """Peak resident set size of this process, MiB.

    On Linux from /proc (VmHWM): ``ru_maxrss`` survives execve, so a crawler started by a
    big parent process would report the parent's peak as its own.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class Stats:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.started = clock()
        self.done = 0
        self.ok = 0
        self.requests = 0
        self.retries = 0
        self.bytes = 0
        self.duplicates = 0  # skipped: seen earlier in this run (or done, with --state)
        self.duplicates_before = 0  # with --state: URLs done by earlier runs
        self.by_status: Counter[int] = Counter()
        self.by_error: Counter[str] = Counter()
        self.latency = Histogram()
        self.loop_lag = Histogram()
        self.recent_lag = 0.0  # EWMA of loop-lag samples, seconds
        self.in_flight: Callable[[], int] = lambda: 0
        self.queued: Callable[[], int] = lambda: 0
        self.input_fraction: Callable[[], float | None] = lambda: None
        self.crawl: Callable[[], dict[str, int] | None] = lambda: None
        self.lost: Callable[[], int] = lambda: 0

    def record(self, ok: bool, status: int | None, error_kind: str | None, nbytes: int) -> None:
        self.done += 1
        if ok:
            self.ok += 1
        if status is not None:
            self.by_status[status] += 1
        if error_kind is not None:
            self.by_error[error_kind] += 1
        self.bytes += nbytes

    async def watch_loop_lag(self, interval: float = 0.1) -> None:
        """Measure how late the event loop wakes us: the lag every URL's callbacks suffer."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            self.loop_lag.add(lag)
            self.recent_lag += 0.3 * (lag - self.recent_lag)

    def snapshot(self) -> Snapshot:
        elapsed = max(1e-9, self._clock() - self.started)
        lat, lag = self.latency, self.loop_lag
        return Snapshot(
            elapsed_s=round(elapsed, 3),
            urls_done=self.done,
            ok=self.ok,
            failed=self.done - self.ok,
            by_status={str(k): v for k, v in sorted(self.by_status.items())},
            by_error=dict(sorted(self.by_error.items())),
            requests=self.requests,
            retries=self.retries,
            bytes=self.bytes,
            urls_per_s=round(self.done / elapsed, 1),
            latency_ms={
                "p50": round(lat.quantile(0.50) * 1000, 2),
                "p95": round(lat.quantile(0.95) * 1000, 2),
                "p99": round(lat.quantile(0.99) * 1000, 2),
                "max": round(lat.max * 1000, 2),
            },
            loop_lag_ms={
                "p50": round(lag.quantile(0.50) * 1000, 2),
                "p99": round(lag.quantile(0.99) * 1000, 2),
                "max": round(lag.max * 1000, 2),
            },
            in_flight=self.in_flight(),
            queued=self.queued(),
            duplicates=self.duplicates,
            done_before=self.duplicates_before,
            peak_rss_mib=round(peak_rss_mib(), 1),
            input_fraction=self.input_fraction(),
            crawl=self.crawl(),
            lost=self.lost(),
        )
