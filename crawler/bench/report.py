"""``crawler bench``'s report for people: a table on the terminal (``--json`` is the
report itself)."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def loop_name(use_uvloop: bool) -> str:
    """The event loop a run with ``use_uvloop`` gets: uvloop only where it is installed."""
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"


def render(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"crawler bench: {report['n']:,} URLs x {report['rounds']}", box=None)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("target", str(report["target"]))
    table.add_row("event loop", str(report["event_loop"]))
    table.add_row("concurrency", str(report["concurrency"]))
    table.add_row("URLs/s (median)", f"{report['urls_per_s']:,.0f}")
    if "baseline_urls_per_s" in report:
        table.add_row("bare aiohttp URLs/s", f"{report['baseline_urls_per_s']:,.0f}")
        table.add_row("ratio to bare aiohttp", f"{report['ratio_to_baseline']:.2f}x")
    lat = report["latency_ms"]
    table.add_row("latency p50/p95/p99", f"{lat['p50']} / {lat['p95']} / {lat['p99']} ms")
    lag = report["loop_lag_ms"]
    table.add_row("loop lag p50/p99/max", f"{lag['p50']} / {lag['p99']} / {lag['max']} ms")
    table.add_row("peak RSS", f"{report['peak_rss_mib']} MiB")
    table.add_row("retries", str(report["retries"]))
    table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none")
    console.print(table)
