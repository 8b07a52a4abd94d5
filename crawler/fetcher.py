"""One attempt at a URL: the request sent through aiohttp's connector, redirects followed
(credentials kept to their origin), the final response handed to crawler.body, and every
failure raised as a FetchError (mapped by crawler.errormap) or, for a bug, reported once.

The session it runs on comes from crawler.session; what it returns is crawler.response's.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import ClientTimeout, client_exceptions
from aiohttp.client_reqrep import ClientRequest, ClientResponse
from aiohttp.helpers import BaseTimerContext, TimerContext, TimerNoop
from multidict import CIMultiDict
from yarl import URL

from crawler import errors
from crawler.body import BodyReader
from crawler.config import FetchConfig
from crawler.errormap import map_exception
from crawler.response import KEEP_NONE, Response
from crawler.session import address_policy, sensitive_names
from crawler.urls import check_port

_REDIRECTS: Final = frozenset((301, 302, 303, 307, 308))
_NO_CEIL: Final = 1e9  # never let aiohttp round a timeout up to a whole second
_NO_TIMER: Final = TimerNoop()
_NO_TRACES: Final[list[Any]] = []  # aiohttp only iterates over the traces it is given
_MAX_BUGS: Final = 10  # distinct internal errors a run prints the traceback of (Fetcher._bug)


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
        # Reads the final response: the body up to --max-bytes; in WARC request records
        # the sensitive headers are redacted, always (a URL's user:password is sent as
        # Authorization). A bound method, so the call per URL costs what a method's does.
        reader = BodyReader(config.max_bytes, sensitive)
        self._final_response = reader.read
        self._no_follow = config.no_follow
        # --include-*, --no-follow, -v: a reader and a send that keep or show more, chosen
        # here once, so that a run without them runs exactly the code it always did.
        if config.detail:
            from crawler.detail import DetailReader

            self._final_response = DetailReader(reader, config, sensitive).read
        if config.verbose:
            from crawler.verbose import Verbose

            verbose = Verbose(sensitive)
            self._send = verbose.wrap(self._send)  # type: ignore[method-assign]
            self._request = verbose.wrap(self._request)  # type: ignore[method-assign]
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
                            resp = await self._request(method, url, credentials, left)
                        try:
                            status = resp.status
                            rh = resp.headers
                            location = rh.get("Location") if status in _REDIRECTS else None
                            nxt = None
                            if location is not None:
                                if self._no_follow:
                                    location = None  # --no-follow: the 3xx is the answer
                                elif follow is not None:
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

    async def _request(
        self, method: str, url: URL, credentials: bool, left: float
    ) -> ClientResponse:
        """One request through ClientSession.request (when _send's interfaces are missing)."""
        # ceil_threshold keeps aiohttp from rounding the deadline up to whole seconds.
        return await self._session.request(
            method,
            url,
            allow_redirects=False,
            auto_decompress=False,
            headers=self._credentials if credentials else None,
            timeout=ClientTimeout(
                total=left,
                sock_connect=self._config.connect_timeout,
                ceil_threshold=_NO_CEIL,
            ),
        )

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
