"""Per-host memory at one URL per host: a connection closed after its response (its host
has no more work, Fetcher.keep_idle_for) leaves nothing behind in aiohttp's pool
(crawler.session.close_pooled). aiohttp had put it back in the pool before the fetcher
closed it, and kept it there, closed, with its host's queue, until its keep-alive
cleanup: ~2.5 KB per host for a whole run (benchmarks/RESULTS.md, "Round 2: per-host
memory")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from crawler.config import FetchConfig
from crawler.fetcher import Fetcher
from crawler.session import make_session
from tests.conftest import until


@dataclass
class NoWork:
    """The frontier as the fetcher sees it (crawler.fetcher.HostWork): nothing queued."""

    waiting: dict[str | None, Any]
    in_flight: int = 0


class Counting:
    """HTTP/1.1 keep-alive, a 2-byte page; counts the connections it holds."""

    def __init__(self) -> None:
        self.open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def hosts() -> AsyncIterator[tuple[Counting, list[str]]]:
    """Four hosts (one server on 127.0.0.2-127.0.0.5 each): one URL each."""
    counting, servers, urls = Counting(), [], []
    for i in range(2, 6):
        server = await asyncio.start_server(counting.handle, f"127.0.0.{i}", 0)
        servers.append(server)
        urls.append(f"http://127.0.0.{i}:{server.sockets[0].getsockname()[1]}/only")
    yield counting, urls
    for server in servers:
        server.close()


async def test_done_hosts_leave_nothing_in_the_pool(hosts: tuple[Counting, list[str]]) -> None:
    counting, urls = hosts
    config = FetchConfig()
    async with make_session(config) as session:
        fetcher = Fetcher(session, config)
        fetcher.keep_idle_for(NoWork(waiting={}))
        for url in urls:
            resp = await fetcher.fetch(URL(url, encoded=True), 5.0)
            assert resp.status == 200
        await until(lambda: counting.open == 0, timeout=5)  # each one closed: no work left
        pool = getattr(session.connector, "_conns", None)
        assert pool is not None  # aiohttp's pool, as crawler.session.close_pooled knows it
        assert dict(pool) == {}  # no closed connection (nor its host's key) kept there


async def test_host_with_work_waiting_keeps_its_connection_pooled(
    hosts: tuple[Counting, list[str]],
) -> None:
    counting, urls = hosts
    config = FetchConfig()
    async with make_session(config) as session:
        fetcher = Fetcher(session, config)
        fetcher.keep_idle_for(NoWork(waiting={"127.0.0.2": object()}))
        for url in urls:
            await fetcher.fetch(URL(url, encoded=True), 5.0)
        await until(lambda: counting.open == 1, timeout=5)
        pool = getattr(session.connector, "_conns", None)
        assert pool is not None
        assert [key.host for key in pool] == ["127.0.0.2"]
        assert len(pool[next(iter(pool))]) == 1
