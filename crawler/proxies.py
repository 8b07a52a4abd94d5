"""Which proxy a request goes through: proxy URLs and ``--noproxy`` lists parsed, and the
pool a target host sticks to (its proxies benched by their own breakers).

    FetchConfig.proxies (--proxy, --proxy-file) or .scheme_proxies (the environment)
        --> Routes.pool_for(url): None (direct: no proxy for its scheme, or --noproxy)
        --> Pool.pick(host): the live proxy ranked first for that host (rendezvous hashing:
            a host keeps its proxy while that one lives, and only a benched proxy's hosts
            move, spread over the others)

Pure state, no I/O: crawler.proxied sends the requests. Nothing here prints a proxy's
password: ``ProxySpec.name`` is the proxy without its credentials, the one records carry.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable

from msgspec import Struct
from yarl import URL

from crawler.breaker import Breaker, State
from crawler.errors import NoLiveProxy

SCHEMES = ("http", "https", "socks5", "socks5h")
_DEFAULT_PORTS = {"http": 1080, "https": 443, "socks5": 1080, "socks5h": 1080}  # as curl's


class ProxySpec(Struct, frozen=True):
    """One proxy. ``name`` is its URL without credentials (what records and messages show)."""

    scheme: str
    host: str  # as in a URL: an IPv6 address without brackets
    port: int
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # no credentials, in a log or a traceback either
        return f"ProxySpec(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r})"

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def socks(self) -> bool:
        return self.scheme.startswith("socks")

    @property
    def remote_dns(self) -> bool:
        """Whether the proxy, not crawler, resolves the target's name (HTTP proxies
        always; SOCKS only as socks5h)."""
        return self.scheme != "socks5"


def redact(text: str) -> str:
    """A proxy URL as a message may show it: a password replaced by ``***``."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return text
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{hostpart}"


def parse_proxy(text: str) -> ProxySpec:
    """A proxy URL (``[scheme://][user:password@]host[:port]``; http:// if no scheme, as
    curl), or ValueError saying what is wrong (the password never shown)."""
    given = text.strip()
    shown = redact(given)
    if not given:
        raise ValueError("invalid proxy '': empty")
    candidate = given if "://" in given else f"http://{given}"
    try:
        url = URL(candidate)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"invalid proxy {shown!r}: {exc}") from None
    scheme = url.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported proxy scheme {scheme!r} in {shown!r}: "
            "expected http, https, socks5 or socks5h"
        )
    host = url.raw_host
    if not host:
        raise ValueError(f"invalid proxy {shown!r}: no host")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError(f"invalid proxy {shown!r}: a proxy URL has no path or query")
    if url.explicit_port is None:
        port = _DEFAULT_PORTS[scheme]
    if port is None or not 0 < port < 65536:
        raise ValueError(f"invalid proxy {shown!r}: bad port")
    return ProxySpec(scheme, host, port, url.user, url.password)


class Bypass:
    """A ``--noproxy`` / ``NO_PROXY`` list, matched as curl does: ``*`` alone matches
    every host; a name matches itself and its subdomains (a leading dot is ignored:
    ``example.com`` and ``.example.com`` both match ``www.example.com``); an IP address
    or CIDR range matches the addresses in it. Ports are not compared."""

    __slots__ = ("everything", "names", "networks")

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: tuple[str, ...] = ()
        self.networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self.everything = False
        names: list[str] = []
        networks = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.everything = True
                continue
            entry = entry.removeprefix("[").replace("]", "")
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lstrip(".").rstrip(".")
            name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name  # host:port
            if name:
                names.append(name)
        self.names, self.networks = tuple(names), tuple(networks)

    def __bool__(self) -> bool:
        return self.everything or bool(self.names) or bool(self.networks)

    def __call__(self, host: str) -> bool:
        """Whether requests to ``host`` (a URL's raw host) go direct."""
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        if self.networks:
            try:
                ip = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                pass
            else:
                return any(ip in net for net in self.networks)
        return any(host == n or host.endswith("." + n) for n in self.names)


def parse_noproxy(text: str) -> tuple[str, ...]:
    """A comma list (``--noproxy``, ``NO_PROXY``) as its entries."""
    return tuple(e.strip() for e in text.split(",") if e.strip())


class Proxy:
    """One proxy of a pool: its spec and its breaker (its health, apart from the hosts')."""

    __slots__ = ("breaker", "key", "spec")

    def __init__(self, spec: ProxySpec, breaker: Breaker) -> None:
        self.spec = spec
        self.breaker = breaker
        self.key = spec.name.encode()


class Pool:
    """Proxies one target host chooses among, by rendezvous hashing: the host's ranking
    of the proxies is fixed (a hash of host and proxy), and it goes through the first one
    whose breaker lets it. A benched proxy's hosts move to their next choice; when it is
    back (its half-open probe succeeded) they return to it."""

    def __init__(self, specs: Iterable[ProxySpec], breaker: Callable[[], Breaker]) -> None:
        self.proxies = tuple(Proxy(spec, breaker()) for spec in specs)
        self._rank = functools.lru_cache(maxsize=4096)(self._ranking)

    def _ranking(self, host: str) -> tuple[Proxy, ...]:
        if len(self.proxies) == 1:
            return self.proxies
        raw = host.encode()

        def score(proxy: Proxy) -> bytes:
            return hashlib.blake2b(raw + b"\0" + proxy.key, digest_size=8).digest()

        return tuple(sorted(self.proxies, key=score, reverse=True))

    def pick(self, host: str) -> Proxy:
        """The proxy for ``host``. Its breaker's ``allow()`` said yes: the caller must
        ``record`` the outcome (or ``release_probe``). NoLiveProxy if every one is benched."""
        ranking = self._rank(host)
        for proxy in ranking:
            if proxy.breaker.allow():
                return proxy
        benched = [p for p in ranking if p.breaker.state is not State.CLOSED]
        last = max(benched, key=lambda p: p.breaker.opened_at) if benched else ranking[0]
        many = f"all {len(ranking)} proxies are" if len(ranking) > 1 else "the proxy is"
        raise NoLiveProxy(f"{many} benched ({last.spec.name} {last.breaker.reason()})")
