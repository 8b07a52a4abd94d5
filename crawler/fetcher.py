"""One pooled aiohttp session and one attempt at a URL (redirects included).

This is the only module that names aiohttp's exceptions: ``map_exception`` turns each of
them, and the OS and TLS errors under them, into the contract's error kinds.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
from aiohttp import ClientTimeout, client_exceptions, http_exceptions
from multidict import CIMultiDict
from yarl import URL

from crawler import errors
from crawler.config import FetchConfig
from crawler.netpolicy import AddressPolicy, PolicyResolver

_REDIRECTS: Final = frozenset((301, 302, 303, 307, 308))
_SENSITIVE: Final = ("Authorization", "Cookie", "Proxy-Authorization")
_NO_CEIL: Final = 1e9  # never let aiohttp round a timeout up to a whole second
HTML_TYPES: Final = frozenset(("text/html", "application/xhtml+xml"))

# What Fetcher.fetch keeps of a body (it always counts it).
KEEP_NONE: Final = 0
KEEP_HTML: Final = 1  # HTML bodies only (crawl mode: links are parsed from them)
KEEP_ALL: Final = 2  # every body (--save-dir, --warc, robots.txt, sitemaps)


@dataclass(slots=True)
class Response:
    """What one attempt got back (the body itself is counted, not kept)."""

    status: int
    final_url: str
    content_type: str | None
    nbytes: int
    redirects: list[str] = field(default_factory=list)
    retry_after: str | None = None
    # Kept only when asked for (see KEEP_*): the body and what a WARC record needs.
    body: bytes | None = None
    exchange: Exchange | None = None


@dataclass(slots=True)
class Exchange:
    """The final request and response heads as they went over the wire (for WARC)."""

    method: str
    request_headers: list[tuple[str, str]]
    version: str
    status: int
    reason: str
    response_headers: list[tuple[str, str]]


def map_exception(exc: BaseException, *, deadline_left: float) -> errors.FetchError:
    """Translate a foreign exception into a FetchError. Most specific cases first."""
    if isinstance(exc, errors.FetchError):
        return exc
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp's timeouts
        if deadline_left <= 0.001:
            return errors.Timeout("deadline exceeded")
        kind = "connect" if isinstance(exc, client_exceptions.ConnectionTimeoutError) else "read"
        return errors.AttemptTimeout(f"{kind} timeout")
    if isinstance(exc, client_exceptions.ClientConnectorDNSError):
        return errors.DNSError(_describe(exc.os_error))
    if isinstance(exc, client_exceptions.ClientConnectorCertificateError):
        return errors.TLSError(f"certificate error: {exc.certificate_error}")
    if isinstance(exc, client_exceptions.ClientConnectorSSLError | ssl.SSLError):
        return errors.TLSError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientConnectorError):
        return errors.ConnectError(_describe(exc.os_error))
    if isinstance(exc, client_exceptions.ClientPayloadError):
        # Body shorter than Content-Length, broken chunked encoding, bad compression.
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientResponseError):
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, http_exceptions.HttpProcessingError) or exc.status in (0, 400):
            return errors.ProtocolError(f"malformed response: {_describe(cause or exc)}")
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, http_exceptions.HttpProcessingError):
        return errors.ProtocolError(f"malformed response: {_describe(exc)}")
    if isinstance(exc, client_exceptions.ServerDisconnectedError):
        return errors.ConnectError("server disconnected")
    if isinstance(exc, client_exceptions.InvalidURL):
        return errors.InvalidURL(_describe(exc))
    if isinstance(exc, client_exceptions.ClientOSError | OSError):
        return errors.ConnectError(_describe(exc))
    if isinstance(exc, client_exceptions.ClientError):
        return errors.ProtocolError(_describe(exc))
    if isinstance(exc, UnicodeError | ValueError):
        return errors.ProtocolError(_describe(exc))
    # Anything else is a surprise from the HTTP stack on a response we could not
    # handle. It ends this URL, never the run.
    return errors.ProtocolError(f"unexpected {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _exchange(method: str, resp: aiohttp.ClientResponse) -> Exchange:
    version = resp.version
    return Exchange(
        method=method,
        request_headers=list(resp.request_info.headers.items()),
        version=f"HTTP/{version.major}.{version.minor}" if version else "HTTP/1.1",
        status=resp.status,
        reason=resp.reason or "",
        response_headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers],
    )


def make_session(config: FetchConfig) -> aiohttp.ClientSession:
    """The one pooled session of a run: keep-alive, DNS cache, no cookie jar."""
    policy = address_policy(config)
    connector = aiohttp.TCPConnector(
        limit=config.pool_size,
        limit_per_host=0,  # per-host limits are enforced by the frontier, not here
        ttl_dns_cache=config.dns_cache_ttl,
        ssl=config.verify_tls,
        resolver=PolicyResolver(policy) if policy.active else None,
    )
    headers = CIMultiDict({"User-Agent": config.user_agent})
    for name, value in config.headers:
        if name.lower() == "user-agent":
            headers["User-Agent"] = value
        elif name.title() not in _SENSITIVE:  # credentials go per request: see Fetcher
            headers.add(name, value)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_line_size=config.max_header_bytes,
        max_field_size=config.max_header_bytes,
        auto_decompress=True,
        trust_env=False,
    )


def address_policy(config: FetchConfig) -> AddressPolicy:
    return AddressPolicy(
        block_private=config.block_private, allow_only=config.allow_only, resolve=config.resolve
    )


class Fetcher:
    """Makes one attempt at a URL, following redirects, counting the body."""

    def __init__(self, session: aiohttp.ClientSession, config: FetchConfig) -> None:
        self._session = session
        self._config = config
        self._policy = address_policy(config)
        self._check = self._policy.check_url if self._policy.active else None
        # Credentials are sent only to the origin of the input URL, never after a
        # redirect to another origin (curl and aiohttp behave the same way).
        self._credentials: CIMultiDict[str] | None = (
            CIMultiDict((n, v) for n, v in config.headers if n.title() in _SENSITIVE) or None
        )

    async def fetch(
        self,
        url: URL,
        budget: float,
        keep: int = KEEP_NONE,
        follow: Callable[[URL], bool] | None = None,
    ) -> Response:
        """One attempt within ``budget`` seconds, redirects included. Raises FetchError.

        ``keep`` says which bodies to keep (KEEP_*). ``follow``, if given, vets every
        redirect target: a refused one ends the attempt with the redirect response itself
        (crawl mode never follows a redirect out of its scope).

        One coroutine frame on purpose: every resumption of a request passes through each
        frame of the await chain, so the hot path stays flat.
        """
        config = self._config
        session = self._session
        method = config.method
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        redirects: list[str] = []
        headers = self._credentials
        origin = url.origin() if headers else None
        check = self._check
        try:
            while True:
                if check is not None:
                    check(url)
                # aiohttp's own total timeout bounds the whole exchange, body included;
                # ceil_threshold keeps it from rounding the deadline up to whole seconds.
                left = deadline - loop.time()
                if left <= 0:
                    # aiohttp reads total=0 as "no timeout": never send without time left.
                    raise errors.Timeout("deadline exceeded")
                timeout = ClientTimeout(
                    total=left,
                    sock_connect=config.connect_timeout,
                    ceil_threshold=_NO_CEIL,
                )
                async with session.request(
                    method, url, allow_redirects=False, headers=headers, timeout=timeout
                ) as resp:
                    status = resp.status
                    rh = resp.headers
                    location = rh.get("Location") if status in _REDIRECTS else None
                    nxt = None
                    if location is not None and follow is not None:
                        nxt = self._redirect_target(url, location)
                        if not follow(nxt):
                            location = None
                    if location is None:
                        ctype = rh.get("Content-Type")
                        result = Response(
                            status=status,
                            final_url=str(url),
                            content_type=ctype.partition(";")[0].strip().lower() if ctype else None,
                            nbytes=0,
                            redirects=redirects,
                            retry_after=rh.get("Retry-After"),
                        )
                        if keep and (keep == KEEP_ALL or result.content_type in HTML_TYPES):
                            result.exchange = _exchange(method, resp)
                            result.body = b""
                        if method != "HEAD":
                            try:
                                await self._count_body(resp, result)
                            except errors.TooLarge as exc:
                                exc.response = result
                                result.body = None
                                raise
                        return result
                if len(redirects) >= config.max_redirects:
                    # The record shows how far it got: the chain followed, and the URL
                    # whose redirect was one too many (with its status).
                    raise errors.TooManyRedirects(
                        f"more than {config.max_redirects} redirects",
                        response=Response(status, str(url), None, 0, redirects),
                    )
                redirects.append(str(url))
                url = nxt if nxt is not None else self._redirect_target(url, location)
                if headers is not None and url.origin() != origin:
                    headers = None
        except errors.FetchError:
            raise
        except Exception as exc:  # every failure of one URL becomes its record, not a crash
            raise map_exception(exc, deadline_left=deadline - loop.time()) from exc

    @staticmethod
    def _redirect_target(url: URL, location: str) -> URL:
        try:
            nxt = url.join(URL(location))
        except ValueError as exc:
            raise errors.ProtocolError(f"invalid redirect Location {location!r}") from exc
        if nxt.scheme not in ("http", "https") or not nxt.raw_host:
            raise errors.ProtocolError(f"redirect to unsupported URL {location!r}")
        return nxt.with_fragment(None) if nxt.raw_fragment else nxt

    async def _count_body(self, resp: aiohttp.ClientResponse, result: Response) -> None:
        """Read the body to the end into ``result.nbytes``, stopping once it passes
        max_bytes (decompressed bytes count; a too_large record says how far it got).
        The body is kept in ``result.body`` if that starts as b"" (see KEEP_*)."""
        limit = self._config.max_bytes
        declared = resp.content_length
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if declared is not None and declared > limit and encoding in ("", "identity"):
            # Only an unencoded length is the body's size; a compressed one says nothing.
            raise errors.TooLarge(f"Content-Length {declared} exceeds --max-bytes {limit}")
        total = 0
        content = resp.content
        chunks: list[bytes] | None = [] if result.body is not None else None
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    if chunks is not None:
                        result.body = b"".join(chunks)
                    return
                total += len(chunk)
                if total > limit:
                    raise errors.TooLarge(f"body exceeds --max-bytes {limit}")
                if chunks is not None:
                    chunks.append(chunk)
        finally:
            result.nbytes = total
