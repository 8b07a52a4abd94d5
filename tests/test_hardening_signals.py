"""Shutdown under hostile conditions (issue 12): an unread stdout pipe, signals during
start-up, SIGHUP/SIGQUIT, and --max-time with URLs waiting for their host's pacer.

Every run here is a real subprocess of the CLI against a server in this process; the tests
wait for states by polling with a bound, never by sleeping, and bound durations generously
(the bug they guard against is "never ends", not "ends late")."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from crawler.engine import Engine
from crawler.inputs import LineSource
from tests.conftest import Server, make_config, read_records, until

# The CLI with the stop signals at their defaults: a signal our parent ignores (a shell's
# background job ignores SIGINT, nohup SIGHUP) stays ignored in the CLI, as it should.
_DEFAULTS = (
    "import os, signal, sys\n"
    "for name in ('SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'):\n"
    "    signal.signal(getattr(signal, name), signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'crawler', *sys.argv[1:]])\n"
)
CRAWLER = [sys.executable, "-c", _DEFAULTS]
ENV = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
PAD = "x" * 300  # records of ~800 bytes: a few hundred fill a 64 KiB pipe

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads /proc/PID of its own child"
)


def spawn(
    *args: str, stdout: Any = subprocess.PIPE, group: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CRAWLER, *args],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=group,  # its own process group, to signal it as a terminal would
    )


def unread(proc: subprocess.Popen[bytes]) -> int:
    """Bytes waiting in the child's stdout pipe, which the test never reads."""
    assert proc.stdout is not None
    buf = array.array("i", [0])
    fcntl.ioctl(proc.stdout.fileno(), termios.FIONREAD, buf)
    return buf[0]


def pending_signals(pid: int) -> int:
    """Signals sent to ``pid`` and not yet delivered (blocked or not yet scheduled)."""
    mask = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            mask |= int(line.split()[1], 16)
    return mask


async def exits(proc: subprocess.Popen[bytes], timeout: float) -> int:
    await until(lambda: proc.poll() is not None, timeout)
    assert proc.returncode is not None
    return proc.returncode


async def signal_delivered(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` and wait until the kernel delivered it (a second one then counts)."""
    proc.send_signal(sig)
    bit = 1 << (sig - 1)
    await until(lambda: proc.poll() is not None or not pending_signals(proc.pid) & bit)


def reap(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """Kill the child if it still runs; what it left in its stdout and stderr pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    out, err = b"", b""
    if proc.stdout is not None:
        out = proc.stdout.read()
        proc.stdout.close()
    if proc.stderr is not None:
        err = proc.stderr.read()
        proc.stderr.close()
    return out, err


def whole_lines(data: bytes) -> list[dict[str, Any]]:
    """Records on complete lines (a line cut off when the output was given up is not one)."""
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines()]


async def run(*args: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER, *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err


def assert_no_traceback(err: bytes) -> None:
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert b"Task was destroyed" not in err
    assert b"Unclosed" not in err


# -- 1. a stdout pipe nobody reads ------------------------------------------------------------
N_PIPE = 1200


async def stuck_on_stdout(server: Server, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A fetch whose records fill a pipe the test never reads: it cannot finish."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/ok/{i}?pad={PAD}") + "\n" for i in range(N_PIPE)))
    proc = spawn("fetch", str(urls), "--no-progress", "-c", "16", *extra)
    try:
        # Every URL fetched and the pipe full: the run now only waits for the reader.
        await until(lambda: sum(server.rec.hits.values()) >= N_PIPE and unread(proc) >= 60_000, 60)
        assert proc.poll() is None
    except BaseException:
        reap(proc)
        raise
    return proc


async def test_second_sigint_ends_a_run_blocked_on_stdout(server: Server, tmp_path: Path) -> None:
    # --grace 60: only the second signal can end this run within the bound.
    proc = await stuck_on_stdout(server, tmp_path, "--grace", "60")
    try:
        await signal_delivered(proc, signal.SIGINT)
        await signal_delivered(proc, signal.SIGINT)
        assert await exits(proc, 10) == 130
    finally:
        out, err = reap(proc)
    assert b"lost" in err
    assert_no_traceback(err)
    got = whole_lines(out)
    assert 0 < len(got) < N_PIPE  # what fitted in the pipe is whole records


async def test_sigterm_ends_a_run_blocked_on_stdout(server: Server, tmp_path: Path) -> None:
    # One SIGTERM: after the grace period the final flush gets a bound, then the output
    # is given up on.
    proc = await stuck_on_stdout(server, tmp_path, "--grace", "0.5")
    try:
        proc.send_signal(signal.SIGTERM)
        assert await exits(proc, 20) == 130
    finally:
        _, err = reap(proc)
    assert b"lost" in err
    assert_no_traceback(err)


async def test_records_lost_on_a_blocked_stdout_are_redone_on_resume(
    server: Server, tmp_path: Path
) -> None:
    state = str(tmp_path / "s.db")
    proc = await stuck_on_stdout(server, tmp_path, "--grace", "60", "--state", state)
    try:
        await signal_delivered(proc, signal.SIGINT)
        await signal_delivered(proc, signal.SIGINT)
        assert await exits(proc, 10) == 130
    finally:
        out, err = reap(proc)
    assert b"lost" in err
    first = [r["url"] for r in whole_lines(out)]
    code, out, err = await run("fetch", str(tmp_path / "urls.txt"), "-q", "--state", state)
    assert code == 0, err
    second = [r["url"] for r in whole_lines(out)]
    # Exactly once over both runs: what reached the pipe was marked done, nothing else.
    assert sorted(first + second) == sorted(server.url(f"/ok/{i}?pad={PAD}") for i in range(N_PIPE))
    assert first and second


# -- 2. a signal while the program starts ---------------------------------------------------------
def mapped(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1])
async def test_a_signal_during_start_up_is_a_clean_exit(tmp_path: Path, delay: float) -> None:
    # From the moment our code runs (orjson, one of the first heavy imports, is loaded),
    # any SIGINT is an exit 130 (or a finished run), never a traceback or a crash. The
    # moments before that belong to the interpreter (site, runpy), not to us.
    urls = tmp_path / "urls.txt"
    urls.write_text("")
    proc = spawn("fetch", str(urls), "--no-progress")
    try:
        await until(lambda: proc.poll() is not None or mapped(proc.pid, "orjson"), 20)
        if delay:
            time.sleep(delay)  # the moment is the point, not a state
        proc.send_signal(signal.SIGINT)
        code = await exits(proc, 20)
    finally:
        _, err = reap(proc)
    assert code in (0, 130), err
    assert_no_traceback(err)


# -- 3. SIGHUP and SIGQUIT are handled like SIGTERM ------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
async def test_sighup_and_sigquit_flush_commit_and_resume(
    server: Server, tmp_path: Path, sig: signal.Signals
) -> None:
    urls = tmp_path / "urls.txt"
    hang = [server.url(f"/hang/{i}") for i in range(5)]
    ok = [server.url(f"/ok/{i}") for i in range(5)]
    urls.write_text("\n".join(ok + hang) + "\n")
    output, state = tmp_path / "out.jsonl", str(tmp_path / "s.db")
    args = ("fetch", str(urls), "-o", str(output), "--state", state, "--grace", "0.3", "-q")
    proc = spawn(*args, stdout=subprocess.DEVNULL)
    try:
        await until(lambda: sum(server.rec.hits.values()) >= 10, 30)
        proc.send_signal(sig)
        code = await exits(proc, 20)
    finally:
        _, err = reap(proc)
    assert code == 130, err
    assert_no_traceback(err)
    data = output.read_bytes()
    assert data.endswith(b"\n")
    assert sorted(orjson.loads(line)["url"] for line in data.splitlines()) == sorted(ok)
    server.rec.release.set()  # the resumed run gets answers from /hang
    code, _, err = await run(*args)
    assert code == 0, err
    counts = Counter(orjson.loads(line)["url"] for line in output.read_bytes().splitlines())
    assert counts == Counter(ok + hang)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
async def test_a_signal_to_the_whole_process_group_still_flushes_the_warc(
    server: Server, tmp_path: Path, sig: signal.Signals
) -> None:
    # A terminal sends SIGHUP (hang-up) and SIGQUIT (Ctrl-\\) to the whole foreground
    # process group, like SIGINT: the WARC writer child must outlive them, for the parent
    # to flush it.
    urls = tmp_path / "urls.txt"
    hang = [server.url(f"/hang/{i}") for i in range(3)]
    ok = [server.url(f"/ok/{i}") for i in range(5)]
    urls.write_text("\n".join(ok + hang) + "\n")
    output, warc = tmp_path / "out.jsonl", tmp_path / "run.warc.gz"
    args = ("fetch", str(urls), "-o", str(output), "--warc", str(warc), "--grace", "0.3", "-q")
    proc = spawn(*args, stdout=subprocess.DEVNULL, group=True)
    try:
        await until(lambda: sum(server.rec.hits.values()) >= len(ok + hang), 30)
        os.killpg(proc.pid, sig)
        code = await exits(proc, 20)
    finally:
        _, err = reap(proc)
    assert code == 130, err
    assert_no_traceback(err)
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert sorted(r["url"] for r in records if r["ok"]) == sorted(ok)
    from warcio.archiveiterator import ArchiveIterator

    with warc.open("rb") as f:
        responses = [
            rec.rec_headers.get_header("WARC-Target-URI")
            for rec in ArchiveIterator(f)
            if rec.rec_type == "response"
        ]
    assert sorted(responses) == sorted(ok)


# -- 4. --max-time and URLs waiting for their host's pacer ------------------------------------
class Site:
    def __init__(self, crawl_delay: float, pages: int, robots_delay: float = 0.0) -> None:
        self.crawl_delay = crawl_delay
        self.pages = pages
        self.robots_delay = robots_delay
        self.hits: Counter[str] = Counter()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def paced_site(request: pytest.FixtureRequest) -> AsyncIterator[Site]:
    site = Site(*request.param)

    async def robots(request: web.Request) -> web.Response:
        await asyncio.sleep(site.robots_delay)
        return web.Response(text=f"User-agent: *\nCrawl-delay: {site.crawl_delay}\n")

    async def root(request: web.Request) -> web.Response:
        site.hits["/"] += 1
        links = "".join(f'<a href="/p/{i}">{i}</a>' for i in range(site.pages))
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        site.hits[request.path] += 1
        return web.Response(text="<html>page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/", root)
    app.router.add_get("/p/{n}", page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    site.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield site
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("paced_site", [(10.0, 10)], indirect=True)
async def test_max_time_writes_no_record_for_urls_waiting_for_the_pacer(
    paced_site: Site, tmp_path: Path
) -> None:
    # Crawl-delay 10: after the seed, each worker holds a page and waits for its turn (10 s,
    # 20 s, ...). At --max-time those pages have not been sent: no record for them, and the
    # run does not sit out the grace period waiting for turns it will never take.
    site = paced_site
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, _, err = await run(
        "crawl", site.url("/"), "-o", str(out), "-q", "--max-time", "1.5", "--grace", "30"
    )
    elapsed = time.monotonic() - started
    assert code == 0, err
    assert_no_traceback(err)
    records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    never_sent = [r for r in records if r["attempts"] == 0]
    assert never_sent == []
    # Every record is for a page that was requested, every requested page has a record.
    assert Counter(r["url"].removeprefix(site.url("")) for r in records) == site.hits
    assert elapsed < 20  # not the 30 s grace (nor the 80 s of Crawl-delay turns)


@pytest.mark.parametrize("paced_site", [(10.0, 10)], indirect=True)
async def test_pages_cut_off_by_max_time_are_fetched_on_resume(
    paced_site: Site, tmp_path: Path
) -> None:
    site = paced_site
    out, state = tmp_path / "out.jsonl", str(tmp_path / "s.db")
    args = ("crawl", site.url("/"), "-o", str(out), "--state", state, "-q", "--grace", "30")
    started = time.monotonic()
    code, _, err = await run(*args, "--max-time", "1.5")
    assert time.monotonic() - started < 20  # the pacer waits were cut, not sat out
    assert code == 0, err
    first = [orjson.loads(line)["url"] for line in out.read_bytes().splitlines()]
    # The rest without Crawl-delay, to be quick (robots.txt is not part of the state's
    # identity): every page exactly once over both runs.
    code, _, err = await run(*args, "--ignore-robots")
    assert code == 0, err
    urls = Counter(orjson.loads(line)["url"] for line in out.read_bytes().splitlines())
    assert urls == Counter([site.url("/"), *(site.url(f"/p/{i}") for i in range(site.pages))])
    assert len(first) < len(urls)  # the first run really was cut short


async def test_a_signal_cuts_pacer_waits_short(server: Server, tmp_path: Path) -> None:
    # One request per 2 s to the host: after the first, the other workers wait for their
    # turn. A stop signal: those were never sent, so they are `cancelled` at once (attempts
    # 0), not sent during the grace period as their turns come up.
    lines = [server.url(f"/ok/{i}") for i in range(5)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, concurrency=5, per_host=5, per_host_rps=0.5, burst=1, grace=30)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    task = asyncio.create_task(engine.run())
    await until(lambda: sum(server.rec.hits.values()) >= 1)
    engine.request_stop()
    result = await asyncio.wait_for(task, 10)
    assert result.interrupted
    records = {r["url"]: r for r in read_records(tmp_path / "out.jsonl")}
    assert sorted(records) == sorted(lines)
    sent = [r for r in records.values() if r["attempts"]]
    assert len(sent) == sum(server.rec.hits.values()) == 1
    unsent = [r for r in records.values() if not r["attempts"]]
    assert {r["error"]["kind"] for r in unsent} == {"cancelled"}


@pytest.mark.parametrize("paced_site", [(0.0, 3, 20.0)], indirect=True)
async def test_max_time_does_not_wait_for_a_slow_robots_txt(
    paced_site: Site, tmp_path: Path
) -> None:
    # robots.txt takes 20 s: at --max-time the seed is still waiting for it, so it has not
    # started. No record for it (it is fetched on resume), and no waiting out the grace.
    site = paced_site
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, _, err = await run(
        "crawl", site.url("/"), "-o", str(out), "-q", "--max-time", "1", "--grace", "30"
    )
    assert time.monotonic() - started < 15
    assert code == 0, err
    assert out.read_bytes() == b""
    assert not site.hits
