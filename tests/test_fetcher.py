"""The fetcher against real servers on 127.0.0.1: aiohttp.web for well-behaved HTTP,
``tests.faultserver`` (raw asyncio) for broken and hostile HTTP. Each failure must come out
as the contract's error kind, within the URL's budget, without unbounded memory."""

from __future__ import annotations

import asyncio
import gzip
import resource
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import RequestInfo, client_exceptions, http_exceptions, web
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from crawler import errors, fetcher
from crawler.config import FetchConfig
from crawler.errormap import map_exception
from crawler.fetcher import Fetcher
from crawler.response import Response
from crawler.session import make_session
from tests.conftest import serve_app
from tests.faultserver import FaultServer, bomb, closed_port

HOSTS = ("127.0.0.1", "127.0.0.2")  # two origins on loopback, for cross-host redirects
MIB = 1 << 20
# Time bounds. A test of "fails at once, not at the deadline" gives the fetch a long
# budget and allows a fraction of it: the bug (waiting for the deadline) takes the whole
# budget, a loaded machine takes seconds more than an idle one but never that long.
LONG = 30.0
QUICK = 10.0
SLACK = 5.0  # how far past its budget a timed-out fetch may return on a loaded machine


# -- servers ----------------------------------------------------------------------------------
@dataclass
class Seen:
    """One request as the aiohttp.web handler saw it."""

    host: str
    method: str
    path: str
    headers: CIMultiDictProxy[str]


@dataclass
class WebServer:
    ports: dict[str, int]
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str, host: str = HOSTS[0]) -> str:
        return f"http://{host}:{self.ports[host]}{path}"


def web_app(seen: list[Seen]) -> web.Application:
    """/hello: a small HTML page; /gzip: 300,000 bytes sent gzip-compressed; /slow-redirect:
    a redirect after ?delay= seconds (0.6); anything else: ``?to=LOCATION`` redirects there
    (verbatim, so it may be relative), otherwise 200 with the path as the body."""
    gz_plain = b"a" * 300_000

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        host = request.transport.get_extra_info("sockname")[0]  # type: ignore[union-attr]
        seen.append(Seen(host, request.method, request.path_qs, request.headers))
        resp: web.StreamResponse = await handler(request)
        return resp

    async def hello(request: web.Request) -> web.Response:
        return web.Response(
            body=b"<h1>hello</h1>", headers={"Content-Type": "Text/HTML; Charset=UTF-8"}
        )

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(gz_plain),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def slow_redirect(request: web.Request) -> web.Response:
        # The server is slow: this is the behaviour under test.
        await asyncio.sleep(float(request.query.get("delay", "0.6")))
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def anything(request: web.Request) -> web.Response:
        if "to" in request.query:
            return web.Response(status=302, headers={"Location": request.query["to"]})
        return web.Response(text=request.path)

    app = web.Application(middlewares=[record])
    app.router.add_get("/hello", hello)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/slow-redirect", slow_redirect)
    app.router.add_get("/{tail:.*}", anything)
    return app


@pytest.fixture
async def site() -> AsyncIterator[WebServer]:
    srv = WebServer(ports={})
    runner = web.AppRunner(web_app(srv.seen), access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    for host in HOSTS:
        tcp = web.TCPSite(runner, host, 0)
        await tcp.start()
        srv.ports[host] = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield srv
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True, params=["direct", "session"])
def request_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case runs on both request paths: aiohttp's connector, request and response
    driven by Fetcher._send (the default), and ClientSession.request (the fallback for an
    aiohttp without those interfaces)."""
    assert fetcher.DIRECT_REQUESTS  # the installed aiohttp must have the fast path
    monkeypatch.setattr(fetcher, "DIRECT_REQUESTS", request.param == "direct")
    return str(request.param)


@pytest.fixture
async def fault() -> AsyncIterator[FaultServer]:
    async with FaultServer() as srv:
        yield srv


# -- helpers ----------------------------------------------------------------------------------
async def fetch(url: str, budget: float = 5.0, **config: Any) -> Response:
    """One attempt through a fresh session, as the engine makes it for an input URL
    (whose origin may receive the credentials)."""
    cfg = FetchConfig(**config)
    async with make_session(cfg) as session:
        return await Fetcher(session, cfg).fetch(URL(url, encoded=True), budget, credentials=True)


async def failure(url: str, budget: float = 5.0, **config: Any) -> tuple[errors.FetchError, float]:
    """The FetchError the attempt ends with, and how long it took."""
    started = time.monotonic()
    with pytest.raises(errors.FetchError) as info:
        await fetch(url, budget, **config)
    return info.value, time.monotonic() - started


def to(base: str, location: str) -> str:
    return str(URL(base).update_query(to=location))


# -- normal behaviour -------------------------------------------------------------------------
async def test_ok_response(site: WebServer) -> None:
    url = site.url("/hello")
    resp = await fetch(url)
    assert resp.status == 200
    assert resp.nbytes == len(b"<h1>hello</h1>")
    assert resp.content_type == "text/html"  # parameters dropped, lower-cased
    assert resp.final_url == url
    assert resp.redirects == []
    assert resp.retry_after is None


async def test_head_reads_no_body(fault: FaultServer) -> None:
    # The head announces 64 MiB; were the body read (or its length checked), a 1 KiB
    # limit would make this too_large.
    resp = await fetch(fault.url("/big-body"), method="HEAD", max_bytes=1024)
    assert (resp.status, resp.nbytes) == (200, 0)
    assert [r.method for r in fault.requests] == ["HEAD"]


async def test_headers_and_user_agent_reach_the_server(site: WebServer) -> None:
    await fetch(
        site.url("/x"), user_agent="probe/1.0", headers=(("X-Trace", "1"), ("X-Trace", "2"))
    )
    [seen] = site.seen
    assert seen.headers["User-Agent"] == "probe/1.0"
    assert seen.headers.getall("X-Trace") == ["1", "2"]  # repeated -H adds, never replaces


async def test_user_agent_header_overrides_the_option(site: WebServer) -> None:
    await fetch(site.url("/x"), user_agent="probe/1.0", headers=(("user-agent", "other/2"),))
    assert site.seen[0].headers.getall("User-Agent") == ["other/2"]


async def test_gzip_body_counts_decompressed_bytes(site: WebServer) -> None:
    resp = await fetch(site.url("/gzip"))
    assert resp.nbytes == 300_000  # not the ~400 bytes that crossed the wire
    # The compressed body is far under the limit; its decompressed size is not.
    err, _ = await failure(site.url("/gzip"), max_bytes=100_000)
    assert err.kind == "too_large"


async def test_retry_after_is_reported_not_waited_for(fault: FaultServer) -> None:
    started = time.monotonic()
    resp = await fetch(fault.url("/year"), budget=LONG)
    assert (resp.status, resp.retry_after) == (503, "31536000")
    assert time.monotonic() - started < QUICK  # a year-long Retry-After is the engine's call


# -- redirects --------------------------------------------------------------------------------
async def test_redirect_chain_is_recorded_in_order(fault: FaultServer) -> None:
    resp = await fetch(fault.url("/chain/3"))
    assert resp.redirects == [fault.url("/chain/2"), fault.url("/chain/1")]  # intermediate
    assert resp.final_url == fault.url("/chain/0")
    assert (resp.status, resp.nbytes) == (200, 2)


async def test_max_redirects_is_the_number_followed(fault: FaultServer) -> None:
    resp = await fetch(fault.url("/chain/3"), max_redirects=3)
    assert len(resp.redirects) == 2 and resp.final_url == fault.url("/chain/0")
    err, _ = await failure(fault.url("/chain/4"), max_redirects=3)
    assert err.kind == "too_many_redirects"
    assert fault.hits("/chain/") == 4 + 4  # 4 for the first fetch; 3 followed + 1 refused
    # The record shows the chain it followed and where it stopped.
    assert err.response is not None
    assert err.response.redirects == [fault.url(f"/chain/{i}") for i in (3, 2)]
    assert err.response.final_url == fault.url("/chain/1")
    assert 300 <= err.response.status < 400


async def test_max_redirects_zero_follows_none(fault: FaultServer) -> None:
    err, _ = await failure(fault.url("/chain/1"), max_redirects=0)
    assert err.kind == "too_many_redirects"
    assert fault.hits("/chain/") == 1


async def test_redirect_loop_stops_fast(fault: FaultServer) -> None:
    err, took = await failure(fault.url("/loop"), budget=LONG, max_redirects=10)
    assert err.kind == "too_many_redirects"
    assert fault.hits("/loop") == 11
    assert took < QUICK


async def test_thousand_hop_chain_stops_at_the_limit(fault: FaultServer) -> None:
    err, _ = await failure(fault.url("/chain/1000"), max_redirects=10)
    assert err.kind == "too_many_redirects"
    assert fault.hits("/chain/") == 11  # not 1001


async def test_redirect_to_a_closed_port_is_connect(fault: FaultServer) -> None:
    err, _ = await failure(fault.url("/to-closed"))
    assert err.kind == "connect" and err.retryable
    assert fault.hits("/to-closed") == 1


@pytest.mark.parametrize(
    ("location", "final"),
    [
        ("../c", "/a/c"),
        ("c?x=1", "/a/b/c?x=1"),
        ("/root", "/root"),
        ("d#frag", "/a/b/d"),  # a fragment is never sent, nor kept in final_url
    ],
)
async def test_relative_location_is_resolved(site: WebServer, location: str, final: str) -> None:
    start = to(site.url("/a/b/start"), location)
    resp = await fetch(start)
    assert resp.final_url == site.url(final)
    assert resp.redirects == []  # one hop: nothing in between
    assert site.seen[-1].path == final.partition("#")[0]


async def test_scheme_relative_location_reaches_the_other_host(site: WebServer) -> None:
    other = f"//{HOSTS[1]}:{site.ports[HOSTS[1]]}/there"
    resp = await fetch(to(site.url("/here"), other))
    assert resp.final_url == site.url("/there", HOSTS[1])
    assert site.seen[-1].host == HOSTS[1]


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/file", "http://[::1", "http://[::1]@"])
async def test_unusable_location_is_protocol(fault: FaultServer, location: str) -> None:
    err, _ = await failure(to(fault.url("/redirect"), location))
    assert err.kind == "protocol"
    assert "redirect" in str(err)  # said as such, not as an unexpected error


async def test_credentials_stay_with_the_original_origin(site: WebServer) -> None:
    config: dict[str, Any] = {
        "headers": (
            ("Authorization", "Bearer s3cret"),
            ("Cookie", "session=1"),
            ("X-Trace", "t"),
        )
    }
    # Same origin: the credentials follow the redirect.
    await fetch(to(site.url("/start"), "/same"), **config)
    start, same = site.seen
    assert start.headers["Authorization"] == same.headers["Authorization"] == "Bearer s3cret"
    assert same.headers["Cookie"] == "session=1"
    # Another host: they are dropped, other headers are not.
    site.seen.clear()
    await fetch(to(site.url("/start"), site.url("/landing", HOSTS[1])), **config)
    start, landing = site.seen
    assert (start.host, landing.host) == HOSTS
    assert start.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in landing.headers
    assert "Cookie" not in landing.headers
    assert landing.headers["X-Trace"] == "t"


async def test_credentials_are_not_sent_back_after_leaving_the_origin(site: WebServer) -> None:
    # 127.0.0.1 -> 127.0.0.2 -> back to 127.0.0.1: once handed to another host, the chain
    # is no longer trusted with them (curl does the same).
    back = site.url("/back")
    await fetch(
        to(site.url("/start"), to(site.url("/hop", HOSTS[1]), back)),
        headers=(("Authorization", "Bearer s3cret"),),
    )
    assert [s.path for s in site.seen] == [
        URL(to(site.url("/start"), to(site.url("/hop", HOSTS[1]), back))).path_qs,
        URL(to(site.url("/hop", HOSTS[1]), back)).path_qs,
        "/back",
    ]
    assert ["Authorization" in s.headers for s in site.seen] == [True, False, False]


# -- body size --------------------------------------------------------------------------------
async def test_declared_length_over_the_limit_fails_before_reading(fault: FaultServer) -> None:
    # /promise-big declares 64 MiB and then never sends it: only a check of the head can
    # end this before the budget.
    err, took = await failure(fault.url("/promise-big"), budget=LONG, max_bytes=MIB)
    assert err.kind == "too_large"
    assert took < QUICK
    assert err.response is not None
    assert (err.response.status, err.response.nbytes) == (200, 0)


async def test_big_body_with_length_is_too_large(fault: FaultServer) -> None:
    err, took = await failure(fault.url("/big-body"), budget=LONG, max_bytes=10 * MIB)
    assert err.kind == "too_large" and not err.retryable
    assert took < QUICK


async def test_chunked_body_over_the_limit_stops_at_the_limit(fault: FaultServer) -> None:
    err, took = await failure(fault.url("/big-chunked"), budget=LONG, max_bytes=MIB)
    assert err.kind == "too_large"
    assert err.response is not None
    # Counted as it streamed, and reading stopped at the limit (64 MiB were on offer): the
    # record's bytes are what was taken, never more than --max-bytes.
    assert err.response.nbytes == MIB
    assert took < QUICK


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compression_bomb_is_too_large_in_bounded_memory(
    fault: FaultServer, encoding: str
) -> None:
    body = await asyncio.to_thread(bomb, encoding)  # built before measuring
    assert len(body) < MIB  # the bomb itself is small: only decompressed bytes can trip it
    limit = 10 * MIB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    err, took = await failure(fault.url(f"/{encoding}-bomb"), budget=LONG, max_bytes=limit)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert err.kind == "too_large"
    assert grown_mib < 100, f"peak RSS grew {grown_mib:.0f} MiB on a 200 MiB bomb"
    assert err.response is not None
    assert err.response.nbytes == limit  # stopped at the limit
    assert took < QUICK


# -- malformed responses ----------------------------------------------------------------------
PROTOCOL_FAULTS = [
    "/garbage",
    "/bad-chunk",
    "/huge-header",  # one header line over max_header_bytes
    "/many-headers",  # more header lines than the parser accepts
    "/short-body",  # Content-Length 1000, 10 bytes, clean close
    # A reset after the head has arrived leaves a truncated body, like /short-body: aiohttp
    # reports both as ClientPayloadError and names the reset only in the message text, which
    # the contract forbids classifying by. A truncated response is "protocol".
    "/reset-body",
]


@pytest.mark.parametrize("path", PROTOCOL_FAULTS)
async def test_malformed_response_is_protocol(fault: FaultServer, path: str) -> None:
    err, took = await failure(fault.url(path), budget=LONG)
    assert isinstance(err, errors.ProtocolError), err
    assert err.kind == "protocol" and not err.retryable
    assert took < QUICK  # recognised at once, not left to the deadline


async def test_reset_before_the_head_is_connect(fault: FaultServer) -> None:
    # The peer reset the connection before a response began: to a user that is "connection
    # reset by peer", a network failure worth retrying, not a malformed response.
    err, took = await failure(fault.url("/reset-headers"), budget=LONG)
    assert isinstance(err, errors.ConnectError)
    assert err.kind == "connect" and err.retryable
    assert took < QUICK


# -- timeouts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "budget"),
    [
        ("/silent", 0.8),
        ("/drip", 1.5),  # bytes keep arriving: only a deadline for the whole body ends it
    ],
)
async def test_stalled_server_times_out_within_the_budget(
    fault: FaultServer, path: str, budget: float
) -> None:
    err, took = await failure(fault.url(path), budget=budget)
    assert isinstance(err, errors.Timeout)
    assert err.kind == "timeout"
    assert not err.retryable  # the URL's deadline is spent: no time for another attempt
    assert budget - 0.05 <= took <= budget + SLACK


async def test_deadline_is_shared_by_every_redirect_hop(
    site: WebServer, fault: FaultServer
) -> None:
    # 3 s to the redirect, then a server that never answers: the second hop gets what is
    # left of the 6 s budget (the whole fetch ends at ~6 s), not a fresh one (~9 s).
    start = str(URL(site.url("/slow-redirect")).with_query(to=fault.url("/silent"), delay=3))
    err, took = await failure(start, budget=6.0)
    assert err.kind == "timeout"
    assert fault.hits("/silent") == 1
    assert took <= 6.0 + 1.5


async def test_pooled_connection_closed_by_the_server_is_sent_again_once() -> None:
    # A keep-alive connection the server drops when the next request arrives on it (an
    # idle timeout racing our reuse): the request goes again on a fresh connection, as
    # aiohttp's session does. A server that drops every request still fails, once retried.
    connections: list[int] = []  # requests seen on each connection, in order
    drop_all = False

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(0)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                connections[-1] += 1
                if connections[-1] > 1 or drop_all:
                    break  # the 2nd request on a connection: close without an answer
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    cfg = FetchConfig()
    try:
        async with make_session(cfg) as session:
            fetch_one = Fetcher(session, cfg).fetch
            assert (await fetch_one(url, 5.0)).status == 200
            assert (await fetch_one(url, 5.0)).status == 200  # resent on connection 2
            assert connections == [2, 1]
            drop_all = True
            with pytest.raises(errors.ConnectError, match="disconnected"):
                await fetch_one(url, 5.0)  # connection 2 drops it, then the fresh 3rd too
            assert connections == [2, 2, 1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("budget", [0.0, -1.0])
async def test_spent_budget_sends_nothing(fault: FaultServer, budget: float) -> None:
    # aiohttp reads a total timeout of 0 as "none": without a check this would hang.
    err, took = await failure(fault.url("/silent"), budget=budget)
    assert err.kind == "timeout"
    assert took < QUICK  # /silent never answers: a request sent would hang for good
    assert fault.requests == []


# -- connect, dns, tls ------------------------------------------------------------------------
async def test_connection_refused_is_connect() -> None:
    err, took = await failure(f"http://127.0.0.1:{closed_port()}/", budget=LONG)
    assert isinstance(err, errors.ConnectError) and err.retryable
    assert err.message == "Connection refused"  # the OS's words, not asyncio's
    assert took < QUICK


async def test_unresolvable_host_is_dns() -> None:
    # .invalid never resolves (RFC 6761). Ask the local resolver first, bounded: a sandbox
    # whose resolver hijacks names or hangs cannot tell us anything about the mapping.
    def probe() -> bool:
        try:
            socket.getaddrinfo("nonexistent.invalid", 80)
        except socket.gaierror:
            return True
        return False

    try:
        fails = await asyncio.wait_for(asyncio.to_thread(probe), 3)
    except TimeoutError:
        pytest.skip("the local resolver does not answer")
    if not fails:
        pytest.skip("the local resolver resolves nonexistent.invalid")
    err, _ = await failure("http://nonexistent.invalid/", budget=LONG)
    assert isinstance(err, errors.DNSError)
    assert err.kind == "dns"


@pytest.fixture
async def https_url(tmp_path: Path) -> AsyncIterator[str]:
    """A self-signed certificate for 127.0.0.1, made by openssl, served by aiohttp.web."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate: {stderr.decode().strip()[:200]}")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", hello)
    async with serve_app(app, ssl_context=ctx) as base:
        yield f"{base}/"


async def test_self_signed_certificate_is_tls(https_url: str) -> None:
    err, took = await failure(https_url, budget=LONG, verify_tls=True)
    assert isinstance(err, errors.TLSError)
    assert err.kind == "tls" and not err.retryable
    assert took < QUICK


async def test_insecure_accepts_a_self_signed_certificate(https_url: str) -> None:
    resp = await fetch(https_url, verify_tls=False)
    assert (resp.status, resp.nbytes) == (200, 6)


async def test_https_to_a_plain_http_port_is_tls(site: WebServer) -> None:
    err, took = await failure(site.url("/hello").replace("http://", "https://"), budget=LONG)
    assert err.kind == "tls"
    assert took < QUICK


# -- map_exception: failures that are hard to provoke on purpose --------------------------------
KEY = ConnectionKey("example.test", 443, True, True, None, None, None)
INFO = RequestInfo(
    URL("http://example.test/"), "GET", CIMultiDictProxy(CIMultiDict()), URL("http://example.test/")
)


def response_error(status: int, cause: BaseException | None) -> BaseException:
    exc = client_exceptions.ClientResponseError(INFO, (), status=status, message="bad")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # aiohttp wraps parser errors in ClientResponseError with a status: it is the
        # parser's complaint (the cause) that counts, never the status, so never "http".
        (response_error(400, http_exceptions.BadStatusLine("garbage")), "protocol"),
        (response_error(502, http_exceptions.HttpProcessingError(code=502)), "protocol"),
        (response_error(0, None), "protocol"),
        (http_exceptions.ContentEncodingError("br"), "protocol"),
        (http_exceptions.TransferEncodingError("bad chunk"), "protocol"),
        (client_exceptions.ClientPayloadError("payload is not completed"), "protocol"),
        (client_exceptions.ServerDisconnectedError(), "connect"),
        (client_exceptions.ClientOSError(104, "Connection reset by peer"), "connect"),
        (ConnectionResetError(104, "Connection reset by peer"), "connect"),
        (
            client_exceptions.ClientConnectorDNSError(KEY, OSError(-2, "Name not known")),
            "dns",
        ),
        (
            client_exceptions.ClientConnectorCertificateError(
                KEY, ssl.SSLCertVerificationError("certificate verify failed")
            ),
            "tls",
        ),
        (client_exceptions.ClientConnectorSSLError(KEY, ssl.SSLError(1, "alert")), "tls"),
        (client_exceptions.InvalidURL("http://[::1"), "invalid_url"),
        (RuntimeError("surprise from the stack"), "internal"),
    ],
)  # fmt: skip
def test_map_exception_kind(exc: BaseException, kind: str) -> None:
    mapped = map_exception(exc, deadline_left=5)
    assert mapped.kind == kind
    assert mapped.kind != "http"


def test_timeout_with_time_left_is_a_retryable_attempt_timeout() -> None:
    for exc in (client_exceptions.ConnectionTimeoutError(), client_exceptions.SocketTimeoutError()):
        mapped = map_exception(exc, deadline_left=2.0)
        assert isinstance(mapped, errors.AttemptTimeout)
        assert mapped.kind == "timeout" and mapped.retryable


def test_timeout_with_the_deadline_spent_is_final() -> None:
    mapped = map_exception(TimeoutError(), deadline_left=0.0)
    assert type(mapped) is errors.Timeout and not mapped.retryable


def test_an_aiohttp_without_the_direct_interfaces_gets_the_session_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiohttp.client_proto import ResponseHandler

    assert fetcher._direct_requests_work()

    def set_response_params(self: ResponseHandler, *, timer: object = None) -> None: ...

    monkeypatch.setattr(ResponseHandler, "set_response_params", set_response_params)
    assert not fetcher._direct_requests_work()
