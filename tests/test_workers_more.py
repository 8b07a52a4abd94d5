"""--workers N: README's promises the first tests left out, end to end.

``--workers auto`` (one worker per usable core), a second SIGINT that cuts the grace
period, ``crawl --depth`` across workers, resume after a SIGKILL with another number of
workers (fetch and crawl), and ``--warc /dev/stdout`` refused. Real
subprocesses against loopback servers, as tests/test_workers.py (whose helpers these use).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.conftest import HOSTS, Server, marked_env, marked_processes, serve_hosts, until
from tests.test_workers import (
    CRAWLER,
    SEEDED,
    _crawl,
    _once,
    _records,
    _serve_tree,
    _start,
    _tree,
    _tree_app,
    _urls,
)


def _pending(pid: int, sig: int) -> bool:
    """Is ``sig`` sent to ``pid`` but not yet delivered to it (its handler not yet run)?"""
    bit = 1 << (sig - 1)
    with open(f"/proc/{pid}/status") as fh:
        fields = dict(line.split(":", 1) for line in fh if ":" in line)
    return any(int(fields[name].strip(), 16) & bit for name in ("SigPnd", "ShdPnd"))


async def _ended(proc: asyncio.subprocess.Process, timeout: float) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- 1. --workers auto ----------------------------------------------------------------------
def _on_cores(cores: set[int]) -> Callable[[], None]:
    """For preexec_fn: the child may run on ``cores`` only (and so may its children)."""

    def pin() -> None:
        os.sched_setaffinity(0, cores)

    return pin


async def test_workers_auto_runs_one_worker_per_usable_core(server: Server, tmp_path: Path) -> None:
    """Allowed one core (sched_setaffinity), auto runs one process (no `workers` rows);
    allowed two, one worker per core. -c is large enough not to cap N."""
    usable = sorted(os.sched_getaffinity(0))
    urls = _urls(server, "/ok", 4)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    for cores in ({usable[0]}, set(usable[:2])):  # two at most: CI may have many cores
        out, stats = tmp_path / f"out{len(cores)}.jsonl", tmp_path / f"stats{len(cores)}.json"
        args = ("fetch", str(src), "--workers", "auto", "-c", "256", "-q", "-o", str(out))
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, *args, "--stats-json", str(stats),
            env=SEEDED, stderr=subprocess.PIPE,
            preexec_fn=_on_cores(cores),
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert set(_once(_records(out))) == set(urls)
        rows = orjson.loads(stats.read_bytes())["workers"]
        if len(cores) == 1:
            assert rows is None  # one process: no coordinator
        else:
            assert [row["worker"] for row in rows] == list(range(len(cores)))


# -- 2. a second signal ---------------------------------------------------------------------
async def test_a_second_sigint_cuts_the_workers_grace_period(
    server: Server, tmp_path: Path
) -> None:
    """Every request is held by the server and --grace is a minute: only the second
    SIGINT can end the run within the test's bound. Each URL one record, none torn."""
    urls = _urls(server, "/hang", 4)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out.jsonl"
    env, token = marked_env(SEEDED)
    proc = await _start(
        tmp_path, str(src), "--workers", "2", "-c", "20", "--grace", "60",
        "-o", str(out), "-q", env=env,
    )  # fmt: skip
    try:
        await until(lambda: sum(server.rec.hits.values()) == len(urls), 30)
        proc.send_signal(signal.SIGINT)
        await until(lambda: not _pending(proc.pid, signal.SIGINT), 10)  # two, not one merged
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 130, (tmp_path / "err.txt").read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    records = _records(out)
    assert set(_once(records)) == set(urls)
    assert all(r["error"]["kind"] == "cancelled" for r in records)  # type: ignore[index]
    await until(lambda: not marked_processes(token), 10)
    assert sum(server.rec.hits.values()) == len(urls)


# -- 3. crawl --depth across workers --------------------------------------------------------
@contextlib.asynccontextmanager
async def _counted_tree(size: int, hits: Counter[str]) -> AsyncIterator[dict[str, int]]:
    """_serve_tree's site, counting each URL the server is asked for."""
    ports: dict[str, int] = {}

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits[f"http://{request.host}{request.path_qs}"] += 1
        return await handler(request)

    app = _tree_app(size, ports, 0.0)
    app.middlewares.append(count)
    async with serve_hosts(app, ports):
        yield ports


@pytest.mark.parametrize("depth", [1, 2])
async def test_crawl_depth_holds_across_workers(tmp_path: Path, depth: int) -> None:
    """/x/N is N's level in the tree deep from a seed, and every link crosses to the next
    host (so to another worker as often as not): the pages of levels 0..depth are fetched,
    each once, and no page below them is ever asked for."""
    hits: Counter[str] = Counter()
    out = tmp_path / "out.jsonl"
    async with _counted_tree(100, hits) as ports:
        seeds = [f"http://{h}:{ports[h]}/x/0" for h in HOSTS]
        proc = await asyncio.create_subprocess_exec(
            *_crawl(*seeds, "--workers", "2", "--depth", str(depth), "-o", str(out)),
            env=SEEDED, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        every = _tree(100, ports)
    expected = {url for url in every if int(url.rpartition("/")[2]) < 2 ** (depth + 1) - 1}
    assert set(_once(_records(out))) == expected
    assert hits == Counter(expected)


# -- 4. resume with another number of workers -----------------------------------------------
def _committed(state: Path) -> int:
    """The bytes of the output a --state file has committed (0: none yet, or no file)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT offset FROM output WHERE id = 1").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 3)])
async def test_sigkilled_then_resumed_with_other_workers_every_url_once(
    server: Server, tmp_path: Path, before: int, after: int
) -> None:
    """Killed once the state has committed records (every second), so the resumed run
    must skip those, whatever N wrote them, and redo the uncommitted tail it cuts off."""
    urls = [u + "?s=0.05" for u in _urls(server, "/slow", 80)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out, state = tmp_path / "out.jsonl", tmp_path / "run.state"
    common = ("-o", str(out), "--state", str(state), "-q", "-c", "6")
    env, token = marked_env(SEEDED)
    proc = await _start(tmp_path, str(src), *common, "--workers", str(before), env=env)
    try:
        await until(lambda: _committed(state) > 0, 30)
    finally:
        proc.kill()
        await proc.wait()
    await until(lambda: not marked_processes(token), 15)
    proc = await _start(tmp_path, str(src), *common, "--workers", str(after))
    assert await _ended(proc, 60) == 0, (tmp_path / "err.txt").read_text()
    records = _records(out)
    assert set(_once(records)) == set(urls)
    assert not any(r["error"] for r in records)


async def test_a_crawl_stopped_with_two_workers_resumes_with_one(tmp_path: Path) -> None:
    out, state = tmp_path / "out.jsonl", tmp_path / "run.state"
    async with _serve_tree(240, delay=0.01) as ports:
        seeds = [f"http://{h}:{ports[h]}/x/0" for h in HOSTS]
        args = _crawl(*seeds, "-c", "4", "-o", str(out), "--state", str(state))
        with open(tmp_path / "err.txt", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *args, "--workers", "2", env=SEEDED, stderr=err
            )
        await until(lambda: out.exists() and out.stat().st_size > 2000, 30)  # else: reaped
        proc.send_signal(signal.SIGINT)
        assert await _ended(proc, 30) == 130
        assert _records(out)  # none torn
        with open(tmp_path / "err.txt", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *args, "--workers", "1", env=SEEDED, stderr=err
            )
        assert await _ended(proc, 60) == 0, (tmp_path / "err.txt").read_text()
        expected = _tree(240, ports)
    records = _records(out)
    assert set(_once(records)) == expected
    assert not any(r["error"] for r in records)


# -- 5. --warc to a stream ------------------------------------------------------------------
def test_warc_to_stdout_redirected_to_a_file_is_refused_with_workers(tmp_path: Path) -> None:
    """/dev/stdout is a regular file when stdout is redirected to one: still a stream to
    N writers, and the workers' names would be /dev/stdout-w0, ... : refused."""
    with open(tmp_path / "out.warc", "wb") as out:
        done = subprocess.run(
            [*CRAWLER, "fetch", "http://127.0.0.1:9/", "--workers", "2", "--warc", "/dev/stdout",
             "-o", str(tmp_path / "records.jsonl")],
            stdout=out, stderr=subprocess.PIPE, env=SEEDED, cwd=tmp_path, timeout=15,
        )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--warc" in lines[0] and "workers" in lines[0], lines
    assert not os.path.exists("/dev/stdout-w0") and not os.path.exists("/dev/stdout-w1")
    assert (tmp_path / "out.warc").read_bytes() == b""
