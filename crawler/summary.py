"""The end-of-run summary: its rows, and their plain-text form for a standard error that is
not a terminal (a log, a pipe, CI), written without rich: loading rich to lay out a
two-column table costs a one-URL fetch ~15% of its time. On a terminal,
``crawler.progress.render_summary`` lays out the same rows with rich.
"""

from __future__ import annotations

from typing import NamedTuple

from crawler.stats import Snapshot

_UNREAD_NOTE = (
    "crawler: URLs in the input after the stop got no record; run with --state PATH"
    " to resume them by running the same command again"
)


class Summary(NamedTuple):  # not a dataclass: ~3 ms less to define, at every start
    title: str
    rows: list[tuple[str, str, str | None]]  # (label, value, rich style of the row)
    note: str | None  # a line after the table


def summary_of(
    snap: Snapshot, *, interrupted: bool = False, timed_out: bool = False, state: bool = False
) -> Summary:
    """Its counts are the records written: ``URLs (records)`` is ``ok`` + ``failed``;
    URLs that got no record (left for the next run, not read, not sent) are rows of
    their own. ``state``: the run had --state."""
    title = "crawler: done"
    if interrupted:
        title = "crawler: interrupted"
    elif timed_out:
        title = "crawler: stopped at --max-time"
    rows: list[tuple[str, str, str | None]] = []

    def row(label: str, value: str, style: str | None = None) -> None:
        rows.append((label, value, style))

    row("URLs (records)", f"{snap.urls_done:,}")
    if snap.lost:
        row("lost: records not written", f"{snap.lost:,}", "bold red")
    row("ok / failed", f"{snap.ok:,} / {snap.failed:,}")
    if snap.left_for_next_run:
        row("left for next run (--state)", f"{snap.left_for_next_run:,}")
    if snap.not_sent:
        row("not sent at --max-time (no record)", f"{snap.not_sent:,}")
    unread = _unread(snap, state)
    if unread is not None:
        row(*unread, None if state else "bold yellow")
    if snap.skipped_duplicates:
        row("skipped: duplicates", f"{snap.skipped_duplicates:,}")
    if snap.skipped_done_before:
        row("skipped: done before (--state)", f"{snap.skipped_done_before:,}")
    row("requests (retries)", f"{snap.requests:,} ({snap.retries:,})")
    row("elapsed", f"{snap.elapsed_s:.2f} s")
    row("throughput (finished)", f"{snap.urls_per_s:,.1f} URLs/s")
    lat = snap.latency_ms
    row("latency p50/p95/p99", f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms")
    lag = snap.loop_lag_ms
    row("loop lag p50/p99/max", f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f} ms")
    row("bytes", f"{snap.bytes:,}")
    for name, value in (snap.crawl or {}).items():
        row(name.replace("_", " "), f"{value:,}")
    row("peak RSS", f"{snap.peak_rss_mib:.1f} MiB")
    if snap.by_status:
        row("statuses", ", ".join(f"{k}: {v:,}" for k, v in snap.by_status.items()))
    if snap.by_error:
        row("errors", ", ".join(f"{k}: {v:,}" for k, v in snap.by_error.items()))
    note = _UNREAD_NOTE if unread is not None and not state else None
    return Summary(title, rows, note)


def plain_text(summary: Summary) -> str:
    """The table as rich lays it out with no box (title centred, labels left, values
    right), without styles, lines not wrapped and no trailing spaces."""
    rows = [("metric", "value"), *((label, value) for label, value, _ in summary.rows)]
    left = max(len(label) for label, _ in rows)
    right = max(len(value) for _, value in rows)
    width = left + right + 4
    lines = [summary.title.center(width).rstrip()]
    lines += [f" {label.ljust(left)}  {value.rjust(right)}" for label, value in rows]
    if summary.note is not None:
        lines.append(summary.note)
    return "\n".join(lines) + "\n"


def _unread(snap: Snapshot, state: bool) -> tuple[str, str] | None:
    """The row for input the stop left unread: those URLs got no record."""
    label = "input not read (next run)" if state else "input not read (no record)"
    if snap.input_rest_unread:
        return label, "the rest of the input"
    if not snap.input_not_read:
        return None
    n = snap.input_not_read
    return label, f"{n:,} URL line{'s' if n != 1 else ''}"
