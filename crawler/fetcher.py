"""One attempt at a URL: the request sent through aiohttp's connector, redirects followed
(credentials kept to their origin), the final response handed to crawler.body, and every
failure raised as a FetchError (mapped by crawler.errormap) or, for a bug, reported once.

The session it runs on comes from crawler.session; what it returns is crawler.response's.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Final, Protocol

import aiohttp
from aiohttp import ClientTimeout, client_exceptions
from aiohttp.client_reqrep import ClientRequest, ClientResponse
from aiohttp.helpers import BaseTimerContext, TimerContext, TimerNoop
from multidict import CIMultiDict
from yarl import URL

from crawler import errors
from crawler.body import BodyReader
from crawler.config import FetchConfig
from crawler.errormap import map_exception, report_bug
from crawler.request import Request
from crawler.response import KEEP_NONE, Response
from crawler.session import address_policy, close_pooled, open_sockets, sensitive_names
from crawler.urls import redirect_target

_REDIRECTS: Final = frozenset((301, 302, 303, 307, 308))
_NO_CEIL: Final = 1e9  # never let aiohttp round a timeout up to a whole second
_NO_TIMER: Final = TimerNoop()
_NO_TRACES: Final[list[Any]] = []  # aiohttp only iterates over the traces it is given
# Failures that happen before a byte of the request is sent: a request that is not
# idempotent may still be tried again after them (see crawler.attempts).
_BEFORE_SENDING: Final = (
    client_exceptions.ClientConnectorError,
    client_exceptions.ConnectionTimeoutError,
)


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


class HostWork(Protocol):
    """What the fetcher asks the frontier (crawler.frontier) to keep a connection."""

    waiting: dict[str | None, Any]  # host name -> its last URL queued (or a retry waiting)
    in_flight: int


class Fetcher:
    """Makes one attempt at a URL, following redirects, counting the body."""

    # Internal errors (bugs) met by any fetcher of this process: the test suite fails a
    # test whose run met one it did not ask for (tests/conftest.py).
    bugs_met: ClassVar[int] = 0

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: FetchConfig,
        *,
        direct: bool | None = None,
        proxy: URL | None = None,
        proxy_headers: CIMultiDict[str] | None = None,
        remote_dns: bool = False,
    ) -> None:
        self._session = session
        self._config = config
        self._policy = address_policy(config)
        # ``remote_dns``: a proxy resolves the target's names (crawler.proxied), so
        # only what the name itself shows can be checked.
        policy_check = self._policy.check_remote_url if remote_dns else self._policy.check_url
        self._check = policy_check if self._policy.active else None
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
        if config.cookie:  # --cookie: a credential too, in one Cookie header with -H's
            given = [v for n, v in credentials if n.lower() == "cookie"]
            credentials = [(n, v) for n, v in credentials if n.lower() != "cookie"]
            credentials.append(("Cookie", "; ".join((*given, *config.cookie))))
        self._credentials: CIMultiDict[str] | None = CIMultiDict(credentials) or None
        # An HTTP proxy (crawler.proxied: such a fetcher sends through the session,
        # direct=False, which passes these to aiohttp). ``proxy_headers`` (its
        # Proxy-Authorization) go on a CONNECT, which aiohttp sends for an https target;
        # an http target's request goes to the proxy itself, so they go on it.
        self._proxy = proxy
        self._proxy_headers = proxy_headers
        self._plain_proxy_headers: tuple[CIMultiDict[str], CIMultiDict[str]] | None = None
        if proxy_headers is not None:
            with_credentials = CIMultiDict(proxy_headers)
            with_credentials.extend(self._credentials or {})
            self._plain_proxy_headers = (proxy_headers, with_credentials)
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
        self._sensitive = sensitive
        # A request that is not idempotent goes again on a fresh connection, after a
        # pooled one turned out closed, only with --retry-unsafe (see _send).
        self._retry_unsafe = config.retry_unsafe
        self._max_header = config.max_header_bytes
        # Bugs already reported on stderr (errormap.report_bug): (type, file, line) of each.
        self._bugs: set[tuple[str, str, int]] = set()
        # Which connections stay pooled after their response (see keep_idle_for).
        self._waiting: dict[str | None, Any] | None = None
        self._sockets = open_sockets(connector)

    def keep_idle_for(self, work: HostWork) -> None:
        """Pool a response's connection only if its host has work waiting in ``work``
        (the frontier), else close it once the response is read; a connection opened
        while more sockets than the idle cap are idle serves one request (crawler.session)."""
        self._waiting = work.waiting
        if self._sockets is not None:
            self._sockets.work = work

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
        request: Request | None = None,
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
        ``request``: the method, headers of its own and body, if not the run's plain GET
        or HEAD; its sensitive headers go to ``url``'s origin only, as -H's do.

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
                            if request is None:
                                resp = await self._send(
                                    method,
                                    url,
                                    self._headers_with_credentials
                                    if credentials
                                    else self._headers,
                                )
                            else:
                                if not hops:  # set up here: a plain URL never passes by
                                    method, body, origin, req_headers, again = self._begin(
                                        request, url, credentials
                                    )
                                resp = await self._send(method, url, req_headers, body, again)
                        else:
                            if request is not None:
                                if not hops:
                                    method, body, origin, req_headers, again = self._begin(
                                        request, url, credentials
                                    )
                                extra: CIMultiDict[str] | None = req_headers
                            else:
                                extra = self._credentials if credentials else None
                            plain = self._plain_proxy_headers
                            if plain is not None and url.scheme == "http":
                                # To the proxy itself: its credentials go on the request.
                                if request is None:
                                    extra = plain[1] if credentials else plain[0]
                                else:
                                    extra = CIMultiDict(extra or ())
                                    extra.extend(plain[0])
                            resp = await self._request(
                                method, url, extra, left, body if request is not None else None
                            )
                        try:
                            status = resp.status
                            rh = resp.headers
                            location = rh.get("Location") if status in _REDIRECTS else None
                            nxt = None
                            if location is not None:
                                if self._no_follow:
                                    location = None  # --no-follow: the 3xx is the answer
                                elif follow is not None:
                                    nxt = redirect_target(url, location)
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
                url = nxt if nxt is not None else redirect_target(url, location)
                if credentials and url.origin() != origin:
                    credentials = False
                if request is not None:
                    # As browsers and aiohttp do: 303 makes any request (but HEAD) a GET,
                    # 301 and 302 make a POST one; the body goes with the method.
                    if (status == 303 and method != "HEAD") or (
                        status in (301, 302) and method == "POST"
                    ):
                        method, body = "GET", None
                    if origin is not None and url.origin() != origin:
                        origin = None  # its own credentials are gone for the rest of the chain
                    req_headers = self._request_headers(
                        request, credentials, origin is not None, body is not None
                    )
        except errors.FetchError:
            raise
        except Exception as exc:  # every failure of one URL becomes its record, not a crash
            mapped = map_exception(exc, deadline_left=deadline - loop.time())
            if isinstance(mapped, errors.InternalError):
                Fetcher.bugs_met += 1
                report_bug(exc, self._bugs)
            elif not hops and isinstance(exc, _BEFORE_SENDING):
                mapped.sent = False
            raise mapped from exc

    def _begin(
        self, request: Request, url: URL, credentials: bool
    ) -> tuple[str, bytes | None, URL, CIMultiDict[str], bool]:
        """A request's first hop: its method, body, origin (its own sensitive headers go
        there only), headers, and whether _send may send it again on a fresh connection."""
        body = request.body
        headers = self._request_headers(request, credentials, True, body is not None)
        again = self._retry_unsafe or not request.unsafe
        return request.method, body, url.origin(), headers, again

    def _request_headers(
        self, request: Request, credentials: bool, on_origin: bool, with_body: bool
    ) -> CIMultiDict[str]:
        """The headers of ``request`` to its current URL: the session's, the run's
        credentials if ``credentials``, and its own over them by name; its own sensitive
        ones only ``on_origin`` (its URL's origin), its Content-Type only ``with_body``."""
        shared = self._headers_with_credentials if credentials else self._headers
        if not request.headers:
            return shared  # not changed here, and ClientRequest copies what it is given
        headers = CIMultiDict(shared)
        sensitive = self._sensitive
        bound = request.bound  # more headers kept to the origin (crawler.hostfetch)
        own = [
            (name, value)
            for name, value in request.headers
            if (on_origin or (name.lower() not in sensitive and name.lower() not in bound))
            and (with_body or name.lower() != "content-type")
        ]
        for name, _ in own:
            headers.popall(name, None)
        for name, value in own:
            headers.add(name, value)
        return headers

    async def _request(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str] | None,
        left: float,
        body: bytes | None = None,
    ) -> ClientResponse:
        """One request through ClientSession.request (when _send cannot be used)."""
        # ceil_threshold keeps aiohttp from rounding the deadline up to whole seconds.
        return await self._session.request(
            method,
            url,
            allow_redirects=False,
            auto_decompress=False,
            headers=headers,
            data=body,
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
            timeout=ClientTimeout(
                total=left, sock_connect=self._config.connect_timeout, ceil_threshold=_NO_CEIL
            ),
        )

    async def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None = None,
        again: bool = True,
    ) -> ClientResponse:
        """Send one request and read its response head, through aiohttp's connector
        (pool, DNS cache, TLS, our resolver), ClientRequest and ClientResponse.

        These are the steps ClientSession._request takes for a plain request, without
        what a crawler never uses there (cookies, proxies, auth, traces, middlewares,
        redirects: fetch follows those itself). That generic layer costs about 10 µs
        per request, an eighth of a whole request on uvloop. Like aiohttp, a request is
        sent again once on a fresh connection if a pooled one turns out closed, if
        ``again`` (not for POST, PATCH, ... unless --retry-unsafe).
        """
        retry = again
        while True:  # _session and _connector not kept in locals: one pass is the rule
            req = ClientRequest(
                method, url, headers=headers, data=body, loop=self._loop, session=self._session
            )
            try:
                conn = await self._connector.connect(req, _NO_TRACES, self._connect_timeout)
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
                max_line_size=self._max_header,
                max_field_size=self._max_header,
            )
            try:
                resp = await req.send(conn)
                try:
                    await resp.start(conn)
                except BaseException:
                    resp.close()
                    raise
                waiting = self._waiting
                if waiting is not None and url.raw_host not in waiting:
                    if resp.connection is None:  # read whole, pooled: no task has it yet
                        close_pooled(self._connector, conn, protocol)
                    else:
                        protocol.force_close()  # closed when the body has been read
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
