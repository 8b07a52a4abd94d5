"""Issue 12, review of the merged fetch and crawl hardening: the cases the first tests
missed (servers are raw asyncio streams on 127.0.0.1, as in test_hardening_fetch)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from crawler.session import MAX_INFORMATIONAL
from tests.test_hardening_fetch import Handler, RawServer, failure, fetch, whole


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


# A raw deflate stream of a bit over 1 MiB: zlib can take in all of its input while it
# fills the fetcher's 1 MiB decode step, and hold the last bytes back until asked again.
@pytest.mark.parametrize("size", [(1 << 20) + 5, (1 << 20) + 100, (2 << 20) + 50])
async def test_decoded_output_held_back_at_a_step_boundary_is_not_a_truncation(
    size: int,
) -> None:
    plain = bytes(size)
    body = _raw_deflate(plain)
    routes: dict[str, bytes | Handler] = {
        "/d": whole("200 OK", body, b"Content-Encoding: deflate"),
    }
    async with RawServer(routes) as srv:
        resp = await fetch(srv.url("/d"))
    assert (resp.status, resp.nbytes, resp.body) == (200, size, plain)


# Two Content-Encoding fields mean one list (RFC 9110, 5.3), codings in the order they
# were applied: "deflate" then "gzip" is a gzip stream around a zlib one. The first field
# alone names the innermost coding, which the outer bytes are not in.
async def test_two_content_encoding_fields_are_one_list_and_kept_as_sent() -> None:
    plain = b"<p>stacked</p>" * 100
    body = gzip.compress(zlib.compress(plain))
    routes: dict[str, bytes | Handler] = {
        "/two": whole("200 OK", body, b"Content-Encoding: deflate", b"Content-Encoding: gzip"),
        "/one": whole("200 OK", body, b"Content-Encoding: deflate, gzip"),
    }
    async with RawServer(routes) as srv:
        for path in ("/two", "/one"):
            resp = await fetch(srv.url(path))
            assert (resp.status, resp.nbytes, resp.body) == (200, len(body), body), path


# README: more than MAX_INFORMATIONAL informational responses are a protocol error. A
# final response that came in the same read as the flood was still handed over (the
# connection already closed under it), so the outcome depended on how reads fell.
async def test_too_many_1xx_is_an_error_even_with_the_answer_in_the_same_read() -> None:
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * (MAX_INFORMATIONAL + 1)
    async with RawServer({"/f": flood + whole("200 OK", b"done")}) as srv:
        err = await failure(srv.url("/f"))
    assert err.kind == "protocol" and "informational" in err.message, err
