"""The statistics of a ``--workers N`` run, as one: the workers' tallies added up (their
latency histograms merged, so the run's percentiles are exact to the bucket, never an
average of the workers'), with what only the coordinator knows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec.structs

from crawler import shards
from crawler.stats import Snapshot, Stats


class RunView(Protocol):
    """What the coordinator tells its statistics."""

    def tallies(self) -> list[dict[str, Any]]:
        """The last report of every worker (those that died included)."""
        ...

    def worker_rows(self) -> list[dict[str, Any]]: ...

    def input_lines(self) -> int | None: ...

    def lost(self) -> int: ...

    def link_counts(self) -> dict[str, int]:
        """Crawl mode: the coordinator's own counters (admitted, links waiting here,
        seeds past --max-pages, links done by an earlier run); empty otherwise."""
        ...


class RunStats(Stats):
    def __init__(self, clock: Callable[[], float], view: RunView, crawl: bool) -> None:
        super().__init__(clock, _Gauges(view, crawl))
        self._view = view
        self.left_by_coordinator = 0  # lines a worker that died during a stop left

    def snapshot(self) -> Snapshot:
        view = self._view
        tallies = view.tallies()
        shards.add_up(self, tallies)
        self.left_for_next_run += self.left_by_coordinator
        own = view.link_counts()
        self.skipped_duplicates -= own.get("over_budget", 0)
        self.skipped_done_before += own.get("done_before", 0)
        snap = super().snapshot()
        rss = snap.peak_rss_mib + sum(t.get("peak_rss_mib", 0.0) for t in tallies)
        return msgspec.structs.replace(snap, peak_rss_mib=round(rss, 1), workers=view.worker_rows())


class _Gauges:
    """The whole run's levels: the workers' summed."""

    def __init__(self, view: RunView, crawl: bool) -> None:
        self._view = view
        self._crawl = crawl

    def _sum(self, key: str) -> int:
        return sum(int(t.get(key, 0)) for t in self._view.tallies())

    def in_flight(self) -> int:
        return self._sum("in_flight")

    def queued(self) -> int:
        return self._sum("queued")

    def input_lines(self) -> int | None:
        return self._view.input_lines()

    def lost(self) -> int:
        return self._view.lost()

    def crawl_counts(self) -> dict[str, int] | None:
        if not self._crawl:
            return None
        counts: dict[str, int] = {}
        for tally in self._view.tallies():
            for key, value in (tally.get("crawl") or {}).items():
                counts[key] = counts.get(key, 0) + value
        own = self._view.link_counts()
        counts["admitted"] = own.get("admitted", 0)
        counts["links_waiting"] = counts.get("links_waiting", 0) + own.get("links_waiting", 0)
        counts["links_spilled"] = counts.get("links_spilled", 0) + own.get("links_spilled", 0)
        return counts
