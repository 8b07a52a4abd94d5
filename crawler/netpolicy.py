"""Which addresses requests may reach: ``--block-private`` and ``--resolve``.

The check runs on the addresses a connection will actually use: for host names, inside
the resolver, after DNS (so neither a redirect to an internal name nor DNS rebinding can
reach a blocked address); for IP literals, which aiohttp never hands to the resolver, on
every hop before the request is sent (``AddressPolicy.check_url``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from crawler.errors import Blocked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressPolicy:
    """``block_private`` refuses loopback, private, link-local, multicast, reserved and
    unspecified addresses. ``allow_only`` (networks, used by the tests) refuses every
    address outside them. ``resolve`` maps host names (``*`` = any) to fixed addresses."""

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
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.allow_only and not any(
            ip in ipaddress.ip_network(net, strict=False) for net in self.allow_only
        ):
            return f"{ip} is outside the allowed networks"
        if self.block_private and (
            ip.is_private
            or ip.is_loopback
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_reserved
            or ip.is_unspecified
        ):
            return f"{ip} is a private, loopback, link-local or reserved address"
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
