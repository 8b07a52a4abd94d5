"""Per-host overrides (the config file's ``[hosts."example.com"]`` tables, the Python
API's ``hosts={...}``): ``HostSettings`` for one pattern, ``HostOverrides`` for all, and
``find``, the one way a host is matched.

A pattern is a host name or IP address (``example.com``, ``127.0.0.2``), optionally with a
port (``example.com:8443``: that port only), or ``*.`` and a domain (``*.example.com``:
every subdomain of it, at any depth, not ``example.com`` itself). The most specific
pattern wins, and only it applies (settings are not merged across patterns): host:port,
then the host, then the longest ``*.`` domain. Names are compared lower-case, IDNA-encoded,
without a trailing dot, as the limiter's host key spells them.

Each component asks once per host (the limiter when it creates a host's state, the
fetcher once per host name, cached), never per URL, and only if the run has overrides.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Final

from msgspec import Struct

# Keys of a [hosts."..."] table, by their Python names.
SETTINGS: Final = ("per_host", "per_host_rps", "headers", "proxy")


class HostSettings(Struct, frozen=True, kw_only=True):
    """One pattern's overrides; None (or no headers): the run's own setting applies."""

    per_host: int | None = None  # max in flight to the host (0: only the -c limit)
    per_host_rps: float | None = None  # its requests/second (0: not paced)
    headers: tuple[tuple[str, str], ...] = ()  # sent to the host only, never after a
    # redirect to another origin (as -H credentials are)
    proxy: str | None = None  # the host's proxy URL ("": direct, whatever the run's proxy)

    @property
    def limits(self) -> bool:
        return self.per_host is not None or self.per_host_rps is not None

    @property
    def requests(self) -> bool:
        return bool(self.headers) or self.proxy is not None


def _normal_pattern(pattern: str) -> str:
    """``pattern`` as ``find`` compares it; ValueError if it names no host."""
    from yarl import URL

    text = pattern.strip().lower().rstrip(".")
    wild = text.startswith("*.")
    body = text[2:] if wild else text
    host, port = body, ""
    if body.startswith("["):  # [v6] or [v6]:port
        host, _, rest = body[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else rest
    elif body.count(":") == 1:
        host, port = body.split(":")
    try:
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError
        raw = URL.build(scheme="http", host=host).raw_host if host else None
    except ValueError:
        raw = None
    if not raw or "*" in raw or (wild and ":" in raw):
        raise ValueError(
            f"invalid host pattern {pattern!r}: expected a host, host:port or *.domain"
        )
    return f"{'*.' if wild else ''}{raw}{':' + str(int(port)) if port else ''}"


class HostOverrides(Mapping[str, HostSettings]):
    """Patterns and their settings (read-only; equal when their rules are)."""

    __slots__ = ("_find", "_rules")

    def __init__(self, rules: Mapping[str, HostSettings] | None = None) -> None:
        normal: dict[str, HostSettings] = {}
        for pattern, settings in (rules or {}).items():
            key = _normal_pattern(pattern)
            if key in normal:
                raise ValueError(f"host pattern {pattern!r} is given twice")
            normal[key] = settings
        self._rules = normal
        self._find = functools.lru_cache(maxsize=4096)(self._lookup)

    def __getitem__(self, pattern: str) -> HostSettings:
        return self._rules[pattern]

    def __reduce__(self) -> tuple[type[HostOverrides], tuple[dict[str, HostSettings]]]:
        # Sent to the workers of --workers N (pickled): its rules, not its lookup cache.
        return (type(self), (dict(self._rules),))

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostOverrides):
            return NotImplemented
        return self._rules == other._rules

    def __hash__(self) -> int:
        return hash(tuple(self._rules.items()))

    def __repr__(self) -> str:
        return f"HostOverrides({self._rules!r})"

    @property
    def limits(self) -> bool:
        """Whether any pattern overrides a limit (the limiter looks then)."""
        return any(s.limits for s in self._rules.values())

    @property
    def requests(self) -> bool:
        """Whether any pattern adds headers or a proxy (the fetcher looks then)."""
        return any(s.requests for s in self._rules.values())

    @property
    def paced(self) -> bool:
        return any(s.per_host_rps for s in self._rules.values())

    @property
    def proxied(self) -> bool:
        return any(s.proxy for s in self._rules.values())

    def find(self, host: str, port: int | None = None) -> HostSettings | None:
        """The settings of the most specific pattern matching ``host`` (a URL's raw host)
        on ``port``, or None."""
        return self._find(host, port)

    def find_key(self, key: str) -> HostSettings | None:
        """``find`` for a limiter host key (``host:port``, crawler.urls.host_key)."""
        host, _, port = key.rpartition(":")
        return self._find(host, int(port) if port.isdigit() else None)

    def _lookup(self, host: str, port: int | None) -> HostSettings | None:
        rules = self._rules
        name = host.lower().rstrip(".")
        if port is not None:
            shown = f"[{name}]" if ":" in name else name
            found = rules.get(f"{shown}:{port}")
            if found is not None:
                return found
        found = rules.get(name)
        if found is not None or ":" in name:
            return found
        rest = name
        while "." in rest:
            rest = rest.partition(".")[2]
            found = rules.get(f"*.{rest}")
            if found is not None:
                return found
        return None
