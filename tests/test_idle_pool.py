"""Idle connections: kept only for hosts with work queued, and sockets kept below the
file-descriptor limit (crawler.frontier ``waiting``, Fetcher.keep_idle_for,
crawler.session.socket_limits). Observed from the servers' side: raw asyncio servers
on 127.0.0.2 / 127.0.0.3 that count the connections they hold."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crawler.config import FetchConfig
from crawler.engine import Engine
from crawler.inputs import LineSource
from crawler.session import FD_RESERVE, socket_limits
from tests.conftest import make_config, read_records, until


class CountingServer:
    """HTTP/1.1 with keep-alive; ``/hold`` answers once ``release`` is set."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.requests = 0
        self.release = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if head.split(b" ", 2)[1] == b"/hold":
                    await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[tuple[CountingServer, CountingServer]]:
    pair = (CountingServer(), CountingServer())
    started = []
    for srv, host in zip(pair, ("127.0.0.2", "127.0.0.3"), strict=True):
        s = await asyncio.start_server(srv.handle, host, 0)
        srv.port = s.sockets[0].getsockname()[1]
        started.append(s)
    yield pair
    for srv in pair:
        srv.release.set()
    for s in started:
        s.close()


def _engine(tmp_path: Path, lines: list[str], **kw: object) -> Engine:
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    return Engine(make_config(tmp_path, **kw), LineSource(str(src)), install_signal_handlers=False)


async def test_host_with_no_more_work_keeps_no_idle_connection(
    tmp_path: Path, servers: tuple[CountingServer, CountingServer]
) -> None:
    a, b = servers
    lines = [f"http://127.0.0.3:{b.port}/hold", f"http://127.0.0.2:{a.port}/done"]
    run = asyncio.create_task(_engine(tmp_path, lines, concurrency=2).run())
    await until(lambda: a.requests == 1 and b.requests == 1, timeout=5)
    # A's only URL is answered while the run goes on (B holds it): A's socket is closed.
    await until(lambda: a.open == 0, timeout=3)
    assert b.open == 1  # the request in flight keeps its connection
    b.release.set()
    await run
    assert len(read_records(tmp_path / "out.jsonl")) == 2


async def test_host_with_work_queued_reuses_its_connection(
    tmp_path: Path, servers: tuple[CountingServer, CountingServer]
) -> None:
    a, b = servers
    lines = [
        f"http://127.0.0.{2 + i % 2}:{(a, b)[i % 2].port}/p/{i}" for i in range(20)
    ]  # two hosts interleaved: each has more queued while its previous URL runs
    await _engine(tmp_path, lines, concurrency=1).run()
    assert len(read_records(tmp_path / "out.jsonl")) == 20
    assert (a.requests, b.requests) == (10, 10)
    assert (a.accepted, b.accepted) == (1, 1)  # keep-alive: one connection per host


async def test_connections_closed_when_each_host_is_done(
    tmp_path: Path, servers: tuple[CountingServer, CountingServer]
) -> None:
    a, b = servers
    lines = [f"http://127.0.0.2:{a.port}/p/{i}" for i in range(5)]
    lines.append(f"http://127.0.0.3:{b.port}/hold")
    run = asyncio.create_task(_engine(tmp_path, lines, concurrency=4, per_host=4).run())
    await until(lambda: a.requests == 5 and b.requests == 1, timeout=5)
    await until(lambda: a.open == 0, timeout=3)  # every one of A's connections, not just one
    b.release.set()
    await run


def test_fd_limit_raised_and_connections_bounded_below_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 600:
        pytest.skip("needs a finite hard RLIMIT_NOFILE of 600 or more")
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))  # the soft limit only
    try:
        limit, idle = socket_limits(FetchConfig())
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised to the hard one
        assert limit > 0 and limit + idle + FD_RESERVE <= hard
        assert socket_limits(FetchConfig(pool_size=50))[0] == 50
        assert socket_limits(FetchConfig(pool_size=10**6))[0] == limit  # clamped
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_idle_pool_is_capped(
    tmp_path: Path, servers: tuple[CountingServer, CountingServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = servers
    monkeypatch.setattr("crawler.session.IDLE_CAP", 0)
    lines = [f"http://127.0.0.{2 + i % 2}:{(a, b)[i % 2].port}/p/{i}" for i in range(6)]
    await _engine(tmp_path, lines, concurrency=1).run()
    assert (a.requests, b.requests) == (3, 3)
    # A's connection is the one idle while B's are made: each of B's serves one request.
    assert (a.accepted, b.accepted) == (1, 3)
