"""Issue 13, numbers and messages that tell the truth: after a stop the summary's counts are
the records written, input never read is reported, the resume summary names each number
once, progress never splices into records on a shared terminal, --progress writes status
lines where stderr is not a terminal, and a circuit_open record says why the breaker opened.

CLI runs are real subprocesses against a server in this process; states are reached by
holding requests on the server (an asyncio.Event) and polling with a bound, never by
sleeping."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from crawler.breaker import Breaker
from crawler.inputs import LineSource, count_url_lines
from crawler.progress import render_summary, status_line
from crawler.stats import NoGauges, Stats
from crawler.summary import plain_text, summary_of
from tests.conftest import Server, read_records, run_engine, until
from tests.faultserver import closed_port
from tests.test_cli import ENV

CRAWLER = [sys.executable, "-m", "crawler"]


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def start(
    *args: str, stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CRAWLER, "fetch", *args,
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or ENV,
    )  # fmt: skip


async def read_records_until(
    proc: asyncio.subprocess.Process, n: int, timeout: float = 30
) -> list[dict[str, Any]]:
    """The first ``n`` records the child writes on stdout."""
    assert proc.stdout is not None
    records = []
    async with asyncio.timeout(timeout):
        while len(records) < n:
            line = await proc.stdout.readline()
            assert line, "stdout ended early"
            records.append(orjson.loads(line))
    return records


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[bytes, bytes]:
    """The rest of the child's stdout and stderr, once it has exited."""
    assert proc.stdout is not None and proc.stderr is not None
    async with asyncio.timeout(timeout):
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        await proc.wait()
    return out, err


def summary_value(err: str, label: str) -> str:
    """The value column of the summary row ``label`` (the table is plain text here)."""
    for line in err.splitlines():
        if line.strip().startswith(label):
            return line.strip()[len(label) :].strip()
    raise AssertionError(f"no {label!r} row in the summary:\n{err}")


def stopped_input(server: Server, path: Path, rest: int) -> int:
    """5 quick URLs (one repeated), 3 that hang, then ``rest`` quick ones and a repeat of
    the first of them, with blank and comment lines between: returns the number of URL
    lines."""
    quick = [server.url(f"/ok/{i}") for i in range(5)]
    hang = [server.url(f"/hang/{i}") for i in range(3)]
    tail = [server.url(f"/ok/tail/{i}") for i in range(rest)]
    lines = ["# a comment", *quick[:2], quick[0], "", *quick[2:], "   ", *hang, *tail, tail[0]]
    path.write_text("\n".join(lines) + "\n")
    return len(quick) + 1 + len(hang) + len(tail) + 1


async def interrupted_run(
    server: Server, tmp_path: Path, *extra: str
) -> tuple[int, list[dict[str, Any]], str, dict[str, Any]]:
    """SIGINT while 3 requests hang and the frontier is full: most input is still unread.
    Returns (URL lines in the input, records on stdout, stderr, --stats-json)."""
    src = tmp_path / "urls.txt"
    total = stopped_input(server, src, rest=300)
    stats = tmp_path / "stats.json"
    proc = await start(
        str(src), "-c", "3", "--queue-size", "4", "--grace", "0", "--retries", "0",
        "--stats-json", str(stats), *extra,
    )  # fmt: skip
    first = await read_records_until(proc, 5)  # the quick ones, the repeat skipped
    assert all(r["ok"] for r in first)
    await until(lambda: sum(server.rec.hits[f"/hang/{i}"] for i in range(3)) == 3)
    proc.send_signal(signal.SIGINT)
    out, err = await finish(proc)
    assert proc.returncode == 130, err
    records = first + [orjson.loads(line) for line in out.splitlines()]
    return total, records, err.decode(), orjson.loads(stats.read_bytes())


async def test_interrupt_without_state_reports_unread_input(server: Server, tmp_path: Path) -> None:
    total, records, err, stats = await interrupted_run(server, tmp_path)
    cancelled = [r for r in records if r["error"] and r["error"]["kind"] == "cancelled"]
    assert len(cancelled) >= 3  # the hanging ones at least
    unread = total - len(records) - 1  # the repeated line was read, and skipped
    assert unread > 250  # the frontier held 4, the rest was never read
    assert stats["input_not_read"] == unread
    assert stats["input_lines"] == total
    assert stats["skipped_duplicates"] == 1 and stats["skipped_done_before"] == 0
    assert stats["urls_done"] == len(records)
    assert stats["ok"] + stats["failed"] == len(records)
    assert stats["finished"] == len(records) - len(cancelled)  # throughput counts these
    assert summary_value(err, "URLs (records)") == f"{len(records):,}"
    assert summary_value(err, "input not read (no record)") == f"{unread:,} URL lines"
    assert "--state PATH" in err  # how to avoid losing them


async def test_interrupt_with_state_counts_only_records_written(
    server: Server, tmp_path: Path
) -> None:
    state = tmp_path / "run.state"
    total, records, err, stats = await interrupted_run(server, tmp_path, "--state", str(state))
    assert all(r["ok"] for r in records) and len(records) == 5  # nothing cancelled is written
    assert stats["urls_done"] == 5 and stats["ok"] == 5 and stats["failed"] == 0
    assert "cancelled" not in stats["by_error"]
    left = stats["left_for_next_run"]
    assert left >= 3  # the hanging ones, and what the frontier held
    assert stats["finished"] == 5
    assert summary_value(err, "URLs (records)") == "5"
    assert summary_value(err, "ok / failed") == "5 / 0"
    assert summary_value(err, "left for next run (--state)") == f"{left:,}"
    unread = total - 5 - 1 - left
    assert stats["input_not_read"] == unread
    assert summary_value(err, "input not read (next run)") == f"{unread:,} URL lines"

    # The resumed run: the 5 done (and the repeat of one of them) are skipped under one
    # name, the repeat of a URL fetched in this run under another.
    server.rec.release.set()
    proc = await start(str(tmp_path / "urls.txt"), "--state", str(state), "--stats-json",
                       str(tmp_path / "stats2.json"))  # fmt: skip
    out, err2 = await finish(proc)
    assert proc.returncode == 0, err2
    assert len(out.splitlines()) == total - 2 - 5
    again = orjson.loads((tmp_path / "stats2.json").read_bytes())
    assert again["skipped_done_before"] == 6 and again["skipped_duplicates"] == 1
    assert again["done_before"] == 5
    text = err2.decode()
    assert summary_value(text, "skipped: done before (--state)") == "6"
    assert summary_value(text, "skipped: duplicates") == "1"
    assert text.count("done before") == 1 and "earlier runs" not in text


async def test_interrupt_on_stdin_says_the_rest_was_not_read(
    server: Server, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.json"
    proc = await start("-", "-c", "2", "--grace", "0", "--stats-json", str(stats),
                       stdin=subprocess.PIPE)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(f"{server.url('/ok/1')}\n{server.url('/hang/1')}\n".encode())
    await proc.stdin.drain()
    await read_records_until(proc, 1)
    await until(lambda: server.rec.hits["/hang/1"] == 1)
    proc.send_signal(signal.SIGINT)  # stdin stays open: nobody knows how much more comes
    _, err = await finish(proc)
    proc.stdin.close()
    assert proc.returncode == 130
    data = orjson.loads(stats.read_bytes())
    assert data["input_not_read"] is None and data["input_rest_unread"] is True
    assert summary_value(err.decode(), "input not read (no record)") == "the rest of the input"


async def test_progress_status_lines_when_stderr_is_not_a_terminal(
    server: Server, tmp_path: Path
) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("".join(f"{server.url(f'/hang/{i}')}\n" for i in range(2)))
    env = {**ENV, "CRAWLER_PROGRESS_INTERVAL": "0.1"}
    proc = await start(str(src), "--progress", "--grace", "60", env=env)
    assert proc.stderr is not None
    seen: list[str] = []

    async def line_with(pattern: str) -> str:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
                if re.search(pattern, line):
                    return line

    await until(lambda: sum(server.rec.hits[f"/hang/{i}"] for i in range(2)) == 2)
    status = await line_with(r"2 in flight")
    assert status.startswith("crawler: ") and "0 done" in status
    proc.send_signal(signal.SIGINT)
    stopping = await line_with(r"stopping")
    assert "stopping: waiting up to " in stopping
    assert "s for 2 requests; Ctrl-C again to abort" in stopping
    proc.send_signal(signal.SIGINT)
    await finish(proc)
    assert proc.returncode == 130


def pty_run(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """The CLI with stdout and stderr on one pseudo-terminal; a thread collects what it
    shows (until the child closes its side)."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [*CRAWLER, "fetch", *args],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    shown: list[bytes] = []

    def collect() -> None:
        try:
            while chunk := os.read(master, 65536):
                shown.append(chunk)
        except OSError:  # EIO: the child's side is closed
            pass
        finally:
            os.close(master)

    threading.Thread(target=collect, daemon=True).start()
    return proc, shown


async def test_progress_never_splices_into_records_on_the_same_terminal(
    server: Server, tmp_path: Path
) -> None:
    src = tmp_path / "urls.txt"
    quick = [server.url(f"/ok/{i}") for i in range(4)]
    src.write_text("\n".join([*quick, server.url("/hang/1")]) + "\n")
    env = {**ENV, "TERM": "xterm", "COLUMNS": "200"}
    proc, shown = pty_run([str(src)], env)
    # The quick records are on the terminal while the last request hangs: a live
    # progress line, if any, has been drawn by now (rich draws one at once).
    await until(lambda: b"".join(shown).count(b'{"url"') == 4)
    server.rec.release.set()
    await until(lambda: proc.poll() is not None)
    text = b"".join(shown).decode()
    assert proc.returncode == 0, text
    records = [line for line in text.replace("\r", "").split("\n") if '"url"' in line]
    assert len(records) == 5
    for line in records:
        assert line.startswith('{"url"'), repr(line)
        orjson.loads(line)
    assert "·" not in text  # no progress line at all
    assert "crawler: done" in text  # the summary, after the records

    # Records elsewhere (-o), stderr still the terminal: the live line is there.
    server.rec.release.clear()
    src.write_text(server.url("/hang/2") + "\n")
    proc, shown = pty_run([str(src), "-o", str(tmp_path / "out.jsonl")], env)
    await until(lambda: "1 in flight" in b"".join(shown).decode(errors="replace"))
    server.rec.release.set()
    await until(lambda: proc.poll() is not None)
    assert proc.returncode == 0
    assert len(read_records(tmp_path / "out.jsonl")) == 1


async def test_circuit_open_says_why(tmp_path: Path) -> None:
    port = closed_port()
    urls = [f"http://127.0.0.1:{port}/{i}" for i in range(5)]
    _, records = await run_engine(tmp_path, urls, concurrency=1, retries=0, breaker_threshold=2)
    kinds = [r["error"]["kind"] for r in records]
    assert kinds == ["connect", "connect", "circuit_open", "circuit_open", "circuit_open"]
    last = records[1]["error"]["message"]
    assert last == "Connection refused"
    want = f"circuit open for 127.0.0.1:{port} after 2 consecutive connect errors: {last}"
    assert [r["error"]["message"] for r in records[2:]] == [want] * 3


def test_breaker_reason_names_mixed_failures() -> None:
    b = Breaker(threshold=3, cooldown=10, clock=Clock())
    b.record(True, "timeout", "deadline exceeded")
    b.record(True, "http", "HTTP 503")
    b.record(True, "connect", "Connection refused")
    assert b.reason() == (
        "after 3 consecutive failures, the last a connect error: Connection refused"
    )
    b.record(False)
    b.record(True, "http", "HTTP 502")
    assert b.reason() == "after 1 consecutive http error: HTTP 502"


def test_cancelled_with_state_is_not_a_record_nor_a_failure() -> None:
    clock = Clock()
    stats = Stats(clock)
    stats.record(True, 200, None, 10)
    stats.cancel(recorded=False)  # --state: no record, left for the next run
    stats.cancel(recorded=True)  # no --state: a `cancelled` record
    clock.now = 2.0
    snap = stats.snapshot()
    assert (snap.urls_done, snap.ok, snap.failed) == (2, 1, 1)
    assert snap.left_for_next_run == 1 and snap.finished == 1
    assert snap.urls_per_s == 0.5  # finished URLs only


class Levels(NoGauges):
    """Fixed levels of a pipeline, for the stats to read."""

    def __init__(self, *, input_lines: int | None = None, in_flight: int = 0) -> None:
        self._lines, self._flight = input_lines, in_flight

    def input_lines(self) -> int | None:
        return self._lines

    def in_flight(self) -> int:
        return self._flight


def test_input_fraction_and_eta_count_urls_not_bytes() -> None:
    clock = Clock()
    stats = Stats(clock, Levels(input_lines=1000))
    # A resume: 400 done before, 300 of them already skipped, 100 fetched in 10 s.
    stats.done_before = 400
    stats.skipped_done_before = 300
    for _ in range(100):
        stats.record(True, 200, None, 0)
    clock.now = 10.0
    snap = stats.snapshot()
    assert snap.input_fraction == 0.4  # (100 records + 300 skipped) / 1000 lines
    # Left to fetch: 1000 - 400 dealt with - 100 still to skip = 500, at 10 URLs/s.
    assert snap.eta_s == 50.0
    assert "input 40%" in status_line(snap) and "ETA 0m50s" in status_line(snap)


def test_stopping_progress_line() -> None:
    clock = Clock()
    stats = Stats(clock, Levels(in_flight=3))
    stats.stopping = "signal"
    stats.stop_deadline = 4.2
    line = status_line(stats.snapshot())
    assert line.startswith("stopping: waiting up to 5 s for 3 requests; Ctrl-C again to abort")


def test_resume_summary_names_each_number_once() -> None:
    stats = Stats(Clock())
    # A number no other row can show (peak RSS, latency... hold digits of their own).
    stats.done_before = 987_654
    stats.skipped_done_before = 987_654
    console = Console(record=True, width=120, file=io.StringIO())
    render_summary(stats.snapshot(), console, state=True)
    text = console.export_text()
    assert text.count("987,654") == 1, text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xef\xbb\xbfhttp://a/\r\nhttp://b/",
        b"# c\n\n   \n\t#x\nhttp://a/\n  http://b/  \n\r\n#\n",
        b"x" * 600_000 + b"\nhttp://a/\n" + b" " * 300_000 + b"y\n",
        b"\n".join(b"http://h/%d" % i for i in range(100_000)),
    ],
)
async def test_counted_lines_are_the_lines_read(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(data)
    source = LineSource(str(path))
    source.open()
    got = sum([len(batch) async for batch in source.batches()])
    fd = os.open(path, os.O_RDONLY)
    try:
        assert count_url_lines(fd) == got == source.lines_total
    finally:
        os.close(fd)


def test_plain_summary_is_the_terminals_table_without_styles() -> None:
    """A stderr that is not a terminal gets the summary as plain text, written without
    rich (crawler.summary): the same lines rich lays out, trailing spaces apart."""
    stats = Stats(Clock())
    stats.done_before = 12
    stats.skipped_done_before = 3
    snap = stats.snapshot()
    console = Console(record=True, width=200, file=io.StringIO())
    render_summary(snap, console, interrupted=True)
    laid_out = [line.rstrip() for line in console.export_text().splitlines()]
    assert plain_text(summary_of(snap, interrupted=True)).splitlines() == laid_out
