"""Review of the issue-12 shutdown, storage and state work: the gaps found, one test each.

Real pipes, real subprocesses of the CLI and a server on 127.0.0.1; states are waited for by
polling with a bound, never by sleeping."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import termios
from pathlib import Path

import orjson
import pytest

from crawler.config import SinkConfig
from crawler.pipes import Pipe
from crawler.records import Record
from crawler.sink import Sink
from tests.conftest import Server, pipe_full, until
from tests.test_hardening_signals import (
    CRAWLER,
    ENV,
    PAD,
    assert_no_traceback,
    exits,
    pending_signals,
    reap,
    run,
    signal_delivered,
    spawn,
)


def _queued(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is ``fd``."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _drain(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def _until(check: object, what: str) -> None:
    for _ in range(2000):  # 20 s at most
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_nothing_is_written_after_a_line_cut_short_by_abandon() -> None:
    """An abandoned pipe may end in one cut-short line (README: "the last line"); a later
    batch written when the reader makes room must not be glued to it."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # one page: the first write is cut at 4096
        os.set_blocking(w, False)
        os.set_blocking(r, False)
        sink = Sink(SinkConfig(output=None, batch_records=10_000, batch_bytes=1 << 20))
        sink._file = Pipe(w, restore=False)
        pad = "y" * 997  # lines whose length does not divide 4096
        for i in range(40):
            sink.put_nowait(Record(url=f"http://a.test/{i}?{pad}"))
        flushing = asyncio.ensure_future(sink.flush())
        await _until(lambda: _queued(r) >= 4096 and sink._waiting is not None, "a full pipe")
        sink.abandon()
        await flushing
        first = _drain(r)  # the reader comes back and makes room...
        for i in range(40, 45):
            sink.put_nowait(Record(url=f"http://a.test/{i}?{pad}"))
        await sink.flush()  # ...and the next batch goes out
        out = first + _drain(r)
        lines = out.split(b"\n")
        for line in lines[:-1]:
            orjson.loads(line)  # every line but the last is a whole record
        assert sink.written == len(lines) - 1
        assert sink.lost == 45 - sink.written
    finally:
        os.close(r)
        os.close(w)


# -- -o naming a stream: a device or a FIFO (``-o /dev/null``, ``-o /dev/stdout``) -------------
def _urls(server: Server, tmp_path: Path, n: int, pad: str = "") -> Path:
    path = tmp_path / "urls.txt"
    path.write_text("".join(server.url(f"/ok/{i}?pad={pad}") + "\n" for i in range(n)))
    return path


async def test_state_with_output_to_dev_null_completes_and_resumes(
    server: Server, tmp_path: Path
) -> None:
    """A checkpoint fsynced the output, and fsync on /dev/null (or a pipe) is EINVAL: the run
    fetched everything, then failed with "cannot continue: Invalid argument" (exit 2)."""
    urls = _urls(server, tmp_path, 20)
    state = str(tmp_path / "s.db")
    code, _, err = await run("fetch", str(urls), "-o", "/dev/null", "--state", state)
    assert code == 0, err
    hits = sum(server.rec.hits.values())
    code, _, err = await run("fetch", str(urls), "-o", "/dev/null", "--state", state)
    assert code == 0, err  # resumed: nothing cut back (a device has no size), nothing left
    assert sum(server.rec.hits.values()) == hits


async def test_second_sigint_ends_a_run_blocked_on_an_output_fifo(
    server: Server, tmp_path: Path
) -> None:
    """``-o /dev/stdout`` (or any FIFO) that nobody reads: the writer thread blocked in
    write() forever, so two SIGINTs left the process running; now it is written like a
    standard output pipe and given up on."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read until the end
    probe = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # never written: polled for room
    try:
        urls = _urls(server, tmp_path, 1200, PAD)
        proc = spawn(
            "fetch", str(urls), "-o", str(fifo), "--no-progress", "-c", "16", "--grace", "60"
        )
        try:
            await until(lambda: pipe_full(probe), 50)  # the FIFO is full
            assert proc.poll() is None
            await signal_delivered(proc, signal.SIGINT)
            await signal_delivered(proc, signal.SIGINT)
            assert await exits(proc, 20) == 130
        finally:
            _, err = reap(proc)
        assert_no_traceback(err)
        assert b"lost" in err
        data = _drain(reader)
        for line in data.split(b"\n")[:-1]:
            orjson.loads(line)
    finally:
        os.close(probe)
        os.close(reader)


async def test_output_fifo_without_a_reader_is_one_line(tmp_path: Path) -> None:
    """Opening a FIFO nobody reads blocked before the run (signals not yet handled)."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/\n")
    proc = spawn("fetch", str(urls), "-o", str(fifo), "--no-progress")
    try:
        code = await exits(proc, 30)
    finally:
        _, err = reap(proc)  # killed if it hangs
    assert code == 2
    assert err.count(b"\n") == 1 and b"out.fifo" in err and b"no process reads" in err, err


# -- paths.check_distinct: standard input is an input file too --------------------------------
@pytest.mark.parametrize("command", [["fetch"], ["fetch", "-"], ["crawl"]])
async def test_output_equal_to_a_redirected_standard_input_is_refused(
    tmp_path: Path, command: list[str]
) -> None:
    """``crawler fetch -o urls.txt < urls.txt`` truncated the input it was reading (exit 0,
    both files empty); like ``-o urls.txt urls.txt`` it is refused before anything."""
    urls = tmp_path / "urls.txt"
    text = "http://127.0.0.1:9/a\n" * 3
    urls.write_text(text)
    with urls.open("rb") as stdin:
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, *command, "-o", str(urls), "--no-progress",
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err
    assert err.count(b"\n") == 1 and b"standard input" in err, err
    assert urls.read_text() == text


# -- nobody reads stderr (``2>&1 | head -1``): the exit status stays the contract's ---------------
@pytest.mark.parametrize(
    ("extra", "status"),
    [(["-o", "out.jsonl"], 0), (["-o", "out.jsonl", "--concurrency", "0"], 2)],
)
async def test_exit_status_when_stderr_is_not_read(
    server: Server, tmp_path: Path, extra: list[str], status: int
) -> None:
    """The summary (rich) or the one-line error hit EPIPE: rich pointed fd 1 at /dev/null
    and exited 1, click turned the error's EPIPE into 1: a completed run or a usage error
    both read as status 1."""
    urls = _urls(server, tmp_path, 3)
    r, w = os.pipe()
    os.close(r)  # a reader that is already gone
    try:
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, "fetch", str(urls), *extra,
            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w, env=ENV,
        )  # fmt: skip
    finally:
        os.close(w)
    assert await asyncio.wait_for(proc.wait(), 60) == status
    if status == 0:
        assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 3


# -- state.py: what a killed creation leaves is swept whatever the state file's condition -------
async def test_a_second_name_left_by_a_kill_after_linking_is_swept(
    server: Server, tmp_path: Path
) -> None:
    """A run killed between ``os.link(tmp, PATH)`` and ``unlink(tmp)`` leaves a second name
    of the live state file; only a run that *creates* a state swept such names, and this
    one never creates again: the leftover stayed beside the state forever."""
    src, state = tmp_path / "urls.txt", tmp_path / "s.db"
    src.write_text(server.url("/ok/1") + "\n")
    code, _, err = await run("fetch", str(src), "--state", str(state), "-q")
    assert code == 0, err
    leftover = tmp_path / ".s.db.crawler-creating-k1ll3d.new"
    os.link(state, leftover)  # as the kill leaves it: the same inode
    code, _, err = await run("fetch", str(src), "--state", str(state), "-q")
    assert code == 0, err
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db", "s.db.lock", "urls.txt"]


# -- signals.py: a signal in the last moments of the process does not replace its status -------
_LATE = """
import gc, os, sys, time
gc.freeze = lambda: None  # crawler freezes what it allocated: this object must be freed
class Late:
    # Runs in module teardown, after Python reset the signal handlers: builtins and module
    # globals are gone by then, so it holds the C functions it calls.
    def __init__(self, marker, release):
        flags = os.O_CREAT | os.O_WRONLY
        self.args = (os.open, os.close, os.access, time.sleep, marker, release, flags, os.F_OK)
    def __del__(self):
        open_, close, access, sleep, marker, release, flags, ok = self.args
        close(open_(marker, flags))
        n = 0
        while n < 6000 and not access(release, ok):
            sleep(0.005)
            n += 1
late = Late(sys.argv[1], sys.argv[2])
sys.argv = ["crawler", *sys.argv[3:]]
from crawler.__main__ import main
main()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_while_the_process_finalizes_keeps_its_exit_status(
    server: Server, tmp_path: Path, sig: signal.Signals
) -> None:
    """The run is over and everything written: a stop signal now must not end the process
    by that signal (``-15``, a shell's 143) instead of the run's status."""
    src, marker, release = tmp_path / "urls.txt", tmp_path / "marker", tmp_path / "release"
    src.write_text(server.url("/ok/1") + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LATE, str(marker), str(release),
         "fetch", str(src), "-o", str(tmp_path / "out.jsonl"), "-q"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        await until(lambda: marker.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None
        proc.send_signal(sig)
        bit = 1 << (sig - 1)
        await until(lambda: proc.poll() is not None or not pending_signals(proc.pid) & bit)
        release.write_text("x")  # the signal was delivered (or killed the process)
        assert await exits(proc, 30) == 0
    finally:
        reap(proc)


# -- state.py: the lock file is never written through a symlink nor over someone's file -----------
@pytest.mark.parametrize("kind", ["symlink", "file"])
async def test_the_lock_never_overwrites_a_file_that_is_not_ours(
    server: Server, tmp_path: Path, kind: str
) -> None:
    """``PATH.lock`` was opened with O_CREAT (following symlinks) and truncated: a symlink
    planted beside a state file in a shared directory had crawler empty its target."""
    src, state = tmp_path / "urls.txt", tmp_path / "s.db"
    src.write_text(server.url("/ok/1") + "\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "s.db.lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    else:
        lock.write_text("precious\n")
    code, _, err = await run("fetch", str(src), "--state", str(state), "-q")
    assert code == 2
    assert err.count(b"\n") == 1 and b"not a crawler lock file" in err, err
    assert victim.read_text() == "precious\n"
    if kind == "file":
        assert lock.read_text() == "precious\n"
    assert not state.exists()


# -- 2>&1 into a pipe nobody reads --------------------------------------------------------------
async def test_second_sigint_ends_a_run_whose_stdout_and_stderr_share_an_unread_pipe(
    server: Server, tmp_path: Path
) -> None:
    """``crawler fetch … 2>&1 | reader`` with a reader that stopped: stdout was left blocking
    (its open file is stderr's too), so a thread blocked in write() and two SIGINTs did
    not end the run; nor could the summary be written to that pipe afterwards."""
    r, w = os.pipe()
    probe = os.dup(w)  # never written: polled for room
    try:
        urls = _urls(server, tmp_path, 1200, PAD)
        proc = subprocess.Popen(
            # --per-host 16: -c binds, so no per-host note shares the pipe with the records
            [*CRAWLER, "fetch", str(urls), "--no-progress", "-c", "16", "--per-host", "16",
             "--grace", "60"],
            stdin=subprocess.DEVNULL, stdout=w, stderr=w, env=ENV,
        )  # fmt: skip
        os.close(w)
        w = -1
        try:
            await until(lambda: pipe_full(probe), 50)  # the pipe is full
            assert proc.poll() is None
            await signal_delivered(proc, signal.SIGINT)
            await signal_delivered(proc, signal.SIGINT)
            assert await exits(proc, 20) == 130
        finally:
            reap(proc)
        os.set_blocking(r, False)
        data = _drain(r)
        assert_no_traceback(data)
        for line in data.split(b"\n")[:-1]:
            orjson.loads(line)  # records only: no summary squeezed in
    finally:
        os.close(probe)
        os.close(r)
        if w >= 0:
            os.close(w)


# -- sink: a page lost with an abandoned pipe does not commit its links --------------------------
async def test_links_of_pages_lost_to_an_abandoned_pipe_are_not_committed(
    tmp_path: Path,
) -> None:
    """Crawl mode with --state: the links of a whole batch were committed when only part of
    it went out, so pages whose records were lost had their links committed without them
    (state.py: a page's links are committed in the same transaction as the page)."""
    import sqlite3

    from crawler.linkqueue import Link
    from crawler.state import StateStore

    store = StateStore(str(tmp_path / "s.db"), {"mode": "crawl"})
    await store.open()
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(w, False)
        sink = Sink(SinkConfig(output=None, batch_records=10_000, batch_bytes=1 << 20), store)
        sink._file = Pipe(w, restore=False)
        pad = "y" * 997
        for i in range(40):
            url = f"http://a.test/{i}?{pad}"
            sink.put_nowait(
                Record(url=url), i + 1, [Link(f"http://a.test/from-{i}", 1, url, 1000 + i)]
            )
        flushing = asyncio.ensure_future(sink.flush())
        await _until(lambda: _queued(r) >= 4096 and sink._waiting is not None, "a full pipe")
        sink.abandon()
        await flushing  # writes what fitted, then checkpoints
        written = sink.written
        assert 0 < written < 40
    finally:
        os.close(r)
        os.close(w)
        await store.aclose()
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        parents = {row[0] for row in db.execute("SELECT parent FROM pending")}
    finally:
        db.close()
    assert parents == {f"http://a.test/{i}?{pad}" for i in range(written)}
