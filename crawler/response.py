"""What one attempt at a URL gives back: ``Response`` (and ``Exchange``, the heads a WARC
record needs), and the constants saying which bodies are kept and which are decoded.

Plain data, no aiohttp: the storage writers' child process and the records read it too.
"""

from __future__ import annotations

from typing import Final

from msgspec import Struct, field

# What Fetcher.fetch keeps of a body (it always counts it).
KEEP_NONE: Final = 0
KEEP_HTML: Final = 1  # HTML bodies only (crawl mode: links are parsed from them)
KEEP_ALL: Final = 2  # every body (--save-dir, --warc, robots.txt, sitemaps)

HTML_TYPES: Final = frozenset(("text/html", "application/xhtml+xml"))
# Bodies in these encodings are decoded by the fetcher (crawler.body's _Decoder); aiohttp
# decodes no body. The WARC writer keys on it too.
DECODED: Final = frozenset(("gzip", "deflate"))


class Response(Struct):
    """What one attempt got back (the body itself is counted, not kept)."""

    status: int
    final_url: str
    content_type: str | None
    nbytes: int
    redirects: list[str] = field(default_factory=list)
    retry_after: str | None = None
    # Kept only when asked for (see KEEP_*): the body and what a WARC record needs (inside
    # a Detail when the record carries heads: see crawler/detail.py).
    body: bytes | None = None
    exchange: Exchange | Detail | None = None


class Exchange(Struct):
    """The final request and response heads as they went over the wire (for WARC)."""

    method: str
    request_headers: list[tuple[str, str]]
    version: str
    status: int
    reason: str
    response_headers: list[tuple[str, str]]


class Detail(Struct):
    """What --include-headers, --include-request, --include-body and --no-follow put in
    the record (crawler/detail.py makes it and keeps it in Response.exchange, holding the
    Exchange a WARC record needs, if one was made)."""

    exchange: Exchange | None  # the heads for WARC, when bodies are kept for it
    headers: dict[str, str | list[str]] | None = None  # the response's, names lower-cased
    sent: dict[str, str | list[str]] | None = None  # the request's, credentials redacted
    location: str | None = None  # a 3xx's Location, as sent
    charset: str | None = None  # the Content-Type header's charset parameter
