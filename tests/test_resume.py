"""--state: crash-consistent resume. Real subprocesses, killed at seeded random moments."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, until
from tests.test_cli import ENV, run

CRAWLER = [sys.executable, "-m", "crawler"]


def write_urls(server: Server, path: Path, n: int, delay: float = 0.02) -> list[str]:
    urls = [server.url(f"/slow/{i}?s={delay}") for i in range(n)]
    # Some duplicates and an invalid line: they must come out exactly once too.
    path.write_text("\n".join([*urls, urls[0], urls[1], "not a url"]) + "\n")
    return [*urls, "not a url"]


def parse_output(data: bytes) -> list[dict[str, object]]:
    assert not data or data.endswith(b"\n"), "torn last line"
    return [orjson.loads(line) for line in data.splitlines()]


async def start(
    *args: str, stdout: int | None = None, command: str = "fetch"
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CRAWLER,
        command,
        *args,
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )


async def run_or_kill(args: tuple[str, ...], seconds: float, command: str = "fetch") -> bool:
    """Run the CLI; SIGKILL it after ``seconds``. True if it ended by itself first."""
    proc = await start(*args, command=command)
    try:
        await asyncio.wait_for(proc.wait(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return True


def uncommitted_tail(state: Path, out: Path) -> bool:
    """Does the output hold bytes the state has not committed (resume will cut them)?"""
    if not (state.exists() and out.exists()):
        return False
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
            (committed,) = db.execute("SELECT offset FROM output").fetchone()
    except sqlite3.Error:  # informative only: a state this helper cannot read says nothing
        return False
    return bool(out.stat().st_size > committed)


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


async def kill_after_progress(
    args: tuple[str, ...], out: Path, extra: float, command: str = "fetch", bound: float = 30
) -> bool:
    """Run the CLI until it has written new records to ``out`` (polled, within ``bound``
    seconds), then SIGKILL it ``extra`` seconds later. True if it ended by itself first.

    Waiting for its own progress puts every kill in the middle of real work (not in the
    interpreter's start-up, whatever the machine's load): the records being written, the
    batch being committed, the next requests in flight."""
    before = size(out)
    proc = await start(*args, command=command)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    try:
        while size(out) <= before:
            if loop.time() > deadline:
                raise AssertionError(f"no new records within {bound} s")
            try:
                await asyncio.wait_for(proc.wait(), 0.02)
            except TimeoutError:
                continue
            return True  # it ended before writing anything new (nothing was left to do)
        await asyncio.wait_for(proc.wait(), extra)
    except TimeoutError:
        return False
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return True


TORN = b'{"url":"http://torn.invalid/","fin'  # what a kill in the middle of a write leaves


async def kill_and_resume(
    server: Server, tmp_path: Path, kills: int, seed: int, n: int = 3000, extra: float = 0.4
) -> None:
    rng = random.Random(seed)
    urls_path, out, state = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "st.db"
    expected = write_urls(server, urls_path, n)
    args = (str(urls_path), "-o", str(out), "--state", str(state), "-c", "10", "-q")
    killed = cut = 0
    for i in range(kills):
        if await kill_after_progress(args, out, rng.uniform(0, extra)):
            break
        killed += 1
        cut += uncommitted_tail(state, out)
        if i == 0:
            # A kill in the middle of a record's write, for certain (where a real kill
            # lands is luck): bytes past the committed offset that resume must cut.
            with out.open("ab") as fh:
                fh.write(TORN)
    proc = await start(*args)
    assert await asyncio.wait_for(proc.wait(), 45) == 0
    records = parse_output(out.read_bytes())
    urls = [r["url"] for r in records]
    assert sorted(urls) == sorted(expected), (
        f"lost {len(set(expected) - set(urls))}, duplicated {len(urls) - len(set(urls))}"
    )
    assert all(r["ok"] or r["url"] == "not a url" for r in records)
    # The server takes >= n * 20 ms / 10 workers to answer everything, far longer than a
    # run lives after its first records: the first kill at least landed mid-run.
    assert killed >= 1
    sys.stderr.write(
        f"\nkill test: {killed} kills mid-run, {len(expected)} URLs, {cut} tails left by the "
        f"kills + 1 torn on purpose, all cut; lost 0, duplicated 0\n"
    )


async def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    server: Server, tmp_path: Path
) -> None:
    await kill_and_resume(server, tmp_path, kills=6, seed=1234)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sigkill_soak_100_kills(server: Server, tmp_path: Path) -> None:
    await kill_and_resume(server, tmp_path, kills=100, seed=99, n=20000, extra=1.5)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_then_resume_on_stdout(
    server: Server, tmp_path: Path, sig: signal.Signals
) -> None:
    urls_path, state = tmp_path / "urls.txt", tmp_path / "st.db"
    expected = write_urls(server, urls_path, 600, delay=0.02)
    args = (str(urls_path), "--state", str(state), "-c", "10", "-q", "--grace", "0.2")
    proc = await start(*args, stdout=subprocess.PIPE)
    # Well under way (its handlers are installed), far from done: the server needs
    # >= 600 * 20 ms / 10 workers = 1.2 s for the rest, and the signal goes at once.
    await until(lambda: sum(server.rec.hits.values()) >= 100)
    proc.send_signal(sig)
    first, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130
    proc = await start(*args, stdout=subprocess.PIPE)
    second, _ = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0
    one, two = parse_output(first), parse_output(second)
    assert one and two
    records = one + two
    assert all(r["error"] is None or r["url"] == "not a url" for r in records)
    assert sorted(r["url"] for r in records) == sorted(expected)


async def test_state_from_another_input_is_refused(server: Server, tmp_path: Path) -> None:
    a, b, state = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "st.db"
    a.write_text(server.url("/ok/a") + "\n")
    b.write_text(server.url("/ok/b") + "\n")
    code, _, _ = await run("fetch", str(a), "--state", str(state), "-q")
    assert code == 0
    code, out, err = await run("fetch", str(b), "--state", str(state), "-q")
    assert code == 2 and out == b""
    assert b"belongs to a different run" in err and err.count(b"\n") == 1


async def test_state_that_is_not_a_state_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "st.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    code, _, err = await run("fetch", "--state", str(bogus), stdin=b"http://127.0.0.1:9/\n")
    assert code == 2 and err.startswith(b"crawler: error: cannot use --state")


async def test_resume_skips_done_urls(server: Server, tmp_path: Path) -> None:
    urls_path, state = tmp_path / "urls.txt", tmp_path / "st.db"
    urls_path.write_text("\n".join(server.url(f"/ok/{i}") for i in range(30)) + "\n")
    code, out, _ = await run("fetch", str(urls_path), "--state", str(state), "-q")
    assert code == 0 and len(out.splitlines()) == 30
    code, out, _ = await run("fetch", str(urls_path), "--state", str(state), "-q")
    assert code == 0 and out == b""
    assert sum(server.rec.hits.values()) == 30


async def test_no_dedup_with_state_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = await run("fetch", "--no-dedup", "--state", str(tmp_path / "s"), stdin=b"")
    assert code == 2 and b"--no-dedup" in err
