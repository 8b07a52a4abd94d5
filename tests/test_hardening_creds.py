"""Issue 12: credentials (Authorization, Cookie, Proxy-Authorization and --secret-header
names) go only to the origin (scheme, host, port) they were given for: the input URL's in
fetch, a seed's in crawl. Never to a robots.txt Sitemap: host, a link on another port,
a redirect target elsewhere, or the same host over https.

Four servers, each recording the headers it received: A (127.0.0.1, the seed's origin),
B (127.0.0.1, another port), C (127.0.0.2), T (https on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import trustme
from aiohttp import web

from tests.test_cli import ENV, assert_no_traceback

SECRETS = {"authorization": "Bearer s3cret", "cookie": "session=1", "x-api-key": "k3y"}
ARGS = (
    "-H", "Authorization: Bearer s3cret", "-H", "Cookie: session=1",
    "-H", "X-Api-Key: k3y", "--secret-header", "x-api-key", "-H", "X-Trace: t",
)  # fmt: skip


@dataclass
class Origin:
    name: str
    base: str = ""
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # path, headers

    def url(self, path: str) -> str:
        return self.base + path

    def with_secrets(self) -> list[str]:
        return [p for p, h in self.seen if any(h.get(k) == v for k, v in SECRETS.items())]


@dataclass
class Servers:
    a: Origin
    b: Origin
    c: Origin
    t: Origin

    @property
    def all(self) -> tuple[Origin, ...]:
        return (self.a, self.b, self.c, self.t)


def _page(*links: str) -> web.Response:
    body = "".join(f'<a href="{link}">x</a>' for link in links)
    return web.Response(text=f"<html><body>{body}</body></html>", content_type="text/html")


def _sitemap(*urls: str) -> web.Response:
    locs = "".join(f"<url><loc>{u}</loc></url>" for u in urls)
    xml = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>'
    return web.Response(text=xml, content_type="application/xml")


def _app(origin: Origin, servers: Servers) -> web.Application:
    a, b, c, t = servers.a, servers.b, servers.c, servers.t

    async def handle(request: web.Request) -> web.StreamResponse:
        origin.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        path = request.path
        if path == "/robots.txt":
            if origin is a:  # the issue's case: Sitemap: lines naming other origins
                lines = [f"Sitemap: {o.url('/sitemap.xml')}" for o in (c, b, a)]
                return web.Response(text="User-agent: *\nAllow: /\n" + "\n".join(lines) + "\n")
            raise web.HTTPNotFound
        if path == "/sitemap.xml":
            return _sitemap(origin.url("/from-sitemap"))
        if origin is a and path == "/":
            return _page("/a", b.url("/b"), t.url("/t"), "/to-c", "/to-b", "/to-https")
        if path == "/to-c":
            raise web.HTTPFound(c.url("/landing"))
        if path == "/to-b":
            raise web.HTTPFound(b.url("/landing"))
        if path == "/to-https":
            raise web.HTTPFound(t.url("/landing"))
        if path == "/to-self":
            raise web.HTTPFound(origin.url("/a"))
        return _page()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    srv = Servers(Origin("A"), Origin("B"), Origin("C"), Origin("T"))
    runners: list[web.AppRunner] = []
    try:
        plan: list[tuple[Origin, str, ssl.SSLContext | None]] = [
            (srv.a, "127.0.0.1", None),
            (srv.b, "127.0.0.1", None),
        ]
        plan += [(srv.c, "127.0.0.2", None), (srv.t, "127.0.0.1", ctx)]
        for origin, host, tls in plan:
            runner = web.AppRunner(_app(origin, srv), access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, 0, ssl_context=tls)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            origin.base = f"{'https' if tls else 'http'}://{host}:{port}"
        yield srv
    finally:
        for runner in runners:
            await runner.cleanup()


async def _cli(*args: str, stdin: bytes = b"") -> list[dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 90)
    assert_no_traceback(err)
    assert proc.returncode == 0, err
    return [orjson.loads(line) for line in out.splitlines()]


def _assert_only_a_got_secrets(srv: Servers) -> None:
    for origin in (srv.b, srv.c, srv.t):
        assert origin.seen, f"{origin.name} was never asked: the test proves nothing"
        assert origin.with_secrets() == [], f"{origin.name} received credentials"
        # Headers that are not secret still go everywhere.
        assert all(h.get("x-trace") == "t" for _, h in origin.seen), origin.name


async def test_crawl_sends_credentials_only_to_the_seed_origin(servers: Servers) -> None:
    srv = servers
    records = await _cli(
        "crawl", "-q", "--sitemaps", "--insecure", "--timeout", "20", *ARGS,
        srv.a.url("/"), srv.a.url("/to-c"),
    )  # fmt: skip
    urls = {r["url"] for r in records}
    # What was reached: robots.txt and sitemaps of B and C (named by A's robots.txt), a
    # link on another port (B), the same host over https (T), seed redirects to C.
    assert srv.b.url("/b") in urls and srv.t.url("/t") in urls
    assert {"/sitemap.xml"} <= {p for p, _ in srv.c.seen}
    assert {"/sitemap.xml", "/b"} <= {p for p, _ in srv.b.seen}
    assert "/landing" in {p for p, _ in srv.c.seen}  # the seed /to-c redirected there
    assert "/landing" in {p for p, _ in srv.t.seen}  # /to-https: http -> https, same host
    _assert_only_a_got_secrets(srv)
    # The seed's own origin gets them everywhere: pages, robots.txt, its sitemap.
    a_paths = {p for p, _ in srv.a.seen}
    assert {"/", "/a", "/robots.txt", "/sitemap.xml", "/from-sitemap"} <= a_paths
    assert sorted(srv.a.with_secrets()) == sorted(p for p, _ in srv.a.seen)


async def test_fetch_sends_credentials_only_to_each_input_origin(servers: Servers) -> None:
    srv = servers
    inputs = [srv.a.url(p) for p in ("/to-b", "/to-c", "/to-https", "/to-self", "/plain")]
    inputs.append(srv.c.url("/direct"))  # an input URL of its own: its own origin
    records = await _cli(
        "fetch", "-q", "--insecure", *ARGS, stdin="\n".join(inputs).encode() + b"\n"
    )
    assert len(records) == len(inputs) and all(r["ok"] for r in records)
    # Redirects to another port, host and scheme lose them; the same origin keeps them.
    for origin in (srv.b, srv.t):
        assert origin.seen and origin.with_secrets() == [], origin.name
    assert srv.c.with_secrets() == ["/direct"]
    assert "/landing" in {p for p, _ in srv.c.seen}
    assert sorted(srv.a.with_secrets()) == sorted(p for p, _ in srv.a.seen)
    assert "/a" in {p for p, _ in srv.a.seen}  # /to-self followed, with credentials
    # --secret-header made X-Api-Key one of them; -H X-Trace stays an ordinary header.
    assert all(h.get("x-api-key") == "k3y" for _, h in srv.a.seen)
    assert all(h.get("x-trace") == "t" for o in srv.all for _, h in o.seen)


async def test_secret_header_needs_a_header_name() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "fetch", "--secret-header", "bad name", "-",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and out == b""
    assert b"--secret-header" in err and b"header name" in err
    assert len(err.strip().splitlines()) == 1


async def test_warc_request_records_hold_no_secrets(servers: Servers, tmp_path: Path) -> None:
    """A WARC file is shared and replayed: the secrets sent are redacted in it."""
    from warcio.archiveiterator import ArchiveIterator

    srv, warc = servers, tmp_path / "out.warc.gz"
    await _cli(
        "fetch", "-q", "--insecure", "--warc", str(warc), *ARGS,
        stdin=srv.a.url("/plain").encode() + b"\n",
    )  # fmt: skip
    assert srv.a.with_secrets() == ["/plain"]  # they were sent...
    with warc.open("rb") as fh:
        sent = [
            dict(rec.http_headers.headers)
            for rec in ArchiveIterator(fh)
            if rec.rec_type == "request"
        ]
    assert len(sent) == 1
    headers = {k.lower(): v for k, v in sent[0].items()}
    # ...and the archive names them without their values.
    for name in ("authorization", "cookie", "x-api-key"):
        assert headers[name] == "[redacted]", headers
    assert headers["x-trace"] == "t"
    assert b"s3cret" not in warc.read_bytes() and b"k3y" not in gzip.decompress(warc.read_bytes())
