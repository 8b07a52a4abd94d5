"""One pooled aiohttp session and one attempt at a URL (redirects included).

This is the only module that names aiohttp's exceptions: ``map_exception`` turns each of
them, and the OS and TLS errors under them, into the contract's error kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import ssl
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import ClientTimeout, client_exceptions, hdrs, http_exceptions
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest, ClientResponse
from aiohttp.helpers import BaseTimerContext, TimerContext, TimerNoop
from multidict import CIMultiDict
from yarl import URL

from crawler import errors
from crawler.config import FetchConfig
from crawler.netpolicy import AddressPolicy, PolicyResolver
from crawler.records import safe_text
from crawler.urls import check_port

_REDIRECTS: Final = frozenset((301, 302, 303, 307, 308))
# Sent only to the origin they were given for (see Fetcher.fetch); --secret-header adds more.
SENSITIVE: Final = frozenset(("authorization", "cookie", "proxy-authorization"))
# Informational (1xx) responses accepted before the final one: a server that sends more
# is broken or hostile (aiohttp would queue and skip them forever).
MAX_INFORMATIONAL: Final = 5
# Bodies in these encodings are decoded here (see _Decoder); aiohttp decodes no body.
DECODED: Final = frozenset(("gzip", "deflate"))  # the WARC writer may key on it too
# Only what _Decoder decodes is asked for. aiohttp asks for just that itself unless brotli
# or zstd is installed (it adds br/zstd then): only then is the header a session header,
# as each one costs every request a step of aiohttp's header copy.
_ENCODINGS: Final = "gzip, deflate"
_ASK_ENCODINGS: Final = (
    getattr(ClientRequest, "DEFAULT_HEADERS", {}).get(hdrs.ACCEPT_ENCODING) != _ENCODINGS
)
_DECODE_STEP: Final = 1 << 20  # decoded bytes per zlib call: a bomb inflates piece by piece
# Response headers read once per URL, as istr: a plain str key is case-folded on every
# lookup (~35 ns each).
_CONTENT_TYPE: Final = hdrs.CONTENT_TYPE
_RETRY_AFTER: Final = hdrs.RETRY_AFTER
_CONTENT_ENCODING: Final = hdrs.CONTENT_ENCODING
_NO_CEIL: Final = 1e9  # never let aiohttp round a timeout up to a whole second
HTML_TYPES: Final = frozenset(("text/html", "application/xhtml+xml"))
_NO_TIMER: Final = TimerNoop()
_NO_TRACES: Final[list[Any]] = []  # aiohttp only iterates over the traces it is given
_MAX_BUGS: Final = 10  # distinct internal errors a run prints the traceback of (Fetcher._bug)

# What Fetcher.fetch keeps of a body (it always counts it).
KEEP_NONE: Final = 0
KEEP_HTML: Final = 1  # HTML bodies only (crawl mode: links are parsed from them)
KEEP_ALL: Final = 2  # every body (--save-dir, --warc, robots.txt, sitemaps)


def _direct_requests_work() -> bool:
    """Whether this aiohttp has the interfaces Fetcher._send was written against (tested
    with aiohttp 3.14), checked by name. If not, every request goes through
    ClientSession.request, which is slower but otherwise the same."""
    try:
        response_params = inspect.signature(
            aiohttp.client_proto.ResponseHandler.set_response_params
        )
        connect = inspect.signature(aiohttp.BaseConnector.connect)
        request = inspect.signature(ClientRequest)
    except (AttributeError, TypeError, ValueError):
        return False
    wanted = {
        "skip_payload",
        "read_until_eof",
        "auto_decompress",
        "max_line_size",
        "max_field_size",
    }
    return (
        wanted <= response_params.parameters.keys()
        and {"req", "traces", "timeout"} <= connect.parameters.keys()
        and {"headers", "loop", "session"} <= request.parameters.keys()
        and inspect.iscoroutinefunction(getattr(ClientRequest, "send", None))
        and inspect.iscoroutinefunction(getattr(ClientResponse, "start", None))
    )


DIRECT_REQUESTS: Final = _direct_requests_work()


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
        # What a server sent that does not parse (a header value, a URL), met below
        # aiohttp's own checks.
        return errors.ProtocolError(_describe(exc))
    # Anything else (TypeError, AttributeError, KeyError, RuntimeError, ...) is a bug of
    # ours, not the server's doing: it ends this URL, never the run (see Fetcher._bug).
    return errors.InternalError(f"internal error (a bug in crawler): {_describe(exc)}")


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, http_exceptions.HttpProcessingError | client_exceptions.ClientResponseError):
        # str() of these is "400, message:" with the reason on the lines after it (the
        # parser's description, the bytes it choked on, a ^ pointer): say what was wrong.
        lines = [line.strip() for line in str(exc.message).splitlines()]
        text = " ".join(line for line in lines if line.strip("^~ "))
        if not text:
            code = (
                exc.status if isinstance(exc, client_exceptions.ClientResponseError) else exc.code
            )
            text = f"status {code}"
    else:
        text = str(exc).strip()
        if isinstance(exc, OSError) and exc.errno:
            # The OS's own words ("Connection refused"), not asyncio's "Connect call
            # failed ('127.0.0.1', 1)", which hides the reason behind the address.
            return safe_text(os.strerror(exc.errno))
        if isinstance(exc, OSError) and exc.strerror:
            text = exc.strerror
        text = text.splitlines()[0] if text else ""
    text = safe_text(text)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _exchange(method: str, resp: aiohttp.ClientResponse, redact: frozenset[str]) -> Exchange:
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
        result.body = None
        raise errors.TooLarge(f"body exceeds --max-bytes {limit}", response=result)
    if chunks is not None:
        chunks.append(data[: len(data) - over])


def _ascii_bytes(raw: bytes) -> str:
    return raw.decode("ascii") if raw.isascii() else raw.decode("ascii", "backslashreplace")


def _ascii(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")


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
    _bound_informational(connector)
    headers = CIMultiDict({"User-Agent": config.user_agent})
    if _ASK_ENCODINGS:
        headers["Accept-Encoding"] = _ENCODINGS
    sensitive = sensitive_names(config)
    for name, value in config.headers:
        lower = name.lower()
        if lower in ("user-agent", "accept-encoding"):
            headers[name] = value
        elif lower not in sensitive:  # credentials go per request: see Fetcher
            headers.add(name, value)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_line_size=config.max_header_bytes,
        max_field_size=config.max_header_bytes,
        auto_decompress=False,  # _Decoder decodes, and sees a truncated stream
        trust_env=False,
    )


def sensitive_names(config: FetchConfig) -> frozenset[str]:
    """Lower-case names of the headers that go only to their origin."""
    return SENSITIVE | {name.lower() for name in config.secret_headers}


class _BoundedHandler(ResponseHandler):
    """aiohttp's connection protocol, refusing a flood of informational responses.

    aiohttp's ClientResponse.start() skips 1xx responses in a loop, forever, and the
    protocol queues every one the parser finds in a read (thousands per read for a
    server that sends nothing else): memory grows, and the loop never waits while the
    queue is not empty, so the deadline's cancellation cannot land. After
    MAX_INFORMATIONAL of them in a row the connection is closed with a protocol error."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.informational = 0

    def feed_data(self, data: Any, size: int = 0) -> None:
        # Once per response: the final one (the usual case) costs a compare and a call.
        code = data[0].code
        if code >= 200 or code == 101:
            if self.informational:
                if self.informational > MAX_INFORMATIONAL:
                    return  # refused: nothing more from this connection is handed over
                self.informational = 0
            _feed_data(self, data, size)
            return
        self.informational += 1
        if self.informational <= MAX_INFORMATIONAL:
            _feed_data(self, data, size)
        elif self.informational == MAX_INFORMATIONAL + 1:
            self.set_exception(
                http_exceptions.HttpProcessingError(
                    message=f"more than {MAX_INFORMATIONAL} informational (1xx) "
                    "responses before the final one"
                )
            )
            if self.transport is not None:
                self.transport.close()


_feed_data: Final = ResponseHandler.feed_data  # without super()'s lookup, per response


def _bound_informational(connector: aiohttp.BaseConnector) -> None:
    """Make the connector build _BoundedHandler protocols. aiohttp has no public hook
    for this: its protocol factory is the ``_factory`` attribute (aiohttp 1.x to 3.14);
    if it is not there as expected, the connector is left as it is."""
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        bounded = functools.partial(_BoundedHandler, *factory.args, **factory.keywords)
        setattr(connector, "_factory", bounded)  # noqa: B010 - a private attribute


def address_policy(config: FetchConfig) -> AddressPolicy:
    return AddressPolicy(
        block_private=config.block_private, allow_only=config.allow_only, resolve=config.resolve
    )


class Fetcher:
    """Makes one attempt at a URL, following redirects, counting the body."""

    # Internal errors (bugs) met by any fetcher of this process: the test suite fails a
    # test whose run met one it did not ask for (tests/conftest.py).
    bugs_met: ClassVar[int] = 0

    def __init__(
        self, session: aiohttp.ClientSession, config: FetchConfig, *, direct: bool | None = None
    ) -> None:
        self._session = session
        self._config = config
        self._policy = address_policy(config)
        self._check = self._policy.check_url if self._policy.active else None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests go through aiohttp's own connector, request and response objects
        # without ClientSession._request around them (see _send), unless this aiohttp
        # does not have the interfaces that path was written against.
        self._direct = DIRECT_REQUESTS if direct is None else direct
        connector = session.connector
        assert connector is not None  # noqa: S101 - make_session gives it one
        self._connector = connector
        self._connect_timeout = ClientTimeout(
            sock_connect=config.connect_timeout, ceil_threshold=_NO_CEIL
        )
        # Credentials (sensitive headers) go only where the caller says, per URL (see
        # fetch), never after a redirect to another origin (curl does the same).
        sensitive = sensitive_names(config)
        credentials = [(n, v) for n, v in config.headers if n.lower() in sensitive]
        self._credentials: CIMultiDict[str] | None = CIMultiDict(credentials) or None
        # In WARC request records; always: a URL's user:password is sent as Authorization.
        self._redact = sensitive
        # The session's headers, with and without the credentials (_send only: a
        # session request merges them itself).
        self._headers: CIMultiDict[str] = CIMultiDict(session.headers)
        self._headers_with_credentials = CIMultiDict(session.headers)
        self._headers_with_credentials.extend(credentials)
        # Bugs already reported on stderr (see _bug): (type, file, line) of each.
        self._bugs: set[tuple[str, str, int]] = set()

    @property
    def has_credentials(self) -> bool:
        """Whether any sensitive header was given (else ``credentials`` changes nothing)."""
        return self._credentials is not None

    async def fetch(
        self,
        url: URL,
        budget: float,
        keep: int = KEEP_NONE,
        follow: Callable[[URL], bool] | None = None,
        credentials: bool = False,
        *,
        cap: int | None = None,
    ) -> Response:
        """One attempt within ``budget`` seconds, redirects included. Raises FetchError.

        ``cap``, if given, replaces --max-bytes with a cut: the body is read up to ``cap``
        bytes and kept that far, not refused (robots.txt: RFC 9309 reads its first 500 KiB).

        ``keep`` says which bodies to keep (KEEP_*). ``follow``, if given, vets every
        redirect target: a refused one ends the attempt with the redirect response itself
        (crawl mode never follows a redirect out of its scope). ``credentials``: the
        caller (the engine, once per URL) decided that ``url``'s origin may receive the
        sensitive headers; they are sent there and to redirects within that origin only.

        Few coroutine frames on purpose: every resumption of a request passes through
        each frame of the await chain, so the hot path stays flat.
        """
        config = self._config
        method = config.method
        loop = self._loop
        if loop is None:  # looked up once: each lookup costs a getpid() on 3.11
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        redirects: list[str] = []  # the record's: URLs between the first and the final one
        hops = 0  # redirects followed
        credentials = credentials and self._credentials is not None
        origin = url.origin() if credentials else None
        check = self._check
        direct = self._direct
        try:
            while True:
                if check is not None:
                    check(url)
                left = deadline - loop.time()
                if left <= 0:
                    # aiohttp reads total=0 as "no timeout": never send without time left.
                    raise errors.Timeout("deadline exceeded")
                # One timer bounds the whole exchange, body included.
                timer: BaseTimerContext
                if direct:
                    timer = own = TimerContext(loop)
                    handle: asyncio.TimerHandle | None = loop.call_at(deadline, own.timeout)
                else:
                    timer, handle = _NO_TIMER, None
                try:
                    with timer:
                        if direct:
                            resp = await self._send(method, url, credentials)
                        else:
                            # ceil_threshold keeps aiohttp from rounding the deadline
                            # up to whole seconds.
                            resp = await self._session.request(
                                method,
                                url,
                                allow_redirects=False,
                                auto_decompress=False,
                                headers=self._credentials if credentials else None,
                                timeout=ClientTimeout(
                                    total=left,
                                    sock_connect=config.connect_timeout,
                                    ceil_threshold=_NO_CEIL,
                                ),
                            )
                        try:
                            status = resp.status
                            rh = resp.headers
                            location = rh.get("Location") if status in _REDIRECTS else None
                            nxt = None
                            if location is not None and follow is not None:
                                nxt = self._redirect_target(url, location)
                                if not follow(nxt):
                                    location = None
                            if location is None:
                                return await self._final_response(
                                    resp, url, method, redirects, keep, cap
                                )
                        finally:
                            resp.release()
                finally:
                    if handle is not None:
                        handle.cancel()
                if hops >= config.max_redirects:
                    # The record shows how far it got: the chain followed, and the URL
                    # whose redirect was one too many (with its status).
                    raise errors.TooManyRedirects(
                        f"more than {config.max_redirects} redirects",
                        response=Response(status, str(url), None, 0, redirects),
                    )
                if hops:  # the input URL is the record's url, not one of its redirects
                    redirects.append(str(url))
                hops += 1
                url = nxt if nxt is not None else self._redirect_target(url, location)
                if credentials and url.origin() != origin:
                    credentials = False
        except errors.FetchError:
            raise
        except Exception as exc:  # every failure of one URL becomes its record, not a crash
            mapped = map_exception(exc, deadline_left=deadline - loop.time())
            if isinstance(mapped, errors.InternalError):
                Fetcher.bugs_met += 1
                self._bug(exc)
            raise mapped from exc

    def _bug(self, exc: BaseException) -> None:
        """Print the traceback of an unexpected exception on stderr, once per distinct
        bug (its type and the line that raised it) and run, at most _MAX_BUGS of them: a
        bug met by every URL must not flood the terminal. Even with -q: it is a bug
        report, and the record alone would not say where it is. The URL is not printed
        (it may hold credentials); its record has it."""
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        key = (type(exc).__qualname__, last.filename if last else "", (last and last.lineno) or 0)
        if key in self._bugs or len(self._bugs) >= _MAX_BUGS:
            return
        self._bugs.add(key)
        text = "".join(traceback.format_exception(exc))
        with contextlib.suppress(OSError, ValueError):  # stderr closed: the record stays
            sys.stderr.write(
                "crawler: internal error (a bug in crawler; please report it with this "
                f"traceback). The URL's record has error kind 'internal'.\n{text}"
            )
            sys.stderr.flush()

    async def _send(self, method: str, url: URL, credentials: bool) -> ClientResponse:
        """Send one request and read its response head, through aiohttp's connector
        (pool, DNS cache, TLS, our resolver), ClientRequest and ClientResponse.

        These are the steps ClientSession._request takes for a plain request, without
        what a crawler never uses there (cookies, proxies, auth, traces, middlewares,
        redirects: fetch follows those itself). That generic layer costs about 10 µs
        per request, an eighth of a whole request on uvloop. Like aiohttp, a GET or
        HEAD is sent again once on a fresh connection if a pooled one turns out closed.
        """
        session = self._session
        connector = self._connector
        headers = self._headers_with_credentials if credentials else self._headers
        retry = True
        while True:
            req = ClientRequest(method, url, headers=headers, loop=self._loop, session=session)
            try:
                conn = await connector.connect(req, _NO_TRACES, self._connect_timeout)
            except TimeoutError as exc:  # sock_connect; the deadline is the caller's timer
                raise client_exceptions.ConnectionTimeoutError(
                    f"Connection timeout to host {url}"
                ) from exc
            protocol = conn.protocol
            assert protocol is not None  # noqa: S101 - a connection has its protocol
            protocol.set_response_params(
                skip_payload=method == "HEAD",
                read_until_eof=True,
                auto_decompress=False,  # _Decoder decodes
                max_line_size=self._config.max_header_bytes,
                max_field_size=self._config.max_header_bytes,
            )
            try:
                resp = await req.send(conn)
                try:
                    await resp.start(conn)
                except BaseException:
                    resp.close()
                    raise
            except (client_exceptions.ClientOSError, client_exceptions.ServerDisconnectedError):
                conn.close()
                if not retry:
                    raise
                retry = False  # a pooled connection the server had closed: once more
                continue
            except BaseException:
                conn.close()
                raise
            return resp

    async def _final_response(
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
        limit = self._config.max_bytes if cap is None else cap
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

    @staticmethod
    def _redirect_target(url: URL, location: str) -> URL:
        if not location.isascii():
            location = _quote_non_utf8(location)
        try:
            nxt = url.join(URL(location))
            bad_port = check_port(location) if nxt.explicit_port is not None else None
        except Exception as exc:  # ValueError, or IndexError from yarl 1.25
            raise errors.ProtocolError(f"invalid redirect Location {location!r}") from exc
        if bad_port is not None:
            raise errors.ProtocolError(f"redirect to an invalid port: {bad_port} ({location!r})")
        if nxt.scheme not in ("http", "https") or not nxt.raw_host:
            raise errors.ProtocolError(f"redirect to unsupported URL {location!r}")
        return nxt.with_fragment(None) if nxt.raw_fragment else nxt


def _quote_non_utf8(text: str) -> str:
    """A header value with bytes that are not UTF-8 (lone surrogates, from aiohttp's
    ``surrogateescape``) with each such byte percent-encoded: yarl would drop them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text  # an IRI: yarl encodes it (the host as IDNA)
    out = []
    for char in text:
        if "\udc80" <= char <= "\udcff":
            out.append(f"%{ord(char) - 0xDC00:02X}")
        elif "\ud800" <= char <= "\udfff":
            out.append("%EF%BF%BD")  # not from a byte: U+FFFD
        else:
            out.append(char)
    return "".join(out)


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
