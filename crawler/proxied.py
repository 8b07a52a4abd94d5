"""Requests through proxies: with a proxy configured, the run's fetcher
(``crawler.fetchers.open_fetcher``, decided once per run: the plain path does not change)
is a ``ProxiedFetcher``, which sends each URL through the proxy its host sticks to.

    ProxiedFetcher.fetch(url): --noproxy or no proxy for its scheme --> the run's session,
        direct; else Pool.pick(host) (crawler.proxies) --> that proxy's Fetcher, made on
        first use over a session of its own (closed at the end of the run):
          http(s)://  aiohttp's proxy support: the request in absolute form for an http
                      target, a CONNECT tunnel for an https one; Proxy-Authorization from
                      the proxy URL's credentials goes to the proxy only (on the CONNECT
                      request, never inside the tunnel)
          socks5(h):// aiohttp-socks' ProxyConnector (SOCKS credentials in the handshake)
        --> the outcome to that proxy's breaker (a ProxyError is a failure, anything else
            shows the proxy works) and the proxy's name (without credentials) onto the
            response or error, for the record (ProxiedRecords)

--block-private: an HTTP proxy and socks5h resolve the target's name themselves, so only
an IP literal target (and localhost names) can be refused; with socks5 crawler resolves
the name (through the address policy) and hands the proxy the checked address. The
proxy's own address is never checked: the user chose it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import client_exceptions
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from multidict import CIMultiDict
from yarl import URL

from crawler import errors
from crawler.breaker import Breaker
from crawler.config import BreakerConfig, FetchConfig
from crawler.fetcher import Fetcher
from crawler.netpolicy import PolicyResolver
from crawler.proxies import Bypass, Pool, ProxySpec, parse_proxy
from crawler.records import Answer, Failure, Record, Records, Task
from crawler.request import Request
from crawler.response import KEEP_NONE, Response
from crawler.session import Connector, address_policy, connector_options, make_session
from crawler.sessions import SessionState, make_fetcher

# A proxy is benched after this many consecutive failures when --breaker-threshold is 0
# (no host breakers): a dead proxy must still stop taking every host's requests.
_DEFAULT_THRESHOLD = 3


class ProxiedResponse(Response):
    """A response that came through a proxy: ``proxy`` names it (no credentials)."""

    proxy: str | None = None


def _with_proxy(resp: Response, name: str) -> ProxiedResponse:
    fields = {f: getattr(resp, f) for f in Response.__struct_fields__}
    return ProxiedResponse(**fields, proxy=name)


class ProxiedRecords(Records):
    """Records whose ``proxy`` field names the proxy the last attempt went through."""

    __slots__ = ()

    def answered(self, task: Task, resp: Answer, error: Failure | None) -> Record:
        r = super().answered(task, resp, error)
        r.proxy = getattr(resp, "proxy", None) or getattr(error, "proxy", None)
        return r

    def unanswered(self, task: Task, error: Failure | None) -> Record:
        r = super().unanswered(task, error)
        r.proxy = getattr(error, "proxy", None)
        return r


class ProxiedFetcher(Fetcher):
    """The run's fetcher when proxies are configured (see the module's docstring). As a
    Fetcher itself it is the direct path, for the hosts --noproxy names."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: FetchConfig,
        breaker: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
        state: SessionState | None = None,
    ) -> None:
        super().__init__(session, config)
        self._state = state  # cookies and validators, shared with every proxy's fetcher
        self._unproxied = make_fetcher(session, config, state)  # hosts --noproxy names
        threshold = breaker.threshold or _DEFAULT_THRESHOLD

        def new_breaker() -> Breaker:
            return Breaker(threshold, breaker.cooldown, clock)

        self._bypass = Bypass(config.noproxy)
        pools: dict[str, Pool | None] = {"http": None, "https": None}
        if config.proxies:
            pool = Pool((parse_proxy(p) for p in config.proxies), new_breaker)
            pools = {"http": pool, "https": pool}
        else:
            by_scheme = dict(config.scheme_proxies)
            for scheme in pools:
                text = by_scheme.get(scheme) or by_scheme.get("all")
                if text:
                    pools[scheme] = Pool([parse_proxy(text)], new_breaker)
        self._pools = pools
        self._fetchers: dict[ProxySpec, Fetcher] = {}
        self._sessions: list[aiohttp.ClientSession] = []

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
        host = url.raw_host or ""
        pool = self._pools.get(url.scheme)
        if pool is None or self._bypass(host):
            return await self._unproxied.fetch(
                url, budget, keep, follow, credentials, request, cap=cap
            )
        proxy = pool.pick(host)  # NoLiveProxy: every proxy benched
        spec = proxy.spec
        fetcher = self._fetchers.get(spec) or self._open(spec)
        breaker = proxy.breaker
        try:
            resp = await fetcher.fetch(url, budget, keep, follow, credentials, request, cap=cap)
        except errors.ProxyError as exc:
            breaker.record(True, exc.kind, exc.message)
            exc.proxy = spec.name
            raise
        except errors.FetchError as exc:
            # The target's failure, through a working proxy (or the URL's deadline:
            # no verdict on the proxy).
            if isinstance(exc, errors.Timeout) and not exc.retryable:
                breaker.release_probe()
            else:
                breaker.record(False)
            exc.proxy = spec.name
            raise
        except BaseException:
            breaker.release_probe()
            raise
        breaker.record(False)
        return _with_proxy(resp, spec.name)

    def _open(self, spec: ProxySpec) -> Fetcher:
        """The Fetcher (and session) for one proxy, made on first use."""
        config = self._config
        connector: aiohttp.TCPConnector
        if spec.socks:
            from aiohttp_socks import ProxyConnector, ProxyType

            options = connector_options(config, lazy=False)  # not a Connector of ours
            connector = ProxyConnector(
                proxy_type=ProxyType.SOCKS5,
                host=spec.host,
                port=spec.port,
                username=spec.user,
                password=spec.password,
                rdns=spec.remote_dns,
                **options,
            )
            policy = address_policy(config)
            if not spec.remote_dns and policy.active:
                # socks5: crawler resolves the target, so the policy sees its addresses
                # and the proxy is handed the checked one.
                connector._resolver = PolicyResolver(policy)
            proxy, auth = None, None
        else:
            # The proxy's own name is resolved without the address policy.
            connector = _TunnelConnector(**connector_options(config))
            proxy = URL.build(scheme=spec.scheme, host=spec.host, port=spec.port)
            auth = None
            if spec.user is not None:
                pair = f"{spec.user}:{spec.password or ''}".encode()
                token = "Basic " + base64.b64encode(pair).decode("ascii")
                auth = CIMultiDict({"Proxy-Authorization": token})
        session = make_session(config, connector)
        self._sessions.append(session)
        fetcher = make_fetcher(
            session,
            config,
            self._state,
            direct=False,
            proxy=proxy,
            proxy_headers=auth,
            remote_dns=spec.remote_dns,
        )
        self._fetchers[spec] = fetcher
        return fetcher

    async def aclose(self) -> None:
        """Close every proxy's session (idempotent)."""
        sessions, self._sessions = self._sessions, []
        self._fetchers.clear()
        for session in sessions:
            await session.close()


class _TunnelConnector(Connector):
    """aiohttp's connector, with a proxy that hangs up on CONNECT (or answers it with
    something that is not HTTP) reported as the proxy's failure, not the target's."""

    async def _create_proxy_connection(
        self,
        req: ClientRequest,
        traces: list[Any],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> tuple[asyncio.BaseTransport, ResponseHandler]:
        try:
            return await super()._create_proxy_connection(req, traces, timeout)
        except (
            client_exceptions.ServerDisconnectedError,
            client_exceptions.ClientPayloadError,
        ) as exc:
            raise client_exceptions.ClientProxyConnectionError(
                req.connection_key, OSError("the proxy hung up on CONNECT")
            ) from exc
        except client_exceptions.ClientResponseError as exc:
            if isinstance(exc, client_exceptions.ClientHttpProxyError):
                raise
            raise client_exceptions.ClientProxyConnectionError(
                req.connection_key, OSError(f"malformed answer to CONNECT: {exc.message}")
            ) from exc
