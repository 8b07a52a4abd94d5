"""Issue 15's record and request options: --include-headers, --include-request,
--include-body, --no-follow, --retry-on, --backoff, -v and --max-time on fetch."""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crawler.config import ConfigError
from crawler.options import run_config
from tests.conftest import run_engine
from tests.test_cli import assert_no_traceback, lines, run

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f"
HTML_META = '<html><head><meta charset="windows-1252"><title>caf\u00e9 \u20ac</title></head></html>'


class Site:
    def __init__(self, base: str, hits: collections.Counter[str], release: asyncio.Event) -> None:
        self.base = base
        self.hits = hits
        self.release = release

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    hits: collections.Counter[str] = collections.Counter()
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        hits[path] += 1
        if path == "/cookies":
            resp = web.Response(text="hi")
            resp.headers.add("Set-Cookie", "a=1")
            resp.headers.add("Set-Cookie", "b=2")
            resp.headers["X-Mixed-Case"] = "v"
            return resp
        if path == "/utf8":
            text = "h\u00e9llo \u2603"
            return web.Response(body=text.encode(), content_type="text/plain", charset="utf-8")
        if path == "/latin1":
            latin1 = {"Content-Type": "text/plain; charset=ISO-8859-1"}
            return web.Response(body="caf\u00e9".encode("latin-1"), headers=latin1)
        if path == "/meta":
            html = {"Content-Type": "text/html"}
            return web.Response(body=HTML_META.encode("windows-1252"), headers=html)
        if path == "/gz":
            gz = gzip.compress(b"x" * 100, mtime=0)
            return web.Response(body=gz, content_type="application/octet-stream")
        if path == "/png":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/big":  # chunked: no Content-Length says it is too large up front
            stream = web.StreamResponse(headers={"Content-Type": "text/plain"})
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            for _ in range(5):
                await stream.write(b"a" * 1000)
            await stream.write_eof()
            return stream
        if path == "/moved":
            return web.Response(status=302, headers={"Location": "/target?x=1"})
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]), text="no")
        if path.startswith("/hang"):
            await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Site(f"http://127.0.0.1:{port}", hits, release)
    finally:
        release.set()
        await runner.cleanup()


def by_url(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in records}


async def test_headers_are_an_object_with_repeated_names_as_lists(
    site: Site, tmp_path: Path
) -> None:
    _, records = await run_engine(tmp_path, [site.url("/cookies")], include_headers=True)
    (r,) = records
    assert r["headers"]["set-cookie"] == ["a=1", "b=2"]
    assert r["headers"]["x-mixed-case"] == "v"
    assert r["headers"]["content-length"] == "2"
    assert r["request_headers"] is None and r["body"] is None


async def test_request_headers_as_sent_with_credentials_redacted(
    site: Site, tmp_path: Path
) -> None:
    _, records = await run_engine(
        tmp_path,
        [site.url("/ok")],
        include_request=True,
        headers=(("Authorization", "Bearer s3cret"), ("X-Token", "t0k"), ("X-Plain", "p")),
        secret_headers=("X-Token",),
    )
    (r,) = records
    sent = r["request_headers"]
    assert sent["authorization"] == "[redacted]"
    assert sent["x-token"] == "[redacted]"
    assert sent["x-plain"] == "p"
    assert sent["host"] == site.url("").removeprefix("http://")
    assert sent["user-agent"].startswith("crawler/")
    assert "gzip" in sent["accept-encoding"]
    assert r["headers"] is None


async def test_body_is_text_when_its_charset_decodes_it_else_base64(
    site: Site, tmp_path: Path
) -> None:
    paths = ["/utf8", "/latin1", "/meta", "/gz", "/png"]
    _, records = await run_engine(tmp_path, [site.url(p) for p in paths], include_body=True)
    got = {r["url"].removeprefix(site.base): (r["body_encoding"], r["body"]) for r in records}
    assert got["/utf8"] == ("text", "h\u00e9llo \u2603")
    assert got["/latin1"] == ("text", "caf\u00e9")
    assert got["/meta"] == ("text", HTML_META)
    assert got["/gz"] == ("base64", base64.b64encode(gzip.compress(b"x" * 100, mtime=0)).decode())
    assert got["/png"] == ("base64", base64.b64encode(PNG).decode())


async def test_body_is_capped_by_max_bytes(site: Site, tmp_path: Path) -> None:
    _, records = await run_engine(
        tmp_path, [site.url("/big"), site.url("/ok")], include_body=True, max_bytes=1000
    )
    big, small = by_url(records)[site.url("/big")], by_url(records)[site.url("/ok")]
    # Past --max-bytes: too_large, with the body read up to the cap.
    assert big["error"]["kind"] == "too_large"
    assert big["body"] == "a" * 1000 and big["body_encoding"] == "text"
    assert small["ok"] and small["body"] == "ok"


async def test_no_follow_records_the_redirect_as_it_came(site: Site, tmp_path: Path) -> None:
    _, records = await run_engine(tmp_path, [site.url("/moved")], no_follow=True)
    (r,) = records
    assert r["status"] == 302 and r["ok"] is True and r["error"] is None
    assert r["location"] == "/target?x=1"
    assert r["final_url"] == site.url("/moved") and r["redirects"] == []
    assert site.hits == {"/moved": 1}


async def test_retry_on_retries_the_statuses_given_and_only_those(
    site: Site, tmp_path: Path
) -> None:
    retry = run_config({"retry_on": "404, 503", "backoff": "0.001,0.002"}, crawl=False).retry
    _, records = await run_engine(
        tmp_path,
        [site.url("/status/404"), site.url("/status/500")],
        retries=2,
        retry_on=retry.retry_on,
        backoff_base=retry.backoff_base,
        backoff_cap=retry.backoff_cap,
    )
    attempts = {r["url"].removeprefix(site.base): r["attempts"] for r in records}
    assert attempts == {"/status/404": 3, "/status/500": 1}
    assert site.hits == {"/status/404": 3, "/status/500": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backoff": "2,1"}, "MAX must be >= BASE"),
        ({"backoff": "0,1"}, "> 0"),
        ({"backoff": "1"}, "expected BASE,MAX"),
        ({"retry_on": "99"}, "100-599"),
        ({"retry_on": "5xx"}, "status codes"),
    ],
)
def test_bad_retry_on_and_backoff_are_config_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config(options, crawl=False)
    assert run_config({"retry_on": ""}, crawl=False).retry.retry_on == frozenset()


async def test_cli_bad_backoff_is_one_line_exit_2(tmp_path: Path) -> None:
    code, out, err = await run("fetch", "http://127.0.0.1:9/", "--backoff", "5,1")
    assert code == 2 and out == b""
    assert_no_traceback(err)
    assert len(err.strip().splitlines()) == 1
    assert b"--backoff" in err and b"MAX must be >= BASE" in err


async def test_verbose_shows_heads_on_stderr_and_only_records_on_stdout(
    site: Site, tmp_path: Path
) -> None:
    code, out, err = await run(
        "fetch", site.url("/moved"), "-v", "--no-progress", "-H", "Authorization: Bearer s3cret"
    )
    assert code == 0
    assert_no_traceback(err)
    (r,) = lines(out)  # stdout: the record only
    assert r["final_url"] == site.url("/target?x=1")
    text = err.decode()
    assert "] > GET /moved HTTP/1.1" in text and "] < HTTP/1.1 302 Found" in text
    assert "] > GET /target?x=1 HTTP/1.1" in text and "] < HTTP/1.1 200 OK" in text
    assert "Authorization: [redacted]" in text and "s3cret" not in text


async def test_max_time_on_fetch_stops_and_unsent_urls_get_no_record(
    site: Site, tmp_path: Path
) -> None:
    urls = [site.url("/ok"), *(site.url(f"/hang/{i}") for i in range(5))]
    result, records = await run_engine(
        tmp_path, urls, concurrency=1, max_time=0.3, grace=0.05, timeout=30.0
    )
    assert result.timed_out and not result.interrupted
    got = {r["url"]: r for r in records}
    assert got[site.url("/ok")]["ok"]
    # The one in flight was cut at the end of the grace period; the rest were never sent.
    assert got[site.url("/hang/0")]["error"]["kind"] == "cancelled"
    assert len(records) == 2
    assert result.snapshot.not_sent == 4
    assert sum(site.hits[f"/hang/{i}"] for i in range(1, 5)) == 0
