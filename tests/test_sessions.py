"""Sessions, TLS and revisits: the cookie jar (--cookies, --cookie, --cookie-jar), CA and
client certificates (--cacert, --cert/--key), conditional revisits (--etags)."""

from __future__ import annotations

import http.cookiejar
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

import crawler
from crawler.config import ConfigError, FetchConfig
from crawler.errors import UsageError
from crawler.options import run_config
from crawler.sessions import check_session_files
from tests.conftest import run_engine
from tests.test_cli import run


async def _start(
    app: web.Application, host: str = "127.0.0.1", **kw: object
) -> tuple[str, web.AppRunner]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, **kw)  # type: ignore[arg-type]
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scheme = "https" if kw.get("ssl_context") else "http"
    return f"{scheme}://{host}:{port}", runner


def _cookie_app(seen: list[str | None]) -> web.Application:
    """/login sets a cookie and redirects to /check, which wants it (403 without)."""

    async def login(request: web.Request) -> web.Response:
        resp = web.HTTPFound("/check")
        resp.set_cookie("session", "s3cr3t", path="/")
        raise resp

    async def check(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        if request.cookies.get("pre") == "1":
            resp = web.Response(text="pre")
            resp.set_cookie("new", "2", max_age=3600)
            return resp
        if request.cookies.get("session") != "s3cr3t":
            return web.Response(status=403)
        return web.Response(text='<a href="/check">again</a>', content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        resp = web.Response(text='<a href="/check">in</a>', content_type="text/html")
        resp.set_cookie("session", "s3cr3t")
        return resp

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/check", check)
    app.router.add_get("/", page)
    return app


@pytest.fixture
async def cookie_site() -> AsyncIterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    base, runner = await _start(_cookie_app(seen))
    try:
        yield base, seen
    finally:
        await runner.cleanup()


async def test_cookies_kept_for_the_run_only_when_asked(
    cookie_site: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    base, seen = cookie_site
    _, [plain] = await run_engine(tmp_path, [f"{base}/login"])  # fetch's default: no jar
    assert plain["status"] == 403 and seen == [None]
    _, [kept] = await run_engine(tmp_path, [f"{base}/login"], cookies=True)
    assert kept["status"] == 200 and kept["ok"] is True
    assert seen[-1] == "session=s3cr3t"


async def test_crawl_keeps_cookies_by_default(cookie_site: tuple[str, list[str | None]]) -> None:
    base, seen = cookie_site
    async with crawler.crawl([f"{base}/"], ignore_robots=True, timeout=5) as records:
        got = {r.url: r.status async for r in records}
    assert got == {f"{base}/": 200, f"{base}/check": 200}
    assert seen == ["session=s3cr3t"]


def test_cookie_options_become_config() -> None:
    assert run_config({}, crawl=False).fetch.cookies is False
    assert run_config({}, crawl=True).fetch.cookies is True
    assert run_config({"cookies": False}, crawl=True).fetch.cookies is False
    config = run_config({"cookie": ["a=1; b=2", "c=3"], "cookie_jar": "j.txt"}, crawl=False)
    assert config.fetch.cookie == ("a=1", "b=2", "c=3")
    assert config.fetch.cookies is True  # a jar file to load and save turns the jar on
    with pytest.raises(ConfigError, match="invalid cookie 'a b=1'"):
        run_config({"cookie": ["a b=1"]}, crawl=False)
    with pytest.raises(ConfigError, match="cookie_jar needs cookies"):
        run_config({"cookie_jar": "j.txt", "cookies": False}, crawl=False)


async def test_given_cookie_goes_to_the_input_origin_only(tmp_path: Path) -> None:
    """--cookie is a credential: sent to the input URL's origin, never after a redirect
    to another one (as -H Authorization)."""
    there: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        there.append(request.headers.get("Cookie"))
        return web.Response(text="other")

    other = web.Application()
    other.router.add_get("/echo", echo)
    other_base, other_runner = await _start(other, "127.0.0.2")
    here: list[str | None] = []

    async def start(request: web.Request) -> web.Response:
        here.append(request.headers.get("Cookie"))
        raise web.HTTPFound(f"{other_base}/echo")

    app = web.Application()
    app.router.add_get("/start", start)
    base, runner = await _start(app)
    try:
        _, [rec] = await run_engine(tmp_path, [f"{base}/start"], cookie=("a=b",), cookies=True)
    finally:
        await runner.cleanup()
        await other_runner.cleanup()
    assert rec["status"] == 200 and rec["final_url"] == f"{other_base}/echo"
    assert here == ["a=b"]
    assert there == [None]


async def test_cookie_jar_loads_and_saves_netscape_format(
    cookie_site: tuple[str, list[str | None]], tmp_path: Path
) -> None:
    base, seen = cookie_site
    jar = tmp_path / "cookies.txt"
    jar.write_text(
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tpre\t1\n", encoding="ascii"
    )
    _, [rec] = await run_engine(tmp_path, [f"{base}/check"], cookie_jar=str(jar), cookies=True)
    assert rec["status"] == 200 and seen == ["pre=1"]
    saved = http.cookiejar.MozillaCookieJar()
    saved.load(str(jar), ignore_discard=True)
    got = {c.name: (c.value, c.domain, c.expires is not None) for c in saved}
    assert got == {"pre": ("1", "127.0.0.1", False), "new": ("2", "127.0.0.1", True)}


async def test_cookie_jar_refuses_a_file_not_ours(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    code, out, err = await run(
        "fetch", "--cookie-jar", str(mine), "-q", stdin=b"http://127.0.0.1:9/\n"
    )
    assert code == 2 and out == b""
    assert err.count(b"\n") == 1 and b"not a Netscape cookies file" in err
    assert mine.read_text() == "my notes\n"


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def _https(ca: trustme.CA, *, client_certs: bool = False) -> tuple[str, web.AppRunner]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    if client_certs:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return await _start(app, ssl_context=ctx)


async def test_cacert_trusts_a_private_ca(ca: trustme.CA, tmp_path: Path) -> None:
    cacert = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cacert))
    base, runner = await _https(ca)
    try:
        _, [untrusted] = await run_engine(tmp_path, [f"{base}/"])
        assert untrusted["error"]["kind"] == "tls"
        _, [trusted] = await run_engine(tmp_path, [f"{base}/"], cacert=str(cacert))
    finally:
        await runner.cleanup()
    assert trusted["ok"] is True and trusted["bytes"] == 5


async def test_client_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    cacert, both, cert, key = (tmp_path / n for n in ("ca.pem", "both.pem", "c.pem", "k.pem"))
    ca.cert_pem.write_to_path(str(cacert))
    client = ca.issue_cert("client.example")
    client.private_key_and_cert_chain_pem.write_to_path(str(both))
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    base, runner = await _https(ca, client_certs=True)
    try:
        _, [without] = await run_engine(tmp_path, [f"{base}/"], cacert=str(cacert), retries=0)
        _, [one_file] = await run_engine(tmp_path, [f"{base}/"], cacert=str(cacert), cert=str(both))
        _, [two_files] = await run_engine(
            tmp_path, [f"{base}/"], cacert=str(cacert), cert=str(cert), key=str(key)
        )
    finally:
        await runner.cleanup()
    assert without["ok"] is False and without["status"] is None
    assert one_file["ok"] is True and two_files["ok"] is True


def test_unusable_tls_files_are_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(UsageError, match=r"cannot read --cacert '.*missing.pem': No such file"):
        check_session_files(FetchConfig(cacert=missing))
    with pytest.raises(UsageError, match=r"--cacert '.*junk.pem' holds no PEM certificate"):
        check_session_files(FetchConfig(cacert=str(junk)))
    with pytest.raises(UsageError, match=r"cannot use --cert '.*junk.pem' as a client cert"):
        check_session_files(FetchConfig(cert=str(junk)))


# -- revisits ------------------------------------------------------------------------------------


async def test_etags_revisit_gets_not_modified(tmp_path: Path) -> None:
    asked: list[tuple[str | None, str | None]] = []

    async def page(request: web.Request) -> web.Response:
        asked.append(
            (request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since"))
        )
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(
            text="body", headers={"ETag": '"v1"', "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT"}
        )

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="x")

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/plain", plain)
    base, runner = await _start(app)
    etags = tmp_path / "etags.db"
    urls = [f"{base}/page", f"{base}/plain"]
    try:
        _, first = await run_engine(tmp_path, urls, etags=str(etags))
        _, second = await run_engine(tmp_path, urls, etags=str(etags))
        _, off = await run_engine(tmp_path, urls[:1])
    finally:
        await runner.cleanup()
    by_url = {r["url"]: r for r in first}
    assert by_url[urls[0]]["not_modified"] is False and by_url[urls[0]]["status"] == 200
    again = {r["url"]: r for r in second}[urls[0]]
    assert again["status"] == 304 and again["ok"] is True and again["not_modified"] is True
    assert {r["url"]: r for r in second}[urls[1]]["not_modified"] is False
    assert asked[:2] == [(None, None), ('"v1"', "Tue, 01 Dec 2026 10:00:00 GMT")]
    assert off[0]["not_modified"] is None and asked[2] == (None, None)


def test_etags_refuses_a_file_not_ours(tmp_path: Path) -> None:
    mine = tmp_path / "data.db"
    mine.write_bytes(b"SQLite format 3\x00" + bytes(84))  # SQLite, but not our application_id
    with pytest.raises(UsageError, match="not a crawler --etags file"):
        check_session_files(FetchConfig(etags=str(mine)))
    assert mine.read_bytes() == b"SQLite format 3\x00" + bytes(84)
