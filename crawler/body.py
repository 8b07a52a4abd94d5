"""Reading one response: its head fields, and its body counted up to --max-bytes (decoded
bytes count), decoded from gzip/deflate here rather than by aiohttp, kept when asked.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Final

from aiohttp import hdrs
from aiohttp.client_reqrep import ClientResponse
from yarl import URL

from crawler import errors
from crawler.records import safe_text
from crawler.response import DECODED, HTML_TYPES, KEEP_ALL, Exchange, Response

_DECODE_STEP: Final = 1 << 20  # decoded bytes per zlib call: a bomb inflates piece by piece
# Response headers read once per URL, as istr: a plain str key is case-folded on every
# lookup (~35 ns each).
_CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
_RETRY_AFTER: Final = hdrs.RETRY_AFTER
_CONTENT_ENCODING: Final = hdrs.CONTENT_ENCODING


def _exchange(method: str, resp: ClientResponse, redact: frozenset[str]) -> Exchange:
    version = resp.version
    sent = list(resp.request_info.headers.items())
    # A WARC file is shared and replayed: the user's secrets stay out of it.
    sent = [(k, "[redacted]" if k.lower() in redact else v) for k, v in sent]
    return Exchange(
        method=method,
        request_headers=sent,
        version=f"HTTP/{version.major}.{version.minor}" if version else "HTTP/1.1",
        status=resp.status,
        # A WARC status line is ASCII: other bytes of the reason are written as \\xNN.
        reason=_ascii(resp.reason or ""),
        # warcio writes ASCII header blocks only (its fallback percent-encodes some
        # values, and fails on others): bytes outside ASCII are written as \\xNN.
        response_headers=[(_ascii_bytes(k), _ascii_bytes(v)) for k, v in resp.raw_headers],
    )


def _over_limit(
    result: Response,
    chunks: list[bytes] | None,
    data: bytes,
    over: int,
    limit: int,
    cap: int | None,
) -> None:
    """The body passed its limit by ``over`` bytes with ``data``: too large (raises), or,
    with a ``cap``, kept up to the cap (the caller stops reading)."""
    if cap is None:
        # What was kept up to the limit stays with the error (--include-body shows it).
        result.body = None if chunks is None else b"".join(chunks) + data[: len(data) - over]
        raise errors.TooLarge(f"body exceeds --max-bytes {limit}", response=result)
    if chunks is not None:
        chunks.append(data[: len(data) - over])


def _ascii_bytes(raw: bytes) -> str:
    return raw.decode("ascii") if raw.isascii() else raw.decode("ascii", "backslashreplace")


def _ascii(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")


class BodyReader:
    """Turns a final response into the attempt's Response (one per Fetcher)."""

    __slots__ = ("_max_bytes", "_redact")

    def __init__(self, max_bytes: int, redact: frozenset[str]) -> None:
        self._max_bytes = max_bytes
        # Header names whose values WARC request records show as "[redacted]".
        self._redact = redact

    async def read(
        self,
        resp: ClientResponse,
        url: URL,
        method: str,
        redirects: list[str],
        keep: int,
        cap: int | None = None,
    ) -> Response:
        """The attempt's Response: the head, and the body read to the end and counted
        (kept too if asked), stopping once it passes max_bytes (decompressed bytes count;
        a too_large record says how far it got)."""
        if resp.status < 100:  # the parser takes any three digits: 000 or 099 is no status
            raise errors.ProtocolError(f"invalid status code {resp.status:03d}")
        rh = resp.headers
        ctype = rh.get(_CONTENT_TYPE)
        if ctype is not None:
            ctype = ctype.partition(";")[0]
            if not ctype.isascii():
                # Header bytes that are not UTF-8 arrive as lone surrogates: make them text.
                ctype = safe_text(ctype)
            ctype = ctype.strip().lower()
        retry_after = rh.get(_RETRY_AFTER)
        if retry_after is not None and not retry_after.isascii():
            # "²".isdigit() holds, float("²") fails: only ASCII can be a delay or a date.
            retry_after = None
        result = Response(  # positional: this runs once per URL
            resp.status,
            str(url),  # final_url
            ctype or None,  # content_type
            0,  # nbytes
            redirects,
            retry_after,
        )
        chunks: list[bytes] | None = None
        if keep and (keep == KEEP_ALL or result.content_type in HTML_TYPES):
            result.exchange = _exchange(method, resp, self._redact)
            result.body = b""
            chunks = []
        if method == "HEAD":
            return result
        limit = self._max_bytes if cap is None else cap
        declared = resp.content_length
        encoding = rh.get(_CONTENT_ENCODING)
        decoder = None
        if encoding is not None:
            encoding = encoding.strip().lower()
            # One known coding is decoded, anything else is kept as sent. Two fields are
            # one list whose first names the innermost coding: kept as sent too.
            if encoding in DECODED and len(rh.getall("Content-Encoding")) == 1:
                decoder = _Decoder(encoding)
        if (
            declared is not None
            and declared > limit
            and cap is None
            and encoding in (None, "", "identity")
        ):
            # Only an unencoded length is the body's size; a compressed one says nothing.
            result.body = None
            raise errors.TooLarge(
                f"Content-Length {declared} exceeds --max-bytes {limit}", response=result
            )
        total = 0
        content = resp.content
        try:
            # A small body has usually arrived whole with the head: take what is buffered
            # without a coroutine, and stop at at_eof() without a last empty read.
            while not content.at_eof():
                chunk = content.read_nowait() or await content.readany()
                if not chunk:
                    break
                if decoder is None:
                    total += len(chunk)
                    if total > limit:
                        # The record counts what was taken: at most the limit.
                        over, total = total - limit, limit
                        _over_limit(result, chunks, chunk, over, limit, cap)
                        break
                    if chunks is not None:
                        chunks.append(chunk)
                    continue
                for piece in decoder.feed(chunk, result):
                    total += len(piece)
                    if total > limit:
                        over, total = total - limit, limit
                        _over_limit(result, chunks, piece, over, limit, cap)
                        decoder = None  # cut here on purpose: the stream's end is not read
                        break
                    if chunks is not None:
                        chunks.append(piece)
                else:
                    continue
                break
            if decoder is not None:
                decoder.finish(result)
            if chunks is not None:
                result.body = b"".join(chunks)
        finally:
            result.nbytes = total
        return result


class _Decoder:
    """Decodes a gzip or deflate body. Done here, not by aiohttp, because aiohttp takes a
    gzip stream cut short (with a Content-Length that matches what was sent) for a
    whole one: here an unfinished stream is a protocol error. Concatenated members are
    decoded one after another, as aiohttp and gzip do; NUL padding after the last one is
    ignored, other trailing bytes are an error."""

    __slots__ = ("_encoding", "_members", "_zlib")

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._zlib: Any = None  # the member being decoded
        self._members = 0  # members decoded to their end

    def feed(self, data: bytes, response: Response) -> Iterator[bytes]:
        """The decoded bytes of ``data``, at most _DECODE_STEP at a time."""
        try:
            while True:
                d = self._zlib
                if d is None:
                    if not data or (self._members and not data.strip(b"\0")):
                        return
                    # deflate: zlib-wrapped, as RFC 9110 says, or raw (common too).
                    raw = data[0] & 0x0F != 8
                    wbits = 31 if self._encoding == "gzip" else -15 if raw else 15
                    d = self._zlib = zlib.decompressobj(wbits)
                piece = d.decompress(data, _DECODE_STEP)
                if d.eof:
                    data = d.unused_data
                    self._zlib = None
                    self._members += 1
                else:
                    data = d.unconsumed_tail
                    if not data and len(piece) < _DECODE_STEP:
                        # All input taken and room left: nothing is held back. (A full
                        # step may leave output in zlib with no input left: ask again,
                        # or the end of a raw deflate stream looks truncated.)
                        if piece:
                            yield piece
                        return
                if piece:
                    yield piece
        except zlib.error as exc:
            raise errors.ProtocolError(
                f"cannot decode the {self._encoding} body: {exc}", response=response
            ) from None

    def finish(self, response: Response) -> None:
        if self._zlib is not None:
            response.body = None
            raise errors.ProtocolError(
                f"truncated {self._encoding} body: the compressed stream ends early",
                response=response,
            )
