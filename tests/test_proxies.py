"""Proxies (crawler.proxies, crawler.proxied): real proxies on 127.0.0.1 (pproxy for http
and socks5, raw asyncio servers for a proxy that records, hangs or drops CONNECT)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from crawler.cli.proxyenv import env_noproxy, env_proxies
from crawler.proxies import Bypass, parse_proxy
from tests.conftest import Server, marked_env, run_engine
from tests.faultserver import closed_port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# pproxy's main() installs uvloop if it can, then calls asyncio.get_event_loop(), which
# uvloop refuses outside a running loop: run it on asyncio's own loop.
_PPROXY = (
    "import sys; sys.modules['uvloop'] = None; "
    "sys.argv = ['pproxy', '-l', sys.argv[1]]; "
    "from pproxy.server import main; main()"
)


def _start_pproxy(listen: str, port: int) -> subprocess.Popen[bytes]:
    env, _ = marked_env(dict(os.environ))
    proc = subprocess.Popen(
        [sys.executable, "-c", _PPROXY, listen],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while True:  # bounded poll until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"pproxy did not start: {listen}") from None
            time.sleep(0.02)


@pytest.fixture(scope="module")
def pproxy() -> Iterator[dict[str, int]]:
    """Two pproxy processes: http+socks5 on one port, socks5 with user:secret on another."""
    plain, auth = _free_port(), _free_port()
    procs = [
        _start_pproxy(f"http+socks5://127.0.0.1:{plain}", plain),
        _start_pproxy(f"socks5://127.0.0.1:{auth}#user:secret", auth),
    ]
    try:
        yield {"plain": plain, "auth": auth}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


class RawProxy:
    """A tiny HTTP proxy: records each request head it gets; ``mode`` says what it does:
    "answer" (replies 200 itself), "hang" (says nothing), "drop" (closes on CONNECT)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._hung: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        if self.mode == "hang":
            self._hung.append(writer)
            return
        if self.mode == "answer":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nvia proxy")
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> RawProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._hung:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def raw_proxy() -> AsyncIterator[type[RawProxy]]:
    yield RawProxy


async def test_http_and_socks5_proxies_fetch_and_name_themselves(
    tmp_path: Path, server: Server, pproxy: dict[str, int]
) -> None:
    port = pproxy["plain"]
    for scheme in ("http", "socks5", "socks5h"):
        proxy = f"{scheme}://127.0.0.1:{port}"
        _, records = await run_engine(tmp_path, [server.url(f"/ok?{scheme}")], proxies=(proxy,))
        (rec,) = records
        assert rec["ok"] and rec["status"] == 200, rec
        assert rec["proxy"] == proxy
    assert server.rec.hits["/ok?socks5h"] == 1


async def test_socks_credentials_stay_with_the_proxy(
    tmp_path: Path, server: Server, pproxy: dict[str, int]
) -> None:
    good = f"socks5://user:secret@127.0.0.1:{pproxy['auth']}"
    _, records = await run_engine(tmp_path, [server.url("/ok")], proxies=(good,))
    assert records[0]["ok"], records
    assert records[0]["proxy"] == f"socks5://127.0.0.1:{pproxy['auth']}"
    assert "secret" not in orjson.dumps(records).decode()
    assert not any("Proxy-Authorization" in h for h in server.rec.headers)


async def test_http_proxy_gets_proxy_authorization_and_the_absolute_url(
    tmp_path: Path, raw_proxy: type[RawProxy]
) -> None:
    async with raw_proxy("answer") as proxy:
        url = "http://example.test:8080/page"
        _, records = await run_engine(
            tmp_path, [url], proxies=(f"http://us%40er:p%3Ass@127.0.0.1:{proxy.port}",)
        )
    (rec,) = records
    assert rec["ok"] and rec["bytes"] == len("via proxy"), rec
    assert rec["proxy"] == f"http://127.0.0.1:{proxy.port}"
    (head,) = proxy.heads
    assert head.startswith(b"GET http://example.test:8080/page HTTP/1.1\r\n")
    token = base64.b64encode(b"us@er:p:ss")
    assert b"Proxy-Authorization: Basic " + token in head


async def test_refusing_hanging_and_connect_dropping_proxies(
    tmp_path: Path, raw_proxy: type[RawProxy]
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    _, records = await run_engine(tmp_path, ["http://example.test/"], proxies=(dead,), retries=0)
    assert records[0]["error"] == {
        "kind": "proxy",
        "message": "cannot connect to proxy: Connection refused",
    }
    assert records[0]["proxy"] == dead
    async with raw_proxy("hang") as hang:
        _, records = await run_engine(
            tmp_path,
            ["http://example.test/"],
            proxies=(f"http://127.0.0.1:{hang.port}",),
            retries=0,
            timeout=0.3,
        )
    assert records[0]["error"]["kind"] == "timeout", records
    assert records[0]["proxy"] == f"http://127.0.0.1:{hang.port}"
    async with raw_proxy("drop") as drop:
        _, records = await run_engine(
            tmp_path,
            ["https://example.test/"],
            proxies=(f"http://127.0.0.1:{drop.port}",),
            retries=0,
        )
    assert drop.heads[0].startswith(b"CONNECT example.test:443 HTTP/1.1\r\n")
    assert records[0]["error"]["kind"] == "proxy", records
    assert "CONNECT" in records[0]["error"]["message"]


async def test_pool_moves_a_dead_proxys_hosts_and_hosts_stick(
    tmp_path: Path, server: Server, pproxy: dict[str, int]
) -> None:
    live = (f"http://127.0.0.1:{pproxy['plain']}", f"socks5://127.0.0.1:{pproxy['plain']}")
    dead = f"http://127.0.0.1:{closed_port()}"
    pool = tmp_path / "proxies.txt"
    pool.write_text(f"# the pool\n{dead}\n{live[0]}\n\n{live[1]}\n")
    urls = [server.url(f"/ok?{i}", host) for host in server.ports for i in range(6)]
    from crawler.options import run_config

    fetch = run_config({"proxy_file": pool}, crawl=False).fetch
    _, records = await run_engine(
        tmp_path, urls, proxies=fetch.proxies, breaker_threshold=1, retries=3, concurrency=4
    )
    assert len(records) == len(urls)
    assert all(r["ok"] for r in records), [r["error"] for r in records if not r["ok"]]
    by_host: dict[str, set[str]] = {}
    for r in records:
        by_host.setdefault(r["url"].split("/")[2], set()).add(r["proxy"])
    assert all(len(used) == 1 and used <= set(live) for used in by_host.values()), by_host


async def test_all_proxies_benched(tmp_path: Path) -> None:
    dead = f"socks5://127.0.0.1:{closed_port()}"
    urls = [f"http://example.test/{i}" for i in range(3)]
    _, records = await run_engine(
        tmp_path, urls, proxies=(dead,), breaker_threshold=1, retries=0, concurrency=1
    )
    kinds = [r["error"]["kind"] for r in records]
    assert kinds == ["proxy"] * 3
    benched = [r for r in records if "benched" in r["error"]["message"]]
    assert len(benched) == 2 and benched[0]["attempts"] == 1, records


async def test_block_private_checks_what_a_proxy_cannot_hide(
    tmp_path: Path, raw_proxy: type[RawProxy]
) -> None:
    async with raw_proxy("answer") as proxy:
        urls = ["http://localhost/", "http://10.1.2.3/", "http://example.test/"]
        _, records = await run_engine(
            tmp_path,
            urls,
            proxies=(f"http://127.0.0.1:{proxy.port}",),
            block_private=True,
        )
    by_url = {r["url"]: r for r in records}
    assert by_url["http://localhost/"]["error"]["kind"] == "blocked"
    assert by_url["http://10.1.2.3/"]["error"]["kind"] == "blocked"
    assert by_url["http://example.test/"]["ok"]  # the proxy resolves it; its address is ours
    assert len(proxy.heads) == 1


async def test_socks5_local_dns_is_checked(tmp_path: Path, pproxy: dict[str, int]) -> None:
    port = pproxy["plain"]
    _, records = await run_engine(
        tmp_path,
        ["http://crawler-test.localhost/"],
        proxies=(f"socks5://127.0.0.1:{port}",),
        block_private=True,
        resolve=(("crawler-test.localhost", "127.0.0.1"),),
    )
    assert records[0]["error"]["kind"] == "blocked", records
    assert "127.0.0.1" in records[0]["error"]["message"]


def test_proxy_urls_noproxy_and_environment() -> None:
    spec = parse_proxy("u:hunter2@proxy.test")
    assert (spec.scheme, spec.port, spec.name) == ("http", 1080, "http://proxy.test:1080")
    assert (spec.user, spec.password) == ("u", "hunter2")
    assert "hunter2" not in repr(spec) and "hunter2" not in str(spec)  # logs, tracebacks
    assert parse_proxy("socks5h://[::1]:9").name == "socks5h://[::1]:9"
    for bad, words in [
        ("socks4://h:1", "unsupported proxy scheme 'socks4'"),
        ("http://u:hunter2@h:1/path", "u:***@"),
    ]:
        with pytest.raises(ValueError, match="proxy") as info:
            parse_proxy(bad)
        assert words in str(info.value) and "hunter2" not in str(info.value)
    bypass = Bypass(["example.com", ".other.org", "10.0.0.0/8", "[::1]"])
    assert bypass("example.com") and bypass("www.example.com") and bypass("a.other.org")
    assert not bypass("notexample.com") and not bypass("example.com.evil")
    assert bypass("10.9.8.7") and bypass("::1") and not bypass("11.0.0.1")
    assert Bypass(["*"])("anything") and not Bypass([])("x")
    env = {"HTTP_PROXY": "http://upper:1", "HTTPS_PROXY": "http://s:2", "all_proxy": "socks5://a:3"}
    assert env_proxies(env) == {"https": "http://s:2", "all": "socks5://a:3"}
    assert env_proxies({"http_proxy": "http://lower:1"}) == {"http": "http://lower:1"}
    assert env_noproxy({"NO_PROXY": "a", "no_proxy": "b"}) == "b"


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    env, _ = marked_env(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crawler",
        "fetch",
        "--retries",
        "0",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_cli_environment_proxies_and_bad_proxy(
    server: Server, raw_proxy: type[RawProxy]
) -> None:
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    url = server.url("/ok")
    async with raw_proxy("answer") as proxy:
        env = {**base, "http_proxy": f"http://127.0.0.1:{proxy.port}"}
        for extra, args, via in [
            ({}, [], True),
            ({}, ["--no-env-proxy"], False),
            ({"NO_PROXY": "127.0.0.1"}, [], False),
        ]:
            code, out, err = await _cli("-q", *args, url, env={**env, **extra})
            (rec,) = [orjson.loads(line) for line in out.splitlines()]
            assert code == 0 and rec["ok"], err
            assert rec["proxy"] == (f"http://127.0.0.1:{proxy.port}" if via else None), extra
    assert len(proxy.heads) == 1
    code, out, err = await _cli("--proxy", "gopher://u:pw@h:1", url, env=base)
    assert code == 2 and out == b""
    assert err.decode().strip().splitlines() == [
        "crawler: error: --proxy: unsupported proxy scheme 'gopher' in 'gopher://u:***@h:1': "
        "expected http, https, socks5 or socks5h"
    ]
