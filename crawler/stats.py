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
from typing import Any, Protocol

from msgspec import Struct
from msgspec.structs import asdict

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


class Snapshot(Struct, frozen=True):
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
    duplicates: int  # skipped_duplicates + skipped_done_before (the field's old meaning)
    done_before: int  # URLs the --state file held as done when the run started
    peak_rss_mib: float
    input_fraction: float | None
    crawl: dict[str, int] | None = None  # crawl mode and storage counters
    lost: int = 0  # records made but never written (an output given up at shutdown)
    finished: int = 0  # records that are not `cancelled`: what throughput counts
    skipped_duplicates: int = 0  # input lines (crawl: links) repeating one of this run
    skipped_done_before: int = 0  # ...done by an earlier run (--state)
    left_for_next_run: int = 0  # with --state: cut off by the stop, no record, fetched on resume
    not_sent: int = 0  # --max-time without --state: queued, never sent, no record
    input_lines: int | None = None  # URL lines in the whole input, when known
    input_not_read: int | None = 0  # URL lines the stop left unread (None: not known)
    input_rest_unread: bool = False  # stopped before the end of a stdin/pipe: rest not read
    eta_s: float | None = None
    # --workers N: one row per worker (its counts, pid, restarts); None for one process.
    workers: list[dict[str, Any]] | None = None
    # The live display only (not in to_dict()): the run is stopping, and why.
    stopping: str | None = None  # "signal", "max_time" or "cut" (grace over, flushing)
    grace_left_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["stopping"], data["grace_left_s"]
        return data


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


class Gauges(Protocol):
    """Levels of the pipeline, read when a snapshot is taken (the engine provides them)."""

    def in_flight(self) -> int: ...

    def queued(self) -> int: ...

    def input_lines(self) -> int | None:
        """URL lines in the whole input, when known."""
        ...

    def lost(self) -> int: ...

    def crawl_counts(self) -> dict[str, int] | None:
        """Crawl mode and storage counters."""
        ...


class NoGauges:
    """Nothing running: every level is zero (or unknown)."""

    def in_flight(self) -> int:
        return 0

    def queued(self) -> int:
        return 0

    def input_lines(self) -> int | None:
        return None

    def lost(self) -> int:
        return 0

    def crawl_counts(self) -> dict[str, int] | None:
        return None


class Stats:
    def __init__(self, clock: Callable[[], float], gauges: Gauges | None = None) -> None:
        self._clock = clock
        self.gauges = gauges if gauges is not None else NoGauges()
        self.started = clock()
        self.done = 0
        self.ok = 0
        self.requests = 0
        self.retries = 0
        self.bytes = 0
        self.skipped_duplicates = 0  # skipped: seen earlier in this run
        self.skipped_done_before = 0  # skipped: done by an earlier run (--state)
        self.done_before = 0  # with --state: URLs done by earlier runs, all told
        self.cancelled = 0  # `cancelled` records (counted in done too)
        self.left_for_next_run = 0  # with --state: cancelled, no record (not in done)
        self.dropped = 0  # --max-time without --state: queued, never sent, no record
        self.not_read: int | None = 0  # set at the end of a stopped run
        self.rest_unread = False
        self.stopping: str | None = None
        self.stop_deadline = 0.0  # clock time the grace period ends
        self.by_status: Counter[int] = Counter()
        self.by_error: Counter[str] = Counter()
        self.latency = Histogram()
        self.loop_lag = Histogram()
        self.recent_lag = 0.0  # EWMA of loop-lag samples, seconds

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

    def cancel(self, recorded: bool) -> None:
        """A URL cut off by the stop: a `cancelled` record, or (``recorded`` False, with
        --state) none, left for the next run and counted apart from the records."""
        if recorded:
            self.record(False, None, "cancelled", 0)
            self.cancelled += 1
        else:
            self.left_for_next_run += 1

    def _progress(self, elapsed: float) -> tuple[int | None, float | None, float | None]:
        """Input lines, the fraction of them dealt with, and the time left.

        Dealt with: a record, or skipped (a duplicate, or done before). The time left is
        the lines still to fetch over the rate of finished URLs: lines done by an earlier
        run and not reached yet will be skipped at once, so they are not counted as work.
        """
        total = self.gauges.input_lines()
        if not total:
            return total, None, None
        skipped = self.skipped_duplicates + self.skipped_done_before
        handled = self.done + skipped
        fraction = min(1.0, handled / total)
        finished = self.done - self.cancelled
        if not finished or self.stopping is not None:
            return total, fraction, None
        ahead = max(0, self.done_before - self.skipped_done_before)
        left = max(0, total - handled - ahead)
        return total, fraction, left * elapsed / finished

    def snapshot(self) -> Snapshot:
        elapsed = max(1e-9, self._clock() - self.started)
        lat, lag = self.latency, self.loop_lag
        total, fraction, eta = self._progress(elapsed)
        gauges = self.gauges
        finished = self.done - self.cancelled
        grace_left = None
        if self.stopping in ("signal", "max_time"):
            grace_left = max(0.0, self.stop_deadline - self._clock())
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
            urls_per_s=round(finished / elapsed, 1),
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
            in_flight=gauges.in_flight(),
            queued=gauges.queued(),
            duplicates=self.skipped_duplicates + self.skipped_done_before,
            done_before=self.done_before,
            peak_rss_mib=round(peak_rss_mib(), 1),
            input_fraction=None if fraction is None else round(fraction, 4),
            crawl=gauges.crawl_counts(),
            lost=gauges.lost(),
            finished=finished,
            skipped_duplicates=self.skipped_duplicates,
            skipped_done_before=self.skipped_done_before,
            left_for_next_run=self.left_for_next_run,
            not_sent=self.dropped,
            input_lines=total,
            input_not_read=self.not_read,
            input_rest_unread=self.rest_unread,
            eta_s=None if eta is None else round(eta, 1),
            stopping=self.stopping,
            grace_left_s=grace_left,
        )
