"""Progress display and end-of-run summary, both on standard error (rich)."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from crawler.stats import Snapshot, Stats


def _line(snap: Snapshot) -> Text:
    parts = [
        f"{snap.urls_done:,} done",
        f"{snap.urls_per_s:,.0f}/s",
        f"{snap.in_flight} in flight",
        f"{snap.queued:,} queued",
        f"{snap.failed:,} failed",
    ]
    frac = snap.input_fraction
    eta = None
    if frac is not None and frac >= 1.0 and snap.urls_per_s > 0:
        # The whole input is read: what is left is what is queued or in flight.
        eta = (snap.queued + snap.in_flight) / snap.urls_per_s
    elif frac is not None and 0 < frac < 1 and snap.urls_done:
        eta = snap.elapsed_s * (1 - frac) / frac
    if frac is not None:
        parts.append(f"input {min(frac, 1.0):.0%}")
    if eta is not None:
        parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    return Text(" · ".join(parts))


async def show_progress(stats: Stats, console: Console, interval: float = 0.25) -> None:
    """Refresh a one-line live view until cancelled. stdout is never touched."""
    with Live(
        _line(stats.snapshot()),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=True,
        auto_refresh=False,
    ) as live:
        while True:
            await asyncio.sleep(interval)
            live.update(_line(stats.snapshot()), refresh=True)


def render_summary(
    snap: Snapshot, console: Console, *, interrupted: bool = False, timed_out: bool = False
) -> None:
    title = "crawler: done"
    if interrupted:
        title = "crawler: interrupted"
    elif timed_out:
        title = "crawler: stopped at --max-time"
    table = Table(title=title, box=None)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("URLs", f"{snap.urls_done:,}")
    if snap.lost:
        table.add_row("lost: records not written", f"{snap.lost:,}", style="bold red")
    table.add_row("ok / failed", f"{snap.ok:,} / {snap.failed:,}")
    table.add_row("requests (retries)", f"{snap.requests:,} ({snap.retries:,})")
    if snap.duplicates:
        table.add_row("skipped (duplicate or done before)", f"{snap.duplicates:,}")
    if snap.done_before:
        table.add_row("done by earlier runs (--state)", f"{snap.done_before:,}")
    table.add_row("elapsed", f"{snap.elapsed_s:.2f} s")
    table.add_row("throughput", f"{snap.urls_per_s:,.1f} URLs/s")
    lat = snap.latency_ms
    table.add_row(
        "latency p50/p95/p99", f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms"
    )
    lag = snap.loop_lag_ms
    table.add_row(
        "loop lag p50/p99/max", f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f} ms"
    )
    table.add_row("bytes", f"{snap.bytes:,}")
    for name, value in (snap.crawl or {}).items():
        table.add_row(name.replace("_", " "), f"{value:,}")
    table.add_row("peak RSS", f"{snap.peak_rss_mib:.1f} MiB")
    if snap.by_status:
        table.add_row("statuses", ", ".join(f"{k}: {v:,}" for k, v in snap.by_status.items()))
    if snap.by_error:
        table.add_row("errors", ", ".join(f"{k}: {v:,}" for k, v in snap.by_error.items()))
    console.print(table)
