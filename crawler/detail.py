"""What ``--include-headers``, ``--include-request``, ``--include-body`` and ``--no-follow``
add to a record: the final response's heads kept by ``DetailReader`` (in the fetcher),
put in the record by ``DetailRecords`` (in the worker), the body decoded by ``body_field``.

A run without these options never builds either (see Fetcher.__init__ and
``crawler.assembly``): the plain path stays what it was.
"""

from __future__ import annotations

import base64
import codecs
import re
from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs
from aiohttp.client_reqrep import ClientResponse
from yarl import URL

from crawler import errors
from crawler.body import BodyReader
from crawler.config import FetchConfig
from crawler.records import Answer, Failure, Record, Records, Task, safe_text
from crawler.response import HTML_TYPES, KEEP_ALL, Detail, Response

# An HTML <meta charset="x"> or <meta http-equiv="Content-Type" content="...; charset=x">
# in the first 1024 bytes (as the HTML standard's prescan looks).
_META_CHARSET: Final = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([-\w.:]+)", re.IGNORECASE)
_PRESCAN: Final = 1024


def header_object(
    items: Iterable[tuple[str, str]], redact: frozenset[str] = frozenset()
) -> dict[str, str | list[str]]:
    """Headers as a JSON object: names lower-cased, a repeated name's values as a list in
    order, values as valid UTF-8 (bytes that are not as ``\\xNN``, see safe_text)."""
    out: dict[str, str | list[str]] = {}
    for name, value in items:
        key = safe_text(name.lower())
        text = "[redacted]" if key in redact else safe_text(value)
        old = out.get(key)
        if old is None:
            out[key] = text
        elif isinstance(old, list):
            old.append(text)
        else:
            out[key] = [old, text]
    return out


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except (LookupError, ValueError):
        return None


def body_field(body: bytes, charset: str | None, content_type: str | None) -> tuple[str, str]:
    """The record's ``body`` and ``body_encoding``: text when the charset (the header's,
    else an HTML meta's, else UTF-8 if the bytes are valid UTF-8) decodes it strictly,
    else base64."""
    codec = _codec(charset)
    if codec is None and (content_type is None or content_type in HTML_TYPES):
        match = _META_CHARSET.search(body, 0, _PRESCAN)
        if match is not None:
            codec = _codec(match.group(1).decode("ascii", "replace"))
    try:
        return body.decode(codec or "utf-8"), "text"
    except (UnicodeDecodeError, LookupError):
        return base64.b64encode(body).decode("ascii"), "base64"


class DetailReader:
    """Reads the final response as BodyReader does, and keeps what the record shows of its
    heads (a Detail in ``exchange``, around the WARC's Exchange if any) and, for
    --include-body, its body (what was read up to --max-bytes stays with too_large)."""

    __slots__ = ("_body", "_headers", "_no_follow", "_read", "_redact", "_sent")

    def __init__(self, reader: BodyReader, config: FetchConfig, redact: frozenset[str]) -> None:
        self._read = reader.read
        self._redact = redact
        self._headers = config.include_headers
        self._sent = config.include_request
        self._body = config.include_body
        self._no_follow = config.no_follow

    async def read(
        self,
        resp: ClientResponse,
        url: URL,
        method: str,
        redirects: list[str],
        keep: int,
        cap: int | None = None,
    ) -> Response:
        if cap is not None:  # robots.txt, sitemaps: no record of their own
            return await self._read(resp, url, method, redirects, keep, cap)
        if self._body:
            keep = KEEP_ALL
        try:
            result = await self._read(resp, url, method, redirects, keep, cap)
        except errors.FetchError as exc:
            if isinstance(exc.response, Response):
                self._keep_heads(exc.response, resp)
            raise
        self._keep_heads(result, resp)
        return result

    def _keep_heads(self, result: Response, resp: ClientResponse) -> None:
        location = None
        if self._no_follow and 300 <= resp.status < 400:
            raw = resp.headers.get(hdrs.LOCATION)
            location = safe_text(raw) if raw is not None else None
        kept = result.exchange
        result.exchange = Detail(
            kept if not isinstance(kept, Detail) else kept.exchange,
            headers=header_object(resp.headers.items()) if self._headers else None,
            sent=(
                header_object(resp.request_info.headers.items(), self._redact)
                if self._sent
                else None
            ),
            location=location,
            charset=resp.charset if self._body else None,
        )


class DetailRecords(Records):
    """Records that carry what DetailReader kept."""

    __slots__ = ("_body",)

    def __init__(self, method: str, body: bool = False) -> None:
        super().__init__(method)
        self._body = body

    def answered(self, task: Task, resp: Answer, error: Failure | None) -> Record:
        r = super().answered(task, resp, error)
        if not isinstance(resp, Response):
            return r
        ex = resp.exchange
        if isinstance(ex, Detail):
            r.headers = ex.headers
            r.request_headers = ex.sent
            r.location = ex.location
            if self._body and resp.body is not None:
                r.body, r.body_encoding = body_field(resp.body, ex.charset, resp.content_type)
        return r
