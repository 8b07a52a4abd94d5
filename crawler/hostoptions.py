"""``hosts``, as given (a config file's ``[hosts."..."]`` tables, the Python API's
``hosts={...}``), checked and made into ``crawler.hostrules.HostOverrides``: a bad pattern
or value is a ValueError naming it."""

from __future__ import annotations

from collections.abc import Mapping

from crawler.config import _header_problem, _non_negative
from crawler.hostrules import SETTINGS, HostOverrides, HostSettings
from crawler.proxies import parse_proxy


def host_settings(where: str, value: object) -> HostSettings:
    """One ``[hosts."..."]`` table (a mapping by the options' names, ``-`` or ``_``) as
    HostSettings; ValueError naming ``where`` (``hosts."example.com"``) and the key."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table of settings, got {value!r}")
    found: dict[str, object] = {}
    for raw_key, item in value.items():
        key = str(raw_key).replace("-", "_")
        if key not in SETTINGS:
            raise ValueError(f"unknown key {where}.{raw_key} (known: {', '.join(SETTINGS)})")
        found[key] = item
    per_host = found.get("per_host")
    if per_host is not None and (
        isinstance(per_host, bool) or not isinstance(per_host, int) or per_host < 0
    ):
        raise ValueError(f"{where}.per_host must be an int >= 0, got {per_host!r}")
    rps = found.get("per_host_rps")
    if rps is not None:
        if isinstance(rps, bool) or not isinstance(rps, int | float):
            raise ValueError(f"{where}.per_host_rps must be a number >= 0, got {rps!r}")
        rps = float(rps)
        _non_negative(f"{where}.per_host_rps", rps)  # a ConfigError, so a ValueError
    headers = found.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ValueError(f"{where}.headers must be a table of name = value, got {headers!r}")
    pairs = []
    for name, text in headers.items():
        if not isinstance(text, str):
            raise ValueError(f"{where}.headers.{name} must be a string, got {text!r}")
        problem = _header_problem(str(name), text)
        if problem is not None:
            raise ValueError(f"invalid {where}.headers.{name}: {problem}")
        pairs.append((str(name), text.strip(" \t")))
    proxy = found.get("proxy")
    if proxy is not None:
        if not isinstance(proxy, str):
            raise ValueError(f"{where}.proxy must be a proxy URL, got {proxy!r}")
        if proxy:
            try:
                parse_proxy(proxy)
            except ValueError as exc:
                raise ValueError(f"{where}.proxy: {exc}") from None
    return HostSettings(
        per_host=per_host,
        per_host_rps=rps,
        headers=tuple(pairs),
        proxy=proxy,
    )


def host_overrides(value: object) -> HostOverrides:
    """``hosts``: a mapping of patterns to settings tables (or to HostSettings), or a
    HostOverrides; ValueError saying which pattern and key is wrong."""
    if isinstance(value, HostOverrides):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"hosts must be a table of host patterns, got {value!r}")
    rules = {}
    for pattern, settings in value.items():
        where = f'hosts."{pattern}"'
        if not isinstance(pattern, str):
            raise ValueError(f"hosts: a host pattern must be a string, got {pattern!r}")
        if isinstance(settings, HostSettings):
            rules[pattern] = settings
        else:
            rules[pattern] = host_settings(where, settings)
    return HostOverrides(rules)
