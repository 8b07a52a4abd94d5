"""The real console script, run as a subprocess against a local server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, until

CRAWLER = [sys.executable, "-m", "crawler"]
ENV = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}


async def run(
    *args: str, stdin: bytes | None = None, timeout: float = 45
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER,
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


def lines(out: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.splitlines()]


def assert_no_traceback(err: bytes) -> None:
    assert b"Traceback" not in err
    assert b"Task was destroyed" not in err
    assert b"Unclosed" not in err


async def test_stdout_carries_only_jsonl(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.url('/ok/1')}\n{server.url('/status/404')}\nnope\n")
    code, out, err = await run("fetch", str(urls), "--no-progress")
    assert code == 0
    records = lines(out)
    assert {r["url"] for r in records} == {server.url("/ok/1"), server.url("/status/404"), "nope"}
    assert b"URLs" in err  # the summary went to stderr
    assert_no_traceback(err)


async def test_stdin_and_dash(server: Server) -> None:
    data = f"{server.url('/ok/a')}\r\n# comment\n\n{server.url('/ok/b')}".encode()
    for args in (("fetch",), ("fetch", "-")):
        code, out, _ = await run(*args, "-q", stdin=data)
        assert code == 0
        assert sorted(r["url"] for r in lines(out)) == [server.url("/ok/a"), server.url("/ok/b")]


async def test_output_file_stats_json_and_quiet(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(server.url(f"/ok/{i}") for i in range(20)))
    out_path, stats_path = tmp_path / "out.jsonl", tmp_path / "stats.json"
    code, out, err = await run(
        "fetch", str(urls), "-o", str(out_path), "--stats-json", str(stats_path), "-q"
    )
    assert code == 0 and out == b"" and err == b""
    assert len(lines(out_path.read_bytes())) == 20
    stats = orjson.loads(stats_path.read_bytes())
    assert stats["urls_done"] == 20 and stats["ok"] == 20 and stats["interrupted"] is False
    assert set(stats["latency_ms"]) >= {"p50", "p95", "p99"}


async def test_fail_on_error_exit_status(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("/status/500") + "\n")
    code, _, _ = await run("fetch", str(urls), "-q", "--retries", "0")
    assert code == 0
    code, out, _ = await run("fetch", str(urls), "-q", "--retries", "0", "--fail-on-error")
    assert code == 1 and lines(out)[0]["error"]["kind"] == "http"


@pytest.mark.parametrize(
    "args",
    [
        ("fetch", "-c", "0"),
        ("fetch", "-c", "abc"),
        ("fetch", "/definitely/not/here.txt"),
        ("fetch", "--bogus"),
        ("fetch", "-H", "no colon here"),
        ("fetch", "--method", "BAD METHOD"),
        ("fetch", "--timeout", "-1"),
        ("fetch", "--max-bytes", "lots"),
        ("fetch", "--rps", "fast"),
        ("frobnicate",),
    ],
)
async def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    code, out, err = await run(*args, stdin=b"")
    assert code == 2
    assert out == b""
    assert err.count(b"\n") == 1 and err.startswith(b"crawler: error: ")
    assert_no_traceback(err)


async def test_unwritable_output_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await run("fetch", "-o", str(tmp_path / "no" / "such" / "dir.jsonl"), stdin=b"")
    assert code == 2 and err.startswith(b"crawler: error: cannot write output")
    missing = str(tmp_path / "no" / "stats.json")
    code, out, err = await run("fetch", "--stats-json", missing, stdin=b"http://127.0.0.1:9/\n")
    assert code == 2 and out == b"" and err.startswith(b"crawler: error: cannot write --stats")


async def test_version_and_help() -> None:
    code, out, _ = await run("--version")
    assert code == 0 and out.startswith(b"crawler ")
    code, out, _ = await run("fetch", "--help")
    assert code == 0
    for option in (b"--concurrency", b"--per-host-rps", b"--breaker-cooldown", b"--max-bytes"):
        assert option in out


async def test_closed_stdout_ends_quietly(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(server.url(f"/ok/{i}") for i in range(3000)))
    proc = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m crawler fetch {urls} --no-progress | head -1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert len(out.splitlines()) == 1
    assert_no_traceback(err)
    assert b"BrokenPipe" not in err


async def _interrupt(server: Server, tmp_path: Path, sig: signal.Signals) -> None:
    urls = tmp_path / "urls.txt"
    hang = [server.url(f"/hang/{i}") for i in range(5)]
    ok = [server.url(f"/ok/{i}") for i in range(5)]
    urls.write_text("\n".join(ok + hang))
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER,
        "fetch",
        str(urls),
        "--grace",
        "0.3",
        "-c",
        "10",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    await until(lambda: sum(server.rec.hits.values()) >= 10)  # every URL reached the server
    proc.send_signal(sig)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    records = {r["url"]: r for r in lines(out)}
    assert len(records) == 10
    assert all(records[u]["ok"] for u in ok)
    assert all(records[u]["error"]["kind"] == "cancelled" for u in hang)  # type: ignore[index]
    assert b"interrupted" in err
    assert_no_traceback(err)


async def test_sigint_flushes_records_and_exits_130(server: Server, tmp_path: Path) -> None:
    await _interrupt(server, tmp_path, signal.SIGINT)


async def test_sigterm_flushes_records_and_exits_130(server: Server, tmp_path: Path) -> None:
    await _interrupt(server, tmp_path, signal.SIGTERM)


async def test_a_slow_run_shows_records_promptly(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        "\n".join([server.url("/hang/slow"), *(server.url(f"/ok/{i}") for i in range(3))])
    )
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER, "fetch", str(urls), "-q", "--timeout", "3600", "--grace", "0.2",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout

    async def three_lines() -> list[bytes]:
        return [await stdout.readline() for _ in range(3)]

    try:
        # The three fast URLs are on stdout long before the hanging one ends the run
        # (the batch is flushed by time, not only when it is full or at the end): within
        # 30 s, start-up on a loaded machine included, where the hanging URL takes an hour.
        got = await asyncio.wait_for(three_lines(), 30)
        assert all(orjson.loads(line)["ok"] for line in got)
        assert proc.returncode is None
    finally:
        proc.terminate()
        await proc.communicate()
