"""Progress display and end-of-run summary, both on standard error (rich).

On a terminal the progress is one live line, redrawn in place; anywhere else (nohup, CI
logs) it is a plain status line every few seconds, and at once when the run starts to
stop. When records go to the same terminal, there is no progress at all during the run
(see cli/run.py): a line redrawn in place cannot share a terminal with lines written by
another writer without splicing into them.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import stat

from rich.console import Console
from rich.table import Table
from rich.text import Text

from crawler.stats import Snapshot, Stats

_LIVE_INTERVAL = 0.25


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _stopping(snap: Snapshot) -> str | None:
    """What the run is waiting for, once it was told to stop."""
    if snap.stopping == "cut":
        return "stopping: writing the last records"
    if snap.stopping is None or snap.grace_left_s is None:
        return None
    wait = (
        f"waiting up to {math.ceil(snap.grace_left_s)} s for {snap.in_flight:,} "
        f"request{'s' if snap.in_flight != 1 else ''}"
    )
    if snap.stopping == "max_time":
        return f"--max-time reached: {wait}"
    return f"stopping: {wait}; Ctrl-C again to abort"


def status_line(snap: Snapshot) -> str:
    """The one-line progress: counts of records, rate of finished URLs, input and ETA."""
    parts = [
        f"{snap.urls_done:,} done",
        f"{snap.urls_per_s:,.0f}/s",
        f"{snap.in_flight:,} in flight",
        f"{snap.queued:,} queued",
        f"{snap.failed:,} failed",
    ]
    skipped = snap.skipped_duplicates + snap.skipped_done_before
    if skipped:
        parts.append(f"{skipped:,} skipped")
    stopping = _stopping(snap)
    if stopping is not None:
        return " · ".join([stopping, *parts])
    if snap.input_fraction is not None:
        parts.append(f"input {snap.input_fraction:.0%}")
    if snap.eta_s is not None:
        parts.append(f"ETA {_duration(snap.eta_s)}")
    return " · ".join(parts)


async def show_progress(stats: Stats, console: Console, interval: float = 5.0) -> None:
    """Until cancelled: a live line on a terminal, else a status line every ``interval``
    seconds (and one as soon as the run starts to stop). stdout is never touched."""
    if console.is_terminal:
        await _live(stats, console)
    else:
        await _status_lines(stats, console, interval)


async def _live(stats: Stats, console: Console) -> None:
    from rich.live import Live  # a terminal's live line only; the summary needs none

    with Live(
        Text(status_line(stats.snapshot())),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
        transient=True,
        auto_refresh=False,
    ) as live:
        while True:
            await asyncio.sleep(_LIVE_INTERVAL)
            live.update(Text(status_line(stats.snapshot())), refresh=True)


async def _status_lines(stats: Stats, console: Console, interval: float) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    stopping = stats.stopping
    while True:
        # Looked at often, written rarely: a stop is reported at once.
        await asyncio.sleep(min(_LIVE_INTERVAL, interval))
        if loop.time() < due and stats.stopping == stopping:
            continue
        due = loop.time() + interval
        stopping = stats.stopping
        snap = stats.snapshot()
        if _writable(console):
            line = f"crawler: {_duration(snap.elapsed_s)} · {status_line(snap)}"
            console.print(Text(line), soft_wrap=True, highlight=False)


def _writable(console: Console) -> bool:
    """Would a status line go out without blocking the event loop? A pipe or FIFO nobody
    reads (``2>&1 | less`` left open) fills up: the line is skipped, not waited for.
    A short line into a pipe with room for it is written whole (PIPE_BUF)."""
    try:
        fd = console.file.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return True
        return bool(select.select([], [fd], [], 0)[1])
    except (OSError, ValueError, AttributeError):  # no descriptor: a test's capture
        return True


def render_summary(
    snap: Snapshot,
    console: Console,
    *,
    interrupted: bool = False,
    timed_out: bool = False,
    state: bool = False,
) -> None:
    """The end-of-run table. Its counts are the records written: ``URLs (records)`` is
    ``ok`` + ``failed``; URLs that got no record (left for the next run, not read, not
    sent) are rows of their own. ``state``: the run had --state."""
    title = "crawler: done"
    if interrupted:
        title = "crawler: interrupted"
    elif timed_out:
        title = "crawler: stopped at --max-time"
    table = Table(title=title, box=None)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("URLs (records)", f"{snap.urls_done:,}")
    if snap.lost:
        table.add_row("lost: records not written", f"{snap.lost:,}", style="bold red")
    table.add_row("ok / failed", f"{snap.ok:,} / {snap.failed:,}")
    if snap.left_for_next_run:
        table.add_row("left for next run (--state)", f"{snap.left_for_next_run:,}")
    if snap.not_sent:
        table.add_row("not sent at --max-time (no record)", f"{snap.not_sent:,}")
    unread = _unread(snap, state)
    if unread is not None:
        table.add_row(*unread, style="bold yellow" if not state else None)
    if snap.skipped_duplicates:
        table.add_row("skipped: duplicates", f"{snap.skipped_duplicates:,}")
    if snap.skipped_done_before:
        table.add_row("skipped: done before (--state)", f"{snap.skipped_done_before:,}")
    table.add_row("requests (retries)", f"{snap.requests:,} ({snap.retries:,})")
    table.add_row("elapsed", f"{snap.elapsed_s:.2f} s")
    table.add_row("throughput (finished)", f"{snap.urls_per_s:,.1f} URLs/s")
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
    if unread is not None and not state:
        console.print(
            "crawler: URLs in the input after the stop got no record; run with --state PATH"
            " to resume them by running the same command again",
            soft_wrap=True,
            highlight=False,
        )


def _unread(snap: Snapshot, state: bool) -> tuple[str, str] | None:
    """The row for input the stop left unread: those URLs got no record."""
    label = "input not read (next run)" if state else "input not read (no record)"
    if snap.input_rest_unread:
        return label, "the rest of the input"
    if not snap.input_not_read:
        return None
    n = snap.input_not_read
    return label, f"{n:,} URL line{'s' if n != 1 else ''}"
