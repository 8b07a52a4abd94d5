"""Proxies together with cookies and revisits: every proxy's fetcher shares the run's
jar and validators, and a record names its proxy and says whether it was modified."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tests.conftest import run_engine
from tests.test_proxies import pproxy  # noqa: F401 - the module-scoped pproxy fixture


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_cookies_and_etags_through_a_proxy(
    pproxy: dict[str, int],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def start(request: web.Request) -> web.Response:
        response = web.HTTPFound("/page")
        response.set_cookie("session", "s1")
        raise response

    async def page(request: web.Request) -> web.Response:
        seen.append((request.cookies.get("session"), request.headers.get("If-None-Match")))
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(text="page", headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_get("/start", start)
    app.router.add_get("/page", page)
    runner, port = await _serve(app)
    proxy = f"http://127.0.0.1:{pproxy['plain']}"
    options = {"proxies": (proxy,), "cookies": True, "etags": str(tmp_path / "etags.db")}
    try:
        _, [first] = await run_engine(tmp_path, [f"http://127.0.0.1:{port}/start"], **options)
        _, [again] = await run_engine(tmp_path, [f"http://127.0.0.1:{port}/page"], **options)
    finally:
        await runner.cleanup()
    # The cookie set on the redirect reached its target through the proxy.
    assert first["status"] == 200 and first["proxy"] == proxy
    assert first["not_modified"] is False
    # The validator stored through the proxy was sent the next time: a 304.
    assert again["status"] == 304 and again["not_modified"] is True
    assert again["proxy"] == proxy
    assert seen == [("s1", None), (None, '"v1"')]


async def test_headers_and_a_json_request_through_a_proxy(
    pproxy: dict[str, int],  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    got: list[tuple[str, bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        got.append((request.method, await request.read()))
        return web.Response(text="ok", headers={"X-One": "1"})

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    runner, port = await _serve(app)
    proxy = f"http://127.0.0.1:{pproxy['plain']}"
    line = f'{{"url": "http://127.0.0.1:{port}/echo", "method": "PUT", "body": "b", "meta": 7}}'
    try:
        _, [rec] = await run_engine(
            tmp_path, [line], proxies=(proxy,), include_headers=True, etags=str(tmp_path / "e")
        )
    finally:
        await runner.cleanup()
    # One record carries what each option adds: the proxy, the headers, the revisit flag
    # and the request's own method and meta.
    assert got == [("PUT", b"b")]
    assert rec["proxy"] == proxy and rec["headers"]["x-one"] == "1"
    assert rec["not_modified"] is False and rec["method"] == "PUT" and rec["meta"] == 7
