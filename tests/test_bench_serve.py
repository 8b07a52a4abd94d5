"""`crawler serve` and `crawler bench`: they start, report, and clean up after themselves."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
from warcio.archiveiterator import ArchiveIterator

from tests.conftest import marked_env, marked_processes, until
from tests.test_cli import ENV, run


async def run_marked(*args: str, timeout: float = 45) -> tuple[int, bytes, bytes, str]:
    """Run the CLI with a marker in its environment that its children inherit."""
    env, token = marked_env(ENV)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err, token


async def test_bench_json_reports_and_stops_its_server() -> None:
    code, out, err, token = await run_marked(
        "bench", "--json", "-n", "2000", "-c", "20", "--compare"
    )
    assert code == 0, err.decode()
    report = orjson.loads(out)
    assert report["ok"] == 2000 and report["errors"] == {}
    assert report["urls_per_s"] > 0 and report["baseline_urls_per_s"] > 0
    assert report["ratio_to_baseline"] > 0
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    assert report["peak_rss_mib"] > 0
    # The embedded server was stopped: no process this bench started is left behind
    # (found by the marker in their environment: other programs' processes are not ours;
    # polled, bounded: a process that was told to stop may take a moment to be gone).
    await until(lambda: marked_processes(token) == [], timeout=15)


async def test_bench_against_a_target_with_errors() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "serve", "--port", "0", "--error-rate", "0.2",
        "--retry-after", "0", stdout=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        prefix = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        code, out, err = await run("bench", "--json", "-n", "500", "--target", prefix)
        report = orjson.loads(out)
        assert report["target"] == prefix
        assert report["retries"] > 0  # the injected 503s were retried
        # bench did not inject them (the target did): a 503 that outlived its retries
        # makes the figures those of failures, said so with exit status 1.
        assert code == (1 if report["errors"] else 0), err.decode()
    finally:
        proc.terminate()
        await proc.wait()


async def test_serve_answers_and_stops_cleanly_on_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crawler", "serve", "--port", "0", "--host", "127.0.0.1",
            "--host", "127.0.0.2", "--workers", "2",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        first, second = line.split(", ")
        async with aiohttp.ClientSession() as session:
            for base in (first, second):
                async with session.get(f"{base}/page/1") as resp:
                    assert resp.status == 200 and len(await resp.read()) == 512
            async with session.get(f"{first}/status/418") as resp:
                assert resp.status == 418
            async with session.get(f"{first}/redirect/3") as resp:
                assert resp.status == 200 and len(resp.history) == 3
        proc.send_signal(sig)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err


async def test_serve_bad_options_are_usage_errors() -> None:
    code, _, err = await run("serve", "--latency-dist", "weird", "--port", "0")
    assert code == 2 and err.startswith(b"crawler: error:")


async def test_bench_ctrl_c_stops_its_server() -> None:
    env, token = marked_env(ENV)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "bench", "-n", "5000000", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip

    def server_started() -> bool:
        return any(pid != proc.pid and " serve " in cmd for pid, cmd in marked_processes(token))

    try:
        await until(server_started)
    except AssertionError:
        proc.kill()
        await proc.communicate()
        raise
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130
    assert b"Traceback" not in err
    await until(lambda: marked_processes(token) == [], timeout=15)  # its server stopped too


async def test_bench_with_storage_and_crawl_of_the_synthetic_site(tmp_path: Path) -> None:
    bodies, warc = tmp_path / "bodies", tmp_path / "b.warc.gz"
    code, out, err = await run(
        "bench", "--json", "-n", "300", "-c", "10", "--save-dir", str(bodies), "--warc", str(warc)
    )
    assert code == 0, err.decode()
    assert orjson.loads(out)["ok"] == 300
    assert len([p for p in bodies.rglob("*") if p.is_file()]) == 300  # /unique/: 300 bodies
    with warc.open("rb") as fh:
        assert sum(r.rec_type == "response" for r in ArchiveIterator(fh)) == 300
    # The embedded server's /site/<n> is a site to crawl: 111 pages below ?size=111.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "serve", "--port", "0", stdout=subprocess.PIPE, env=ENV
    )
    try:
        assert proc.stdout is not None
        prefix = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        code, out, _ = await run("crawl", f"{prefix}/site/0?size=111", "-q")
    finally:
        proc.terminate()
        await proc.wait()
    records = [orjson.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == 111 and all(r["ok"] for r in records)
    assert max(r["depth"] for r in records) == 2
