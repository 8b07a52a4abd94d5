"""The options of a run, by the command line's names in Python spelling (``--per-host-rps``
is ``per_host_rps``), and ``run_config``: the one way they become a validated RunConfig,
for the Python API and the command line alike.

Values are checked here only for their type and shape (a header given as ``Name: value``);
whether a value is allowed is the config slices' ``__post_init__``'s to say, so a check is
written once and a bad value is a ``ConfigError`` whichever way it came in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypedDict

from crawler.config import (
    BreakerConfig,
    ConfigError,
    CrawlConfig,
    FetchConfig,
    InputConfig,
    LimitConfig,
    RetryConfig,
    RunConfig,
    SinkConfig,
    StoreConfig,
)


class _SharedOptions(TypedDict, total=False):
    concurrency: int
    per_host: int
    rps: float
    per_host_rps: float
    burst: int
    adaptive: bool
    retries: int
    timeout: float
    connect_timeout: float
    max_redirects: int
    max_bytes: int
    queue_size: int
    header: Mapping[str, str] | Iterable[str]  # {"Name": "value"} or ["Name: value"]
    secret_header: Iterable[str]
    user_agent: str
    breaker_threshold: int
    breaker_cooldown: float
    insecure: bool
    grace: float
    block_private: bool
    resolve: Iterable[str]
    save_dir: str | os.PathLike[str]
    warc: str | os.PathLike[str]
    warc_max_size: int
    proxy: str
    proxy_file: str | os.PathLike[str]
    noproxy: str | Iterable[str]  # "a.com,b.com" or ["a.com", "b.com"]; "*": every host
    scheme_proxy: Mapping[str, str]  # {"http"|"https"|"all": proxy URL}; used without proxy
    cookies: bool  # default: off for a fetch, on for a crawl
    cookie: Iterable[str]  # ["name=value", "a=1; b=2"]
    cookie_jar: str | os.PathLike[str]
    cacert: str | os.PathLike[str]
    cert: str | os.PathLike[str]
    key: str | os.PathLike[str]
    etags: str | os.PathLike[str]
    max_time: float
    include_headers: bool
    include_request: bool
    include_body: bool
    no_follow: bool
    verbose: bool
    retry_on: str | Iterable[int]  # "429,503" or [429, 503]; "" or []: errors only
    backoff: str | tuple[float, float]  # "BASE,MAX" or (BASE, MAX), seconds
    # Per-host overrides (crawler.hostrules): {"example.com": {"per_host": 2,
    # "per_host_rps": 0.5, "headers": {"Name": "value"}, "proxy": "http://..."}}
    hosts: Mapping[str, Mapping[str, object]]
    workers: int | str  # worker processes, hosts sharded among them; "auto": usable cores


class FetchOptions(_SharedOptions, total=False):
    """``crawler fetch``'s options, by their Python names."""

    method: str
    no_dedup: bool
    data: str | bytes  # --data: the body of every plain line's request (default POST)
    json: object  # --json: JSON text (a str), or a value to encode; Content-Type too
    retry_unsafe: bool  # --retry-unsafe: retry POST, PATCH, ... after they were sent


class CrawlOptions(_SharedOptions, total=False):
    """``crawler crawl``'s options, by their Python names."""

    scope: str
    include: Iterable[str]
    exclude: Iterable[str]
    depth: int
    max_pages: int
    assets: bool
    ignore_robots: bool
    sitemaps: bool
    sitemap: Iterable[str]


class RunControls(TypedDict, total=False):
    """How a Python API run is driven, beside its config (the command line always does
    both its own way: ``--state PATH``, and Ctrl-C handled)."""

    state: str | os.PathLike[str]  # ``--state``: the resume file
    handle_signals: bool  # SIGINT/SIGTERM stop the run, as they stop the CLI's


class FetchRun(FetchOptions, RunControls, total=False):
    """``crawler.fetch()``'s keyword arguments."""


class CrawlRun(CrawlOptions, RunControls, total=False):
    """``crawler.crawl()``'s keyword arguments."""


# option -> (config slice, field, expected type, negated); each slice's __post_init__
# validates the value, and its defaults are the ones every interface shares.
_FIELDS: Final[dict[str, tuple[str, str, type, bool]]] = {
    "concurrency": ("limits", "concurrency", int, False),
    "per_host": ("limits", "per_host", int, False),
    "rps": ("limits", "rps", float, False),
    "per_host_rps": ("limits", "per_host_rps", float, False),
    "burst": ("limits", "burst", int, False),
    "adaptive": ("limits", "adaptive", bool, False),
    "queue_size": ("limits", "queue_size", int, False),
    "retries": ("retry", "retries", int, False),
    "retry_unsafe": ("fetch", "retry_unsafe", bool, False),
    "timeout": ("retry", "timeout", float, False),
    "breaker_threshold": ("breaker", "threshold", int, False),
    "breaker_cooldown": ("breaker", "cooldown", float, False),
    "connect_timeout": ("fetch", "connect_timeout", float, False),
    "max_redirects": ("fetch", "max_redirects", int, False),
    "max_bytes": ("fetch", "max_bytes", int, False),
    "user_agent": ("fetch", "user_agent", str, False),
    "insecure": ("fetch", "verify_tls", bool, True),
    "block_private": ("fetch", "block_private", bool, False),
    "cookies": ("fetch", "cookies", bool, False),
    "no_dedup": ("input", "dedup", bool, True),
    "warc_max_size": ("store", "warc_max_size", int, False),
    "scope": ("crawl", "scope", str, False),
    "depth": ("crawl", "max_depth", int, False),
    "max_pages": ("crawl", "max_pages", int, False),
    "assets": ("crawl", "assets", bool, False),
    "ignore_robots": ("crawl", "obey_robots", bool, True),
    "sitemaps": ("crawl", "sitemaps", bool, False),
    "include_headers": ("fetch", "include_headers", bool, False),
    "include_request": ("fetch", "include_request", bool, False),
    "include_body": ("fetch", "include_body", bool, False),
    "no_follow": ("fetch", "no_follow", bool, False),
    "verbose": ("fetch", "verbose", bool, False),
}


_SESSION_FILES: Final = ("cookie_jar", "cacert", "cert", "key", "etags")


def _typed(name: str, value: object, kind: type) -> Any:
    """``value`` if it has the option's type (an int does for a float; a bool is not a
    number here), else a ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")


def _strings(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{name} must be a list of strings, got {item!r}")
    return items


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """``{"Name": "value"}`` or ``["Name: value", ...]`` (the CLI's ``-H``)."""
    if isinstance(value, Mapping):
        pairs = [(_typed("header", k, str), _typed("header", v, str)) for k, v in value.items()]
    else:
        pairs = []
        for line in _strings("header", value):
            name, sep, text = line.partition(":")
            if not sep:
                raise ConfigError(
                    f"invalid header {line!r}: expected 'Name: value'", option="header"
                )
            pairs.append((name, text))
    return tuple((name.strip(" \t"), text.strip(" \t")) for name, text in pairs)


def _proxy_option(fetch: dict[str, Any], name: str, value: object) -> None:
    """--proxy, --proxy-file (one proxy URL a line, # comments), --noproxy, and the
    proxies the CLI read from the environment (used only without the other two)."""
    from crawler.proxies import parse_noproxy

    if name == "proxy":
        if "proxies" in fetch:
            raise ConfigError("proxy and proxy_file cannot be combined", option="proxy")
        fetch["proxies"] = (_typed(name, value, str),)
    elif name == "proxy_file":
        if "proxies" in fetch:
            raise ConfigError("proxy and proxy_file cannot be combined", option="proxy")
        if not isinstance(value, str | os.PathLike):
            raise ConfigError(f"proxy_file must be a path, got {value!r}")
        path = os.fspath(value)
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                f"cannot read proxy_file {path!r}: {reason}", option="proxy_file"
            ) from None
        proxies = tuple(line for line in lines if line and not line.startswith("#"))
        if not proxies:
            raise ConfigError(f"proxy_file {path!r} has no proxy in it", option="proxy_file")
        fetch["proxies"] = proxies
    elif name == "noproxy":
        entries = parse_noproxy(value) if isinstance(value, str) else _strings(name, value)
        fetch["noproxy"] = entries
    elif isinstance(value, Mapping):
        pairs = tuple((_typed(name, k, str), _typed(name, v, str)) for k, v in value.items())
        fetch["scheme_proxies"] = pairs
    else:
        raise ConfigError(f"scheme_proxy must be a mapping, got {value!r}")


def _retry_on(value: object) -> frozenset[int]:
    """``--retry-on``: "429,503" (the CLI's) or a list of ints; empty: no status is retried."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")] if value.strip() else []
        statuses = []
        for part in parts:
            if not part.isascii() or not part.isdigit():
                raise ConfigError(
                    f"invalid retry_on {value!r}: expected status codes like 429,503",
                    option="retry_on",
                )
            statuses.append(int(part))
        return frozenset(statuses)
    if not isinstance(value, Iterable):
        raise ConfigError(f"retry_on must be a list of status codes, got {value!r}")
    return frozenset(_typed("retry_on", v, int) for v in value)


def _backoff(value: object) -> tuple[float, float]:
    """``--backoff BASE,MAX`` (or a (BASE, MAX) pair): seconds, both > 0, MAX >= BASE."""
    shown = value
    if isinstance(value, str):
        parts: list[object] = []
        for part in value.split(","):
            try:
                parts.append(float(part))
            except ValueError:
                raise ConfigError(
                    f"invalid backoff {shown!r}: expected BASE,MAX (seconds)", option="backoff"
                ) from None
        value = parts
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(f"invalid backoff {shown!r}: expected BASE,MAX", option="backoff")
    base, cap = (_typed("backoff", v, float) for v in value)
    if not (0 < base < math.inf and 0 < cap < math.inf):
        raise ConfigError(
            f"invalid backoff {shown!r}: BASE and MAX must be numbers > 0", option="backoff"
        )
    if cap < base:
        raise ConfigError(f"invalid backoff {shown!r}: MAX must be >= BASE", option="backoff")
    return base, cap


def run_config(
    options: Mapping[str, object], *, crawl: bool, sink: SinkConfig | None = None
) -> RunConfig:
    """The RunConfig for ``options`` (a command's options by their Python names; one not
    given takes the config field's default), of a crawl if ``crawl``; records go where
    ``sink`` says (the Python API takes them from a channel instead).

    A bad value raises ConfigError; an option a fetch or crawl does not take, TypeError."""
    from crawler.netpolicy import parse_resolve

    allowed = (CrawlOptions if crawl else FetchOptions).__optional_keys__
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unexpected option {unknown[0]!r}")
    slices: dict[str, dict[str, Any]] = {
        name: {} for name in ("input", "limits", "retry", "breaker", "fetch", "store", "crawl")
    }
    run: dict[str, Any] = {}
    for name, value in options.items():
        if name in _FIELDS:
            where, field_name, kind, negated = _FIELDS[name]
            checked = _typed(name, value, kind)
            slices[where][field_name] = not checked if negated else checked
        elif name in ("grace", "max_time"):
            run[name] = _typed(name, value, float)
        elif name == "workers":
            run["workers"] = _workers(value)
        elif name == "retry_on":
            slices["retry"]["retry_on"] = _retry_on(value)
        elif name == "backoff":
            base, cap = _backoff(value)
            slices["retry"]["backoff_base"], slices["retry"]["backoff_cap"] = base, cap
        elif name == "header":
            slices["fetch"]["headers"] = _headers(value)
        elif name == "secret_header":
            slices["fetch"]["secret_headers"] = tuple(n.strip() for n in _strings(name, value))
        elif name == "resolve":
            try:
                resolved = tuple(parse_resolve(r) for r in _strings(name, value))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            slices["fetch"]["resolve"] = resolved
        elif name in ("proxy", "proxy_file", "noproxy", "scheme_proxy"):
            _proxy_option(slices["fetch"], name, value)
        elif name in ("save_dir", "warc"):
            if not isinstance(value, str | os.PathLike):
                raise ConfigError(f"{name} must be a path, got {value!r}")
            slices["store"][name] = os.fspath(value)
        elif name in _SESSION_FILES:
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                raise ConfigError(f"{name} must be a path, got {value!r}")
            slices["fetch"][name] = os.fspath(value)
        elif name == "cookie":
            # curl -b "a=1; b=2" gives two cookies: so does one --cookie.
            pairs = (p.strip() for text in _strings(name, value) for p in text.split(";"))
            slices["fetch"]["cookie"] = tuple(p for p in pairs if p)
        elif name == "hosts":
            from crawler.hostoptions import host_overrides

            try:
                overrides = host_overrides(value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            slices["limits"]["hosts"] = slices["fetch"]["hosts"] = overrides
        elif name in ("include", "exclude"):
            slices["crawl"][name] = _strings(name, value)
        elif name == "sitemap":
            urls = _strings(name, value)
            slices["crawl"]["sitemap_urls"] = urls
            if urls:
                slices["crawl"]["sitemaps"] = True
    if not crawl:
        _request_options(options, slices["fetch"])
    fetch = slices["fetch"]
    if "cookies" not in fetch:
        # As Scrapy: a crawl keeps its cookies, a fetch of a list does not; a jar file
        # to load and save turns the jar on (as curl -c does).
        fetch["cookies"] = crawl or "cookie_jar" in fetch
    if "proxies" in slices["fetch"]:
        slices["fetch"].pop("scheme_proxies", None)  # --proxy overrides the environment
    limits = LimitConfig(**slices["limits"])
    if run.get("workers", 1) > limits.concurrency:  # -c is a total: a worker takes one at least
        run["workers"] = limits.concurrency
    return RunConfig(
        input=InputConfig(**slices["input"]),
        limits=limits,
        retry=RetryConfig(**slices["retry"]),
        breaker=BreakerConfig(**slices["breaker"]),
        fetch=FetchConfig(**slices["fetch"]),
        store=StoreConfig(**slices["store"]),
        crawl=CrawlConfig(**slices["crawl"]) if crawl else None,
        sink=sink if sink is not None else SinkConfig(),
        **run,
    )


def _request_options(options: Mapping[str, object], fetch: dict[str, Any]) -> None:
    """``method``, ``data`` and ``json`` into the fetch slice: with a body the method is
    POST unless given; ``json`` is checked and adds ``Content-Type: application/json``
    unless a header gives one."""
    import orjson

    from crawler.request import check_method

    if "method" in options:
        try:
            fetch["method"] = check_method(_typed("method", options["method"], str))
        except ValueError as exc:
            raise ConfigError(str(exc), option="method") from None
    if "data" in options and "json" in options:
        raise ConfigError("data and json cannot both be given", option="data")
    if "data" in options:
        data = options["data"]
        if not isinstance(data, str | bytes):
            raise ConfigError(f"data must be str or bytes, got {data!r}")
        fetch["body"] = _encoded(data)
    elif "json" in options:
        value = options["json"]
        if isinstance(value, str | bytes):
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"json is not valid JSON: {exc}", option="json") from None
            fetch["body"] = _encoded(value)
        else:
            try:
                fetch["body"] = orjson.dumps(value)
            except TypeError as exc:
                raise ConfigError(f"json cannot be encoded as JSON: {exc}") from None
        headers = fetch.get("headers", ())
        if not any(name.lower() == "content-type" for name, _ in headers):
            fetch["body_type"] = "application/json"
    if "body" in fetch and "method" not in fetch:
        fetch["method"] = "POST"  # as curl -d does


def _encoded(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text


def run_controls(options: Mapping[str, object]) -> tuple[dict[str, object], str | None, bool]:
    """``options`` without the RunControls (for ``run_config``), the state path and
    ``handle_signals``, each checked for its type; ``state`` by the rules of ``--state``
    (see ``crawler.runner.check_run_paths`` for its path)."""
    rest = {k: v for k, v in options.items() if k not in RunControls.__optional_keys__}
    state = options.get("state")
    if state is not None:
        if not isinstance(state, str | os.PathLike):
            raise ConfigError(f"state must be a path, got {state!r}")
        state = os.fspath(state)
        if not isinstance(state, str) or not state:
            raise ConfigError(f"state must be a path, got {options['state']!r}")
        if options.get("no_dedup"):
            raise ConfigError("state cannot be combined with no_dedup: resume is keyed by URL")
    handle_signals = _typed("handle_signals", options.get("handle_signals", False), bool)
    return rest, state, handle_signals


def _workers(value: object) -> int:
    """``N`` or ``"auto"``: the cores this process may use."""
    if value == "auto":
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(f"workers must be a number >= 1 or 'auto', got {value!r}", option="workers")
