"""Issue 12, the CLI's side: one run per state file, --state inspected before it is
touched and created atomically, outputs distinct from inputs and from each other, and
option values that would fail every request (or the machine) refused at the start.
Real subprocesses against real loopback servers."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from crawler.config import ConfigError, LimitConfig
from tests.conftest import Server, until
from tests.test_cli import ENV, assert_no_traceback

CRAWLER = [sys.executable, "-m", "crawler"]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CRAWLER,
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )


async def run(
    *args: str, stdin: bytes | None = None, timeout: float = 60
) -> tuple[int, bytes, bytes]:
    """Like tests.test_cli.run, but a run that does not end in time is killed (a serve
    that should have been refused would otherwise outlive the test)."""
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER,
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def one_error_line(err: bytes) -> None:
    assert err.startswith(b"crawler: error: ") and err.count(b"\n") == 1, err
    assert_no_traceback(err)


def holds_lock(lock: Path, pid: int) -> bool:
    try:
        return lock.read_text().startswith(f"{pid}\n")
    except FileNotFoundError:
        return False


# -- item: one run per state file ---------------------------------------------------------
@pytest.mark.timeout(300)  # three runs in a row on a loaded machine
async def test_second_run_on_a_state_file_is_refused_naming_the_first(
    server: Server, tmp_path: Path
) -> None:
    urls = [server.url(f"/hang/{i}") for i in range(6)]
    src, out, state = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "s.db"
    src.write_text("\n".join(urls) + "\n")
    # A deadline far beyond the test's: the hanging requests end only when released.
    args = ("fetch", str(src), "--state", str(state), "-o", str(out), "-q", "--timeout", "600")
    first = await start(*args)
    try:
        # The first holds the lock (and its requests hang until released).
        await until(lambda: holds_lock(Path(f"{state}.lock"), first.pid), timeout=30)
        await until(lambda: sum(server.rec.hits.values()) >= 1, timeout=30)
        code, stdout, err = await run(*args)
        assert code == 2 and stdout == b""
        one_error_line(err)
        assert b"in use by another run" in err and f"pid {first.pid}".encode() in err
        assert b"crawler fetch" in err
    finally:
        server.rec.release.set()
        _, first_err = await asyncio.wait_for(first.communicate(), 120)
    assert first.returncode == 0, first_err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    records = [orjson.loads(line) for line in data.splitlines()]
    assert sorted(r["url"] for r in records) == sorted(urls)  # each exactly once
    assert all(server.rec.hits[f"/hang/{i}"] == 1 for i in range(6))
    # The lock went with the run: the next one resumes (nothing left to do).
    code, stdout, err = await run(*args)
    assert code == 0 and err == b"", err
    assert out.read_bytes() == data


async def test_a_killed_run_leaves_no_stale_lock(server: Server, tmp_path: Path) -> None:
    src, out, state = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "s.db"
    src.write_text(server.url("/hang/a") + "\n" + server.url("/ok/b") + "\n")
    args = ("fetch", str(src), "--state", str(state), "-o", str(out), "-q")
    first = await start(*args)
    await until(lambda: holds_lock(Path(f"{state}.lock"), first.pid), timeout=30)
    first.kill()
    await first.wait()
    server.rec.release.set()
    code, _, err = await run(*args)
    assert code == 0 and err == b"", err
    assert {orjson.loads(line)["url"] for line in out.read_bytes().splitlines()} >= {
        server.url("/hang/a")
    }


# -- item: --state is inspected read-only, created atomically ------------------------------
def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    siblings = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
    return path.read_bytes(), path.stat().st_mtime_ns, siblings


@pytest.mark.parametrize("kind", ["rollback", "wal", "not-sqlite", "sqlite-header-only"])
async def test_a_foreign_state_file_is_refused_unchanged(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "other.db"
    if kind == "not-sqlite":
        path.write_bytes(b"this is not sqlite\n" * 100)
    elif kind == "sqlite-header-only":
        path.write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    else:
        db = sqlite3.connect(path)
        if kind == "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")  # even a look-alike table
        db.execute("INSERT INTO meta VALUES ('format', 'someone else')")
        db.commit()
        db.close()
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = _snapshot(path)
    code, out, err = await run("fetch", "--state", str(path), stdin=b"http://127.0.0.1:9/\n")
    assert code == 2 and out == b""
    one_error_line(err)
    assert b"not a crawler state file" in err
    assert _snapshot(path) == before  # same bytes, same mtime, no -wal/-shm beside it


async def _kill_while_creating(args: tuple[str, ...], state: Path, rng: random.Random) -> None:
    """Start a run and SIGKILL it within 30 ms of the first file of its state appearing
    (the lock, the state itself): while it creates the state file, or a little later.
    Where exactly it lands is not asserted."""
    proc = await start(*args)
    lock = Path(f"{state}.lock")
    try:
        await until(lambda: lock.exists() or state.exists() or proc.returncode is not None, 30)
        await asyncio.sleep(rng.uniform(0, 0.03))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.timeout(600)  # 16 runs in a row on a loaded machine
async def test_state_file_creation_is_atomic_under_sigkill(server: Server, tmp_path: Path) -> None:
    rng = random.Random(12)
    src = tmp_path / "urls.txt"
    urls = [server.url(f"/ok/{i}") for i in range(5)]
    src.write_text("\n".join(urls) + "\n")
    for attempt in range(8):
        state, out = tmp_path / f"s{attempt}.db", tmp_path / f"out{attempt}.jsonl"
        args = ("fetch", str(src), "--state", str(state), "-o", str(out), "-q")
        await _kill_while_creating(args, state, rng)
        if state.exists():  # only ever complete: a later run can read it
            db = sqlite3.connect(state)
            try:
                (fmt,) = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            finally:
                db.close()
            assert fmt == "crawler-state/1"
        code, _, err = await run(*args)
        assert code == 0 and err == b"", (attempt, err)
        assert sorted(orjson.loads(x)["url"] for x in out.read_bytes().splitlines()) == sorted(urls)


async def test_a_temporary_file_left_by_a_killed_creation_does_not_block(
    server: Server, tmp_path: Path
) -> None:
    src, state = tmp_path / "urls.txt", tmp_path / "s.db"
    src.write_text(server.url("/ok/1") + "\n")
    leftover = tmp_path / ".s.db.crawler-creating-k1ll3d.new"
    unrelated = tmp_path / ".s.db.mine.new"  # a name crawler never makes: left alone
    unrelated.write_bytes(b"keep")
    leftover.write_bytes(b"SQLite format 3\0" + b"\0" * 50)  # torn, as a kill leaves it
    code, out, err = await run("fetch", str(src), "--state", str(state), "-q")
    assert code == 0 and err == b"" and len(out.splitlines()) == 1
    assert not leftover.exists()  # the next run holding the lock removed it
    assert unrelated.read_bytes() == b"keep"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".s.db.mine.new", "s.db", "s.db.lock", "urls.txt"]


async def test_a_wal_without_its_database_is_refused(tmp_path: Path) -> None:
    """A stale -wal would be replayed by SQLite into a new state file."""
    state = tmp_path / "s.db"
    Path(f"{state}-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 28)
    code, _, err = await run("fetch", "--state", str(state), stdin=b"http://127.0.0.1:9/\n")
    assert code == 2
    one_error_line(err)
    assert not state.exists()


# -- item: outputs distinct from inputs and from each other --------------------------------
HEX = "ab" + "0" * 62


def _collisions() -> list[tuple[str, list[str]]]:
    return [
        ("o-is-input", ["fetch", "{in}", "-o", "{in}"]),
        ("o-is-symlink-to-input", ["fetch", "{in}", "-o", "{link}"]),
        ("o-is-hardlink-to-input", ["fetch", "{in}", "-o", "{hard}"]),
        ("stats-json-is-input", ["fetch", "{in}", "--stats-json", "{in}"]),
        ("warc-is-input", ["fetch", "{in}", "--warc", "{in}"]),
        ("crawl-seed-file-is-o", ["crawl", "{in}", "-o", "{in}"]),
        ("state-is-o-new", ["fetch", "{in}", "--state", "{d}/x", "-o", "{d}/x"]),
        ("state-is-o-existing", ["fetch", "{in}", "--state", "{old}", "-o", "{old}"]),
        ("state-is-input", ["fetch", "{in}", "--state", "{in}"]),
        ("state-wal-is-stats", ["fetch", "{in}", "--state", "{d}/s", "--stats-json", "{d}/s-wal"]),
        ("state-lock-is-o", ["fetch", "{in}", "--state", "{d}/s", "-o", "{d}/s.lock"]),
        ("warc-is-o", ["fetch", "{in}", "--warc", "{d}/w.warc.gz", "-o", "{d}/w.warc.gz"]),
        (
            "warc-rotated-is-o",
            ["fetch", "{in}", "--warc", "{d}/w.warc.gz", "-o", "{d}/w-00002.warc.gz"],
        ),
        ("o-is-stats-json", ["fetch", "{in}", "-o", "{d}/o", "--stats-json", "{d}/o"]),
        ("o-is-a-body-file", ["fetch", "{in}", "--save-dir", "{d}/b", "-o", f"{{d}}/b/ab/{HEX}"]),
    ]


@pytest.mark.parametrize(("name", "args"), _collisions(), ids=[c[0] for c in _collisions()])
async def test_colliding_paths_are_refused_before_anything_is_touched(
    server: Server, tmp_path: Path, name: str, args: list[str]
) -> None:
    src = tmp_path / "in.txt"
    content = (server.url("/ok/1") + "\n").encode()
    src.write_bytes(content)
    (tmp_path / "link.txt").symlink_to(src)
    os.link(src, tmp_path / "hard.txt")
    old = tmp_path / "old.jsonl"
    old.write_bytes(b'{"a previous":"output"}\n')
    values = {
        "in": str(src),
        "link": str(tmp_path / "link.txt"),
        "hard": str(tmp_path / "hard.txt"),
        "old": str(old),
        "d": str(tmp_path),
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = await run(*(a.format(**values) for a in args), "-q")
    assert code == 2 and out == b"", (name, err)
    one_error_line(err)
    assert b"same file" in err or b"rotates into" in err or b"body file" in err
    assert src.read_bytes() == content and old.read_bytes() == b'{"a previous":"output"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created
    assert sum(server.rec.hits.values()) == 0


async def test_distinct_paths_in_one_directory_still_work(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text(server.url("/ok/1") + "\n")
    code, _, err = await run(
        "fetch",
        str(src),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--state",
        str(tmp_path / "s.db"),
        "--stats-json",
        str(tmp_path / "stats.json"),
        "--warc",
        str(tmp_path / "w.warc.gz"),
        "--save-dir",
        str(tmp_path / "bodies"),
        "-q",
    )
    assert code == 0 and err == b"", err
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 1


# -- item: values that reach the wire ------------------------------------------------------
@pytest.mark.parametrize(
    "option",
    [
        ["-H", "X-A: a\x01b"],
        ["-H", "X-A: a\x0bb"],
        ["-H", "X-A: a\x7fb"],
        ["-H", "X-A: a\rb"],
        ["-H", "X-A: a\nX-B: c"],
        ["-H", "X\x0b: v"],
        ["-H", "\x0bX: v"],
        ["-H", "X A: v"],
        ["-H", "X(A): v"],
        ["-H", "Content-Length: 5"],
        ["-H", "Transfer-Encoding: chunked"],
        ["--user-agent", "a\r\nX: 1"],
        ["--user-agent", "a\x01b"],
    ],
    ids=repr,
)
async def test_header_values_with_control_characters_are_refused(
    server: Server, option: list[str]
) -> None:
    for command in ("fetch", "crawl"):
        code, out, err = await run(command, *option, stdin=f"{server.url('/ok/1')}\n".encode())
        assert code == 2 and out == b"", (command, err)
        one_error_line(err)
    assert sum(server.rec.hits.values()) == 0


async def test_ordinary_header_values_still_go_out(server: Server) -> None:
    code, _, err = await run(
        "fetch", "-H", "X-A: \tspaced value é\t", "--user-agent", "ua/1 (x)", "-q",
        stdin=f"{server.url('/ok/1')}\n".encode(),
    )  # fmt: skip
    assert code == 0, err
    sent = server.rec.headers[0]
    assert sent["X-A"] == "spaced value é"
    assert sent["User-Agent"] == "ua/1 (x)"


# -- item: every other option: one line and exit 2, never a traceback or a hang ------------
@pytest.mark.parametrize(
    "args",
    [
        ["fetch", "--connect-timeout", "inf"],
        ["fetch", "--timeout", "inf"],
        ["fetch", "--rps", "inf"],
        ["fetch", "--per-host-rps", "inf"],
        ["fetch", "--grace", "inf"],
        ["fetch", "--breaker-cooldown", "inf"],
        ["crawl", "--max-time", "inf"],
        ["bench", "--timeout", "inf", "-n", "1"],
        ["bench", "--target", "not-a-url", "-n", "1"],
        ["bench", "--target", "http://[::1", "-n", "1"],
        ["bench", "--target", "http://127.0.0.1:9\r\n", "-n", "1"],
        ["serve", "--port", "0", "--retry-after", "1e12"],
        ["serve", "--port", "0", "--latency-ms", "1e12"],
    ],
    ids=" ".join,
)
async def test_option_values_that_cannot_work_are_refused(server: Server, args: list[str]) -> None:
    code, out, err = await run(*args, stdin=f"{server.url('/ok/1')}\n".encode(), timeout=30)
    assert code == 2 and out == b"", err
    one_error_line(err)
    assert sum(server.rec.hits.values()) == 0


def test_concurrency_that_would_exhaust_memory_is_refused() -> None:
    # Not through the CLI: without the bound, a subprocess would try to start 10**12 tasks.
    with pytest.raises(ConfigError):
        LimitConfig(concurrency=10**12)
    LimitConfig(concurrency=10_000)


async def test_stats_json_on_a_directory_is_refused_before_the_run(
    server: Server, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    code, _, err = await run(
        "fetch", "-o", str(out), "--stats-json", str(tmp_path),
        stdin=f"{server.url('/ok/1')}\n".encode(),
    )  # fmt: skip
    assert code == 2
    one_error_line(err)
    assert not out.exists() and sum(server.rec.hits.values()) == 0


_LEGACY = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("BEGIN")
db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
db.execute("INSERT INTO meta VALUES ('format', 'crawler-state/1'), ('identity', '{}')")
db.execute("COMMIT")
if sys.argv[2] == "closed":
    db.close()
os._exit(0)  # "killed": the meta table is only in the -wal
"""


@pytest.mark.parametrize("how", ["closed", "killed", "killed-no-shm"])
async def test_state_files_of_older_versions_are_still_recognised(tmp_path: Path, how: str) -> None:
    """Before application_id: recognised by the meta table, read without writing."""
    state = tmp_path / "s.db"
    subprocess.run([sys.executable, "-c", _LEGACY, str(state), how], check=True)
    if how == "killed-no-shm":
        Path(f"{state}-shm").unlink()
    code, _, err = await run("fetch", "--state", str(state), stdin=b"http://127.0.0.1:9/\n")
    assert code == 2
    one_error_line(err)
    assert b"belongs to a different run" in err  # i.e. ours, not "not a state file"


@pytest.mark.parametrize("option", ["--state", "--stats-json", "-o", "--warc"])
async def test_a_symlink_loop_is_one_line_before_the_run(
    server: Server, tmp_path: Path, option: str
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, out, err = await run(
        "fetch", option, str(loop), stdin=f"{server.url('/ok/1')}\n".encode()
    )
    assert code == 2 and out == b"", err
    one_error_line(err)
    assert sum(server.rec.hits.values()) == 0


@pytest.mark.parametrize("kind", ["fifo", "dangling-symlink"])
async def test_a_state_path_that_is_no_file_is_refused_without_hanging(
    tmp_path: Path, kind: str
) -> None:
    state = tmp_path / "s.db"
    if kind == "fifo":
        os.mkfifo(state)
    else:
        state.symlink_to(tmp_path / "elsewhere.db")
    code, _, err = await run(
        "fetch", "--state", str(state), stdin=b"http://127.0.0.1:9/\n", timeout=30
    )
    assert code == 2
    one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # nothing created
