"""The record's ``redirects`` holds the intermediate URLs (CONTRACT: neither the input URL,
which is ``url``, nor the final one, which is ``final_url``), and a ``too_large`` record's
``bytes`` is never above ``--max-bytes``."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import Server, run_engine, serve_app

LIMIT = 100_000


def via(server: Server, target: str) -> str:
    return str(URL(server.url("/redirect")).with_query(to=target))


async def test_redirects_are_the_intermediate_urls(server: Server, tmp_path: Path) -> None:
    final = server.url("/ok/final")
    middle = via(server, final)
    start = via(server, middle)
    _, records = await run_engine(tmp_path, [start, middle])
    by_url = {r["url"]: r for r in records}
    two_hops, one_hop = by_url[start], by_url[middle]
    assert two_hops["final_url"] == final and two_hops["redirects"] == [middle]
    assert one_hop["final_url"] == final and one_hop["redirects"] == []


async def test_too_many_redirects_lists_the_hops_between(server: Server, tmp_path: Path) -> None:
    final = server.url("/ok/final")
    chain = [final]
    for _ in range(3):
        chain.append(via(server, chain[-1]))
    start = chain[-1]  # start -> chain[2] -> chain[1] -> final
    _, [record] = await run_engine(tmp_path, [start], max_redirects=1)
    assert record["error"]["kind"] == "too_many_redirects"
    # one redirect followed (start -> chain[2]); chain[2]'s own redirect was one too many
    assert record["final_url"] == chain[2] and record["redirects"] == []


@pytest.fixture
async def big() -> AsyncIterator[str]:
    async def stream(request: web.Request) -> web.StreamResponse:
        encoding = request.match_info["encoding"]
        resp = web.StreamResponse()
        if encoding != "identity":
            resp.headers["Content-Encoding"] = encoding
        await resp.prepare(request)  # chunked: no Content-Length to refuse it by
        raw = b"x" * (4 * LIMIT)
        body = {
            "identity": raw,
            "gzip": gzip.compress(raw),
            "deflate": zlib.compress(raw),
        }[encoding]
        for i in range(0, len(body), 7_000):  # many small reads, none ending at the limit
            await resp.write(body[i : i + 7_000])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big/{encoding}", stream)
    async with serve_app(app) as base:
        yield f"{base}/big"


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
async def test_too_large_bytes_is_at_most_max_bytes(
    big: str, tmp_path: Path, encoding: str
) -> None:
    _, [record] = await run_engine(tmp_path, [f"{big}/{encoding}"], max_bytes=LIMIT)
    assert record["error"]["kind"] == "too_large"
    assert record["status"] == 200
    assert record["bytes"] == LIMIT  # what was taken, up to the limit: never past it
