"""Which addresses requests may reach: ``--block-private`` and ``--resolve``.

The check runs on the addresses a connection will actually use: for host names, inside
the resolver, after DNS (so neither a redirect to an internal name nor DNS rebinding can
reach a blocked address); for IP literals, which aiohttp never hands to the resolver, on
every hop before the request is sent (``AddressPolicy.check_url``).
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from msgspec import Struct
from yarl import URL

from crawler.errors import Blocked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not globally routable, yet ``is_global`` says they are (Python 3.11): IETF protocol
# assignments, the deprecated 6to4 relay anycast and IPv6 site-local ranges, local-use
# NAT64, IPv4-compatible IPv6 (::a.b.c.d). Multicast is refused apart (``is_multicast``).
_NOT_GLOBAL: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.0/24",
        "192.88.99.0/24",
        "fec0::/10",
        "64:ff9b:1::/48",
        "::/96",
    )
)
_NAT64: ipaddress.IPv6Network = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for: IPv4-mapped (::ffff:a.b.c.d), 6to4
    (2002::/16) or NAT64 (64:ff9b::/96); None for any other."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _not_global(ip: IPAddress) -> bool:
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_link_local
        or ip.is_loopback
        or any(ip.version == net.version and ip in net for net in _NOT_GLOBAL)
    )


def unroutable(ip: IPAddress) -> bool:
    """True for every address that is not globally routable, an IPv6 form of such an
    IPv4 address included (``--block-private`` refuses them all)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:  # it reaches that IPv4 address (Python calls 64:ff9b:: reserved)
            return _not_global(inner)
        if ip.teredo is not None:  # a Teredo client: refused if its IPv4 address is
            return _not_global(ip) or _not_global(ip.teredo[1])
    return _not_global(ip)


class AddressPolicy(Struct, frozen=True, kw_only=True):
    """``block_private`` refuses every address that is not globally routable (see
    ``unroutable``: loopback, private, shared (100.64/10), link-local, multicast, reserved,
    unspecified, and their IPv4-mapped, 6to4, NAT64 and Teredo forms). ``allow_only``
    (networks, used by the tests) refuses every address outside them. ``resolve`` maps
    host names (``*`` = any) to fixed addresses."""

    block_private: bool = False
    allow_only: tuple[str, ...] = ()
    resolve: tuple[tuple[str, str], ...] = ()

    @property
    def active(self) -> bool:
        return self.block_private or bool(self.allow_only) or bool(self.resolve)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be reached, or None if it may."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if self.block_private and unroutable(ip):
            return f"{ip} is not a globally routable address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.allow_only and not any(
            ip in ipaddress.ip_network(net, strict=False) for net in self.allow_only
        ):
            return f"{ip} is outside the allowed networks"
        return None

    def check_url(self, url: URL) -> None:
        """Refuse a URL whose host is an IP literal the policy does not allow."""
        host = url.raw_host
        if not host or not self.active:
            return
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # a name: checked after resolution
        reason = self.refusal(host)
        if reason is not None:
            raise Blocked(f"blocked: {reason}")

    def check_remote_url(self, url: URL) -> None:
        """``check_url`` for a request whose proxy resolves the name (an HTTP proxy,
        socks5h): the addresses behind a name are never seen here, so only IP literals
        and the names that always mean this machine (``localhost``, ``*.localhost``,
        RFC 6761) can be refused."""
        self.check_url(url)
        host = (url.raw_host or "").lower().rstrip(".")
        if self.block_private and (host == "localhost" or host.endswith(".localhost")):
            raise Blocked(f"blocked: {host} is this machine's own name")

    def override(self, host: str) -> str | None:
        for name, address in self.resolve:
            if name == "*" or name.lower() == host.lower():
                return address
        return None


class PolicyResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver (or ``--resolve``), then drops the
    addresses the policy refuses; if none is left the request fails as ``blocked``."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._inner: AbstractResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        fixed = self._policy.override(host)
        if fixed is not None:
            fam = socket.AF_INET6 if ":" in fixed else socket.AF_INET
            results: list[ResolveResult] = [
                ResolveResult(
                    hostname=host,
                    host=fixed,
                    port=port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        else:
            if self._inner is None:
                self._inner = DefaultResolver()
            results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.refusal(r["host"]) is None]
        if not allowed:
            reason = self._policy.refusal(results[0]["host"]) if results else "no address"
            raise Blocked(f"blocked: {host} resolves to {reason}")
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def parse_resolve(text: str) -> tuple[str, str]:
    """``NAME:ADDRESS`` (``*`` for any name); the address may be IPv6 (``h:[::1]``)."""
    name, sep, address = text.partition(":")
    address = address.strip().removeprefix("[").removesuffix("]")
    if not sep or not name.strip() or not address:
        raise ValueError(f"invalid --resolve {text!r}: expected NAME:ADDRESS")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"invalid --resolve {text!r}: {address!r} is not an IP address") from None
    return name.strip(), address
