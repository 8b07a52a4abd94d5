"""Issue 15, "Requests": JSON request lines (method, headers, body, json, meta), --method
with any token, --data/--json, and requests that are not idempotent not sent twice."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiohttp import web

import crawler
from crawler.cli.app import _main
from crawler.cli.options import RunOptions
from tests.conftest import Server, run_engine
from tests.faultserver import closed_port


@dataclass
class Echo:
    """What the echo server saw, per request: method, path, headers, body."""

    port: int = 0
    seen: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    hits: collections.Counter[str] = field(default_factory=collections.Counter)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    state = Echo()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        state.seen.append((request.method, request.path, dict(request.headers), body))
        state.hits[request.path] += 1
        if request.path.startswith("/busy"):
            return web.Response(status=503, text="busy")
        if request.path == "/see-other":
            raise web.HTTPSeeOther("/after")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state
    finally:
        await runner.cleanup()


def line(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


async def test_request_lines_reach_the_server_as_written_and_meta_comes_back(
    tmp_path: Path, echo: Echo
) -> None:
    lines = [
        echo.url("/plain"),
        line(
            url=echo.url("/put"),
            method="put",
            headers={"X-Row": "7", "User-Agent": "mine"},
            json={"k": [1, "é"]},
            meta={"row": 7, "tags": ["a"]},
        ),
        line(url=echo.url("/post"), body="a=1&b=2", meta="r2"),
        line(url=echo.url("/custom"), method="PROPFIND", headers={"Depth": "1"}),
        line(url=echo.url("/see-other"), body="x", headers={"Content-Type": "text/plain"}),
    ]
    _, records = await run_engine(tmp_path, lines, retries=0)
    by_url = {r["url"]: r for r in records}
    assert len(records) == 5 and all(r["ok"] for r in records), records
    seen = {path: (method, headers, body) for method, path, headers, body in echo.seen}

    method, headers, body = seen["/plain"]
    assert (method, body, by_url[echo.url("/plain")]["meta"]) == ("GET", b"", None)
    method, headers, body = seen["/put"]
    assert (method, orjson.loads(body)) == ("PUT", {"k": [1, "é"]})
    assert headers["Content-Type"] == "application/json"
    assert (headers["X-Row"], headers["User-Agent"]) == ("7", "mine")
    assert by_url[echo.url("/put")]["meta"] == {"row": 7, "tags": ["a"]}
    assert by_url[echo.url("/put")]["method"] == "PUT"
    method, headers, body = seen["/post"]
    assert (method, body) == ("POST", b"a=1&b=2")  # a body without a method: POST
    assert by_url[echo.url("/post")]["meta"] == "r2"
    method, headers, body = seen["/custom"]
    assert (method, headers["Depth"], body) == ("PROPFIND", "1", b"")
    assert by_url[echo.url("/custom")]["method"] == "PROPFIND"
    # 303: the POST becomes a GET, without its body or its Content-Type.
    method, headers, body = seen["/after"]
    assert (method, body, "Content-Type" in headers) == ("GET", b"", False)


async def test_dedup_keys_on_method_url_and_body(tmp_path: Path, echo: Echo) -> None:
    url = echo.url("/d")
    lines = [
        url,
        line(url=url),  # a GET without a body: the plain line's key
        line(url=url, body="one"),
        line(url=url, body="two"),
        line(url=url, body="one", meta="again"),  # the same request: fetched once
        line(url=url, method="HEAD"),
        line(url=url, method="POST", body="one"),  # POST is the default with a body
    ]
    _, records = await run_engine(tmp_path, lines, retries=0)
    assert sorted((m, b) for m, _, _, b in echo.seen) == [
        ("GET", b""),
        ("HEAD", b""),
        ("POST", b"one"),
        ("POST", b"two"),
    ]
    assert len(records) == 4


class Dropper:
    """A server that reads a whole request and closes the connection unanswered."""

    def __init__(self) -> None:
        self.count = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        size = 0
        for text in head.decode().split("\r\n"):
            name, _, value = text.partition(":")
            if name.lower() == "content-length":
                size = int(value)
        await reader.readexactly(size)
        self.count += 1
        writer.close()


@pytest.mark.parametrize("fault", ["503", "drop"])
@pytest.mark.parametrize("retry_unsafe", [False, True])
async def test_a_post_that_failed_after_it_was_sent_is_not_retried(
    tmp_path: Path, echo: Echo, fault: str, retry_unsafe: bool
) -> None:
    dropper = Dropper()
    server = await asyncio.start_server(dropper.handle, "127.0.0.1", 0)
    dropper.port = server.sockets[0].getsockname()[1]
    url = echo.url("/busy") if fault == "503" else f"http://127.0.0.1:{dropper.port}/drop"
    try:
        _, records = await run_engine(
            tmp_path,
            [line(url=url, body="pay once")],
            retries=2,
            backoff_cap=0.01,
            retry_unsafe=retry_unsafe,
        )
    finally:
        server.close()
        await server.wait_closed()
    sent = echo.hits["/busy"] if fault == "503" else dropper.count
    (record,) = records
    message = record["error"]["message"]
    if retry_unsafe:
        assert sent >= 3 and record["attempts"] == 3
        assert "not retried" not in message
    else:
        assert sent == 1 and record["attempts"] == 1
        assert message.endswith("(not retried: POST is not idempotent; --retry-unsafe to retry)"), (
            message
        )
    assert record["error"]["kind"] == ("http" if fault == "503" else "connect")


async def test_a_post_refused_before_it_was_sent_is_retried(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    _, records = await run_engine(
        tmp_path, [line(url=url, method="PATCH", json=[1])], retries=2, backoff_cap=0.01
    )
    (record,) = records
    assert record["error"]["kind"] == "connect"
    assert record["attempts"] == 3 and "not retried" not in record["error"]["message"]


async def test_malformed_request_lines_are_invalid_url_records_saying_why(
    tmp_path: Path,
) -> None:
    cases = {
        '{"url": "http://a.test/",': "not valid JSON",
        '{"u": 1}': "unknown key 'u'",
        '{"method": "GET"}': 'no "url"',
        '{"url": 5}': '"url" must be a non-empty string',
        '{"url": "ftp://a.test/"}': "url: unsupported scheme 'ftp'",
        '{"url": "http://a.test/", "body": "x", "json": 1}': '"body" and "json" cannot both',
        '{"url": "http://a.test/", "body": 1}': '"body" must be a string, not a number',
        '{"url": "http://a.test/", "method": "BAD METHOD"}': "invalid method 'BAD METHOD'",
        '{"url": "http://a.test/", "headers": []}': '"headers" must be an object',
        '{"url": "http://a.test/", "headers": {"X": 1}}': "header 'X' must be a string",
        '{"url": "http://a.test/", "headers": {"X": "a\\r\\nY: b"}}': "control characters",
    }
    _, records = await run_engine(tmp_path, list(cases))
    assert len(records) == len(cases)
    for record in records:
        assert record["error"]["kind"] == "invalid_url" and record["attempts"] == 0
        assert cases[record["url"]] in record["error"]["message"], record


async def test_a_request_header_credential_stays_on_its_origin(
    tmp_path: Path, server: Server
) -> None:
    back = server.url("/ok/back")  # back on its origin: still not sent (the -H rule)
    away = server.url(f"/redirect?to={quote(back)}", host="127.0.0.2")
    first = server.url(f"/redirect?to={quote(away)}")
    request = line(url=first, headers={"Authorization": "Bearer row-1", "X-Row": "1"})
    _, records = await run_engine(tmp_path, [request])
    assert records[0]["ok"] and records[0]["final_url"] == back
    here, there, again = server.rec.headers
    assert (here["Authorization"], here["X-Row"]) == ("Bearer row-1", "1")
    assert "Authorization" not in there and there["X-Row"] == "1"
    assert "Authorization" not in again and again["X-Row"] == "1"


async def test_a_resumed_run_skips_the_requests_it_did(tmp_path: Path, echo: Echo) -> None:
    urls = [line(url=echo.url("/s"), body="1"), line(url=echo.url("/s"), body="2")]
    state = tmp_path / "run.state"
    for _ in range(2):
        async with crawler.fetch(urls, state=state, retries=0) as records:
            got = [record async for record in records]
    assert got == [] and echo.hits["/s"] == 2


async def test_the_api_takes_data_json_and_method(echo: Echo) -> None:
    async with crawler.fetch([echo.url("/a")], data="x=1") as records:
        (first,) = [r async for r in records]
    async with crawler.fetch([echo.url("/b")], json='{"a": 1}', method="put") as records:
        (second,) = [r async for r in records]
    (m1, _, h1, b1), (m2, _, h2, b2) = echo.seen
    assert (m1, b1, first.method) == ("POST", b"x=1", "POST")
    assert (m2, b2, h2["Content-Type"], second.method) == (
        "PUT",
        b'{"a": 1}',
        "application/json",
        "PUT",
    )
    assert "application/json" not in h1.get("Content-Type", "")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--json", "@/nonexistent/body.json"], "cannot read --json file '/nonexistent/body.json'"),
        (["--json", "{bad"], "--json is not valid JSON"),
        (["--method", "BAD METHOD"], "invalid method 'BAD METHOD'"),
    ],
)
def test_bad_request_options_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _main(["fetch", *args, "-q", "-"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert says in err, err


def test_data_and_json_files_become_the_run_request(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"k": "\xc3\xa9"}')
    config = RunOptions(json=f"@{body}").config().fetch
    assert (config.method, config.body, config.body_type) == (
        "POST",
        body.read_bytes(),
        "application/json",
    )
    config = RunOptions(data="a=1", method="PUT", header=["content-type: text/x"]).config().fetch
    assert (config.method, config.body, config.body_type) == ("PUT", b"a=1", None)
    config = RunOptions(json="[1]", header=["Content-Type: application/x+json"]).config().fetch
    assert config.body_type is None  # -H gives one
