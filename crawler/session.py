"""The one pooled aiohttp session of a run: its connector (pool, DNS cache, TLS, the
address policy's resolver), its headers, the bound on informational responses, and the
count of its open sockets that keeps them below the file-descriptor limit.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import ssl
import weakref
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import hdrs, http_exceptions
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from multidict import CIMultiDict

from crawler.config import MAX_CONCURRENCY, FetchConfig
from crawler.errors import UsageError
from crawler.netpolicy import AddressPolicy, PolicyResolver
from crawler.tls import StoreOnFirstUse, unloaded_context

if TYPE_CHECKING:
    from aiohttp import ClientTimeout
    from aiohttp.tracing import Trace

# Sent only to the origin they were given for (see Fetcher.fetch); --secret-header adds more.
SENSITIVE: Final = frozenset(("authorization", "cookie", "proxy-authorization"))
# Informational (1xx) responses accepted before the final one: a server that sends more
# is broken or hostile (aiohttp would queue and skip them forever).
MAX_INFORMATIONAL: Final = 5
# Only what crawler.body decodes is asked for. aiohttp asks for just that itself unless brotli
# or zstd is installed (it adds br/zstd then): only then is the header a session header,
# as each one costs every request a step of aiohttp's header copy.
_ENCODINGS: Final = "gzip, deflate"
_ASK_ENCODINGS: Final = (
    getattr(ClientRequest, "DEFAULT_HEADERS", {}).get(hdrs.ACCEPT_ENCODING) != _ENCODINGS
)
# Idle pooled connections kept at most beyond the requests in flight (see Fetcher), and
# file descriptors left for everything that is not a socket (outputs, state, bodies, pipes).
IDLE_CAP: Final = 512
FD_RESERVE: Final = 128


class Sockets:
    """How many connections of one connector are open now (counted by its protocols,
    once per connection), and the cap on those not in flight: with ``work`` (the
    frontier, whose ``in_flight`` bounds the connections in use) set by the fetcher, a
    connection opened while more than ``idle_cap`` are idle serves one request only."""

    __slots__ = ("idle_cap", "open", "work")

    def __init__(self, idle_cap: int) -> None:
        self.open = 0
        self.idle_cap = idle_cap
        self.work: Any = None


# asyncio's TLS transport (not uvloop's) allocates its read buffer, SSLProtocol.max_size
# bytes, for every connection when it is made: 256 KiB, so 5,000 TLS connections held
# 1.25 GB. A read of up to 64 KiB still takes several TLS records (16 KiB at most) a call.
TLS_READ_SIZE: Final = 64 * 1024


def small_tls_reads() -> None:
    """On asyncio's loop: a smaller read buffer per TLS connection (see TLS_READ_SIZE).
    Called by the command line, whose process this is; not by the Python API, whose
    process (and loop) are the caller's."""
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = min(
        asyncio.sslproto.SSLProtocol.max_size, TLS_READ_SIZE
    )


def fd_budget() -> int:
    """Sockets this process may open: its RLIMIT_NOFILE soft limit, raised to the hard
    limit first (a crawl at many hosts needs more than the usual 1,024), less FD_RESERVE."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass
    except (OSError, ValueError):  # pragma: no cover - no such limit here
        return 1 << 20
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(16, soft - FD_RESERVE)


def socket_limits(config: FetchConfig) -> tuple[int, int]:
    """(the connector's limit on connections in use, 0 for none; the idle cap). Requests
    in flight are bounded by the engine; the connector's own limit is only set when the
    descriptors could run out before it (a wait there costs every release, see RESULTS)."""
    budget = fd_budget()
    idle_cap = min(IDLE_CAP, budget // 4)
    in_use = budget - idle_cap
    limit = config.pool_size
    if limit == 0 or limit > in_use:
        limit = in_use if in_use < MAX_CONCURRENCY else 0
    return limit, idle_cap


def make_session(
    config: FetchConfig, connector: aiohttp.TCPConnector | None = None
) -> aiohttp.ClientSession:
    """The one pooled session of a run: keep-alive, DNS cache, no cookie jar. A proxy's
    session (crawler.proxied) is the same around the connector it is given."""
    if connector is None:
        policy = address_policy(config)
        connector = Connector(
            **connector_options(config),
            resolver=PolicyResolver(policy) if policy.active else None,
        )
    _bound_informational(connector, Sockets(socket_limits(config)[1]))
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
        auto_decompress=False,  # crawler.body decodes, and sees a truncated stream
        trust_env=False,
    )


def connector_options(config: FetchConfig, *, lazy: bool = True) -> dict[str, Any]:
    """What every connector of a run is made with (the resolver apart: a proxy's
    connector resolves its own way, see crawler.proxied). ``lazy``: for a ``Connector``,
    which loads the default CA store at its first TLS connection (crawler.tls); any other
    connector is given a context with the store loaded."""
    context = tls_context(config, lazy=lazy)
    options: dict[str, Any] = {
        "limit": socket_limits(config)[0],
        "limit_per_host": 0,  # per-host limits are enforced by the frontier, not here
        "ttl_dns_cache": config.dns_cache_ttl,
        "ssl": context,
    }
    if lazy and isinstance(context, ssl.SSLContext) and _system_store(config):
        options["store"] = StoreOnFirstUse(context)
    return options


class Connector(aiohttp.TCPConnector):
    """aiohttp's connector, given ``store``: the default CA store of its TLS context is
    loaded before its first new connection that may be TLS (to an https URL, or any
    through a proxy), so a run of plain-HTTP URLs never reads it (crawler.tls). The hook
    is aiohttp's ``_create_connection`` (1.x to 3.14), called once per new connection,
    not per request; were it gone, TLS would fail closed (tests/test_tls_store.py)."""

    def __init__(self, *, store: StoreOnFirstUse | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._store = store

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> ResponseHandler:
        store = self._store
        if store is not None and (req.is_ssl() or req.proxy is not None):
            await store.ready()
            self._store = None
        return await super()._create_connection(req, traces, timeout)


def tls_context(config: FetchConfig, *, lazy: bool = False) -> ssl.SSLContext | bool:
    """What the connector verifies TLS with: the system's CA store (a context of ours,
    with the store not loaded yet if ``lazy``) or nothing (False, --insecure), unless
    --cacert or --cert ask for a context of their own. As curl does, --cacert replaces
    the system's CA store. A file that cannot be used is a UsageError naming it and why
    (checked before the run: crawler.sessions.check_session_files)."""
    if config.cacert is None and config.cert is None:
        if not config.verify_tls:
            return False
        return unloaded_context() if lazy else ssl.create_default_context()
    try:
        context = ssl.create_default_context(cafile=config.cacert)
    except ssl.SSLError as exc:  # an OSError too: first
        raise UsageError(
            f"--cacert {config.cacert!r} holds no PEM certificate we can use ({_reason(exc)})"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read --cacert {config.cacert!r}: {exc.strerror}") from None
    if config.cert is not None:
        try:
            context.load_cert_chain(config.cert, config.key)
        except ssl.SSLError as exc:  # an OSError too: first
            given = f"--cert {config.cert!r}" + (f" and --key {config.key!r}" if config.key else "")
            raise UsageError(
                f"cannot use {given} as a client certificate: {_reason(exc)} (PEM files of "
                "a certificate and its private key are expected; without --key the key must "
                "be in the certificate's file)"
            ) from None
        except OSError as exc:
            option, path = "--cert", config.cert
            if config.key is not None and os.access(config.cert, os.R_OK):
                option, path = "--key", config.key
            raise UsageError(f"cannot read {option} {path!r}: {exc.strerror}") from None
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _system_store(config: FetchConfig) -> bool:
    """Does the run verify with the system's CA store and no client certificate?"""
    return config.verify_tls and config.cacert is None and config.cert is None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


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

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: Sockets | None = None) -> None:
        super().__init__(loop)
        self.informational = 0
        self.sockets = sockets
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sockets = self.sockets
        if sockets is not None:
            sockets.open += 1
            self.counted = True
            work = sockets.work
            if work is not None and sockets.open - work.in_flight > sockets.idle_cap:
                self.force_close()  # the idle pool is full: not pooled after its request

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.counted and self.sockets is not None:
            self.counted = False
            self.sockets.open -= 1
        super().connection_lost(exc)

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


def _bound_informational(connector: aiohttp.BaseConnector, sockets: Sockets) -> None:
    """Make the connector build _BoundedHandler protocols, which count its open sockets
    (``open_sockets``). aiohttp has no public hook for this: its protocol factory is the
    ``_factory`` attribute (aiohttp 1.x to 3.14); if it is not there as expected, the
    connector is left as it is (and its idle connections are not capped)."""
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        keywords = {**factory.keywords, "sockets": sockets}
        bounded = functools.partial(_BoundedHandler, *factory.args, **keywords)
        setattr(connector, "_factory", bounded)  # noqa: B010 - a private attribute
        _SOCKETS[connector] = sockets


_SOCKETS: Final[weakref.WeakKeyDictionary[aiohttp.BaseConnector, Sockets]] = (
    weakref.WeakKeyDictionary()
)


def open_sockets(connector: aiohttp.BaseConnector) -> Sockets | None:
    """The count of ``connector``'s open sockets, if its protocols keep one."""
    return _SOCKETS.get(connector)


def close_pooled(connector: aiohttp.BaseConnector, conn: Any, protocol: ResponseHandler) -> None:
    """Close a connection that aiohttp has already put back in its pool (the response was
    read whole), and take it out of the pool. aiohttp would keep the closed connection
    there, with its protocol, its host's queue of idle connections and the error its close
    left, until the pool's keep-alive cleanup (15 s) or the next request to that host:
    ~2.5 KB per host, for as long as a run at one URL per host lasts (RESULTS.md, "Round
    2: per-host memory"). The pool is aiohttp's ``_conns`` and ``conn`` (an aiohttp
    Connection) has its ``_key`` (aiohttp 3.x to 3.14); if not, only the close is done."""
    protocol.close()
    pool: Any = getattr(connector, "_conns", None)
    key = getattr(conn, "_key", None)
    conns = pool.get(key) if isinstance(pool, dict) else None
    if not conns:
        return
    if conns[-1][0] is protocol:  # as a rule: it was put there just now
        conns.pop()
    else:
        for i, (pooled, _) in enumerate(conns):
            if pooled is protocol:
                del conns[i]
                break
    if not conns:
        del pool[key]


def address_policy(config: FetchConfig) -> AddressPolicy:
    return AddressPolicy(
        block_private=config.block_private, allow_only=config.allow_only, resolve=config.resolve
    )
