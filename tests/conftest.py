"""Shared fixtures: a real aiohttp.web server on several loopback addresses, engine runner."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import signal
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from crawler.config import (
    BreakerConfig,
    FetchConfig,
    InputConfig,
    LimitConfig,
    RetryConfig,
    RunConfig,
    SinkConfig,
)
from crawler.engine import Engine, RunResult
from crawler.inputs import LineSource

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")

# Hypothesis measures each example against the wall clock (a 200 ms deadline, a "too slow"
# health check): on a loaded machine that fails tests whose code is fine. Tests that need
# a bound on time assert it themselves, generously.
settings.register_profile(
    "loaded-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("loaded-machine")

# A suite started in the background of a non-interactive shell (`pytest &`, as CI scripts
# and parallel runs do) inherits SIGINT and SIGQUIT ignored, and passes that on to every
# process it starts: a test that sends them would see nothing happen (a `crawler bench` that
# ignores Ctrl-C runs its five million URLs). The processes the tests start get the usual
# dispositions, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)

# Every process this session starts inherits a marker in its environment: the session (and
# a test) can find its own processes, children and orphans included, and nobody else's.
MARKER_VAR = "CRAWLER_TEST_RUN"
SESSION_TOKEN = uuid.uuid4().hex
os.environ[MARKER_VAR] = SESSION_TOKEN


def marked_env(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """``env`` plus a token no other process has: every process the test starts, and every
    process those start (they inherit the environment), carries it, so the test can find
    its own processes without looking at anyone else's."""
    token = f"{SESSION_TOKEN}.{uuid.uuid4().hex}"
    return {**env, MARKER_VAR: token}, token


def _marker(pid: str) -> str | None:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        for var in fh.read().split(b"\0"):
            if var.startswith(MARKER_VAR.encode() + b"="):
                return var.partition(b"=")[2].decode(errors="replace")
    return None


def marked_processes(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose marker is ``token`` or below it
    (a test's token is below the session's)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            mark = _marker(entry.name)
            if mark is None or not (mark == token or mark.startswith(token + ".")):
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                if fh.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue  # a zombie: already dead, waiting for its parent to reap it
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry.name), cmdline))
    return found


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rpartition(b")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _reap_leftover_processes() -> Iterator[None]:
    """A test that fails (or times out) while a process it started runs must not leave it
    running into the next tests: on a loaded machine a stray `crawler bench` makes every
    later test slow. What the test started and left is killed when it ends (a fixture of
    a wider scope started its processes before, and keeps them)."""
    before = {pid for pid, _ in marked_processes(SESSION_TOKEN)}
    yield
    _kill(
        pid
        for pid, cmdline in marked_processes(SESSION_TOKEN)
        # multiprocessing's helpers of this very process (the resource tracker) serve
        # the whole session, whichever test happened to start them first
        if pid not in before and not (_ppid(pid) == os.getpid() and "multiprocessing" in cmdline)
    )


@pytest.fixture(autouse=True)
def _no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """An ``internal`` record is a bug in crawler: a test whose in-process run met one
    fails, unless it asked for it (the ``expect_internal`` fixture). Runs of the CLI in a
    subprocess are not seen here."""
    from crawler.fetcher import Fetcher

    before = Fetcher.bugs_met
    yield
    met = Fetcher.bugs_met - before
    if met and "expect_internal" not in request.fixturenames:
        pytest.fail(f"{met} URL(s) got an 'internal' error record (a bug): see stderr")


@pytest.fixture
def expect_internal() -> None:
    """This test provokes ``internal`` records on purpose (see _no_internal_errors)."""


def pytest_sessionfinish(session: pytest.Session) -> None:
    _kill(pid for pid, _ in marked_processes(SESSION_TOKEN))


@dataclass
class Recorder:
    """What the test server saw: per-Host concurrency, hit counts, arrival times."""

    active: collections.Counter[str] = field(default_factory=collections.Counter)
    peak: collections.Counter[str] = field(default_factory=collections.Counter)
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    times: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    headers: list[dict[str, str]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(rec: Recorder) -> web.Application:
    async def track(request: web.Request) -> None:
        key = request.path_qs
        rec.hits[key] += 1
        rec.times[request.path].append(time.monotonic())
        rec.headers.append(dict(request.headers))

    async def ok(request: web.Request) -> web.Response:
        await track(request)
        return web.Response(text="<html>ok</html>", content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        await track(request)
        host = request.host
        rec.active[host] += 1
        rec.peak[host] = max(rec.peak[host], rec.active[host])
        try:
            await asyncio.sleep(float(request.query.get("s", "0.05")))
        finally:
            rec.active[host] -= 1
        return web.Response(text="slow")

    async def status(request: web.Request) -> web.Response:
        await track(request)
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=int(request.match_info["code"]), headers=headers, text="x")

    async def flaky(request: web.Request) -> web.Response:
        """Fails with ?code= (default 503) the first ?fail= times for this path, then 200."""
        await track(request)
        fails = int(request.query.get("fail", "1"))
        if rec.hits[request.path_qs] <= fails:
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            code = int(request.query.get("code", "503"))
            return web.Response(status=code, headers=headers, text="busy")
        return web.Response(text="recovered")

    async def limited(request: web.Request) -> web.Response:
        """An overloaded host: 503 when more than ?max= requests are in flight."""
        await track(request)
        host = request.host
        if rec.active[host] >= int(request.query.get("max", "4")):
            rec.hits["503"] += 1
            return web.Response(status=503, headers={"Retry-After": "0"}, text="busy")
        rec.active[host] += 1
        rec.peak[host] = max(rec.peak[host], rec.active[host])
        try:
            await asyncio.sleep(0.02)
        finally:
            rec.active[host] -= 1
        return web.Response(text="ok")

    async def hang(request: web.Request) -> web.Response:
        await track(request)
        await rec.release.wait()
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        await track(request)
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/ok/{tail:.*}", ok)
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow/{tail:.*}", slow)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/status/{code}/{tail:.*}", status)
    app.router.add_get("/flaky/{tail:.*}", flaky)
    app.router.add_get("/hang/{tail:.*}", hang)
    app.router.add_get("/limited/{tail:.*}", limited)
    app.router.add_get("/redirect", redirect)
    return app


@dataclass
class Server:
    rec: Recorder
    ports: dict[str, int]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.ports[host]}{path}"


@contextlib.asynccontextmanager
async def serve_hosts(
    app: web.Application, ports: dict[str, int], hosts: Iterable[str] = HOSTS
) -> AsyncIterator[dict[str, int]]:
    """``app`` on each of ``hosts`` at a free port, filling ``ports`` (host -> port: an
    app that builds its own links reads them there)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        for host in hosts:
            site = web.TCPSite(runner, host, 0)
            await site.start()
            ports[host] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield ports
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    rec = Recorder()
    async with serve_hosts(make_app(rec), {}) as ports:
        try:
            yield Server(rec, ports)
        finally:
            rec.release.set()


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """``app`` on ``host`` at a free port (TLS with ``ssl_context``): its base URL,
    ``http://host:port`` or ``https://host:port``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if ssl_context is not None else "http"
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        await runner.cleanup()


async def until(predicate: Any, timeout: float = 30.0) -> None:
    """Poll ``predicate`` (no sleeping on state: a bounded wait for it to become true)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def pipe_full(write_end: int) -> bool:
    """Is the pipe (or FIFO) of ``write_end`` full: would a write that needs a new page
    block? Linux counts a pipe's room in pages, so a full pipe may hold fewer bytes than
    F_GETPIPE_SZ when writes left pages part-filled (how a writer batched its writes
    decides it): a wait for that many bytes queued may wait for ever. ``write_end`` is
    only polled, never written."""
    return not select.select([], [write_end], [], 0)[1]


def make_config(tmp_path: Path, **kw: Any) -> RunConfig:
    """A RunConfig for tests: small timeouts, output into tmp_path/out.jsonl."""
    limits = {k: kw.pop(k) for k in list(kw) if k in LimitConfig.__struct_fields__}
    retry = {k: kw.pop(k) for k in list(kw) if k in RetryConfig.__struct_fields__}
    fetch = {k: kw.pop(k) for k in list(kw) if k in FetchConfig.__struct_fields__}
    breaker = {k.removeprefix("breaker_"): kw.pop(k) for k in list(kw) if k.startswith("breaker_")}
    dedup = kw.pop("dedup", True)
    retry.setdefault("timeout", 5.0)
    retry.setdefault("backoff_base", 0.01)
    return RunConfig(
        input=InputConfig(dedup=dedup),
        limits=LimitConfig(**limits),
        retry=RetryConfig(**retry),
        fetch=FetchConfig(**fetch),
        breaker=BreakerConfig(**breaker),
        sink=SinkConfig(output=str(tmp_path / "out.jsonl"), flush_interval=0.05),
        **kw,
    )


async def run_engine(
    tmp_path: Path, lines: Iterable[str] | None, **kw: Any
) -> tuple[RunResult, list[dict[str, Any]]]:
    """Run the engine in-process over ``lines`` (None: tmp_path/urls.txt as it is)."""
    src = tmp_path / "urls.txt"
    if lines is not None:
        src.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, **kw)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    result = await engine.run()
    return result, read_records(tmp_path / "out.jsonl")


def read_records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]
