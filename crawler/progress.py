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
from crawler.summary import summary_of

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
    """The end-of-run table (``crawler.summary``), laid out by rich."""
    summary = summary_of(snap, interrupted=interrupted, timed_out=timed_out, state=state)
    table = Table(title=summary.title, box=None)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for label, value, style in summary.rows:
        table.add_row(label, value, style=style)
    console.print(table)
    if summary.note is not None:
        console.print(summary.note, soft_wrap=True, highlight=False)
