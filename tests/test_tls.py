"""TLS: certificates are verified by default; --insecure skips verification."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tests.conftest import run_engine, serve_app
from tests.test_cli import run


@pytest.fixture
async def https_url() -> AsyncIterator[str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    app = web.Application()
    app.router.add_get("/", hello)
    async with serve_app(app, ssl_context=ctx) as base:
        yield f"{base}/"


async def test_untrusted_certificate_is_a_tls_error(https_url: str, tmp_path: Path) -> None:
    _, records = await run_engine(tmp_path, [https_url], retries=3)
    [rec] = records
    assert rec["error"]["kind"] == "tls"
    assert rec["attempts"] == 1  # tls errors are not retried
    assert rec["status"] is None


async def test_insecure_skips_verification(https_url: str) -> None:
    code, out, _ = await run("fetch", "--insecure", "-q", stdin=https_url.encode())
    assert code == 0
    assert b'"status":200' in out and b'"bytes":6' in out
