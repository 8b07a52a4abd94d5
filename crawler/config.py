"""Frozen configuration slices, one per component, validated on creation.

Built once per run, by ``crawler.options.run_config`` (for the command line and the Python
API alike); every component receives only its own slice. Nothing below the CLI reads the
environment.
"""

from __future__ import annotations

import math
import re
from typing import Any

from msgspec import NODEFAULT, Struct, field

from crawler import __version__
from crawler.errors import CrawlerError
from crawler.hostrules import HostOverrides
from crawler.retry import RETRY_STATUSES


def field_defaults(cls: type[Struct]) -> dict[str, Any]:
    """A slice's fields that have a plain default (not a factory), by name: the one place a
    default is written is the class. (``msgspec.structs.fields`` says the same, but resolves
    every annotation first: a cost at every start.)"""
    names = cls.__struct_fields__[len(cls.__struct_fields__) - len(cls.__struct_defaults__) :]
    return {
        name: value
        for name, value in zip(names, cls.__struct_defaults__, strict=True)
        if value is not NODEFAULT and not callable(getattr(value, "factory", None))
    }


DEFAULT_USER_AGENT = f"crawler/{__version__} (+https://github.com/crawler-dev/crawler)"


class ConfigError(CrawlerError, ValueError):
    """A configuration value is out of range; the CLI turns it into exit status 2.

    ``option``, when set, is the option the value came in as, by its Python name, and the
    first place the message names it: ``naming()`` gives the message with it spelled the
    way the user typed it (``--secret-header`` on the command line)."""

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option

    def naming(self, spelling: str) -> str:
        """The message, its option named ``spelling``."""
        if self.option is None:
            return str(self)
        return str(self).replace(self.option, spelling, 1)


# RFC 9110: a header name is a token; a value has no control characters but tab (each of
# them makes every request fail; CR/LF would inject headers).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A GET has no body: a framing header of our own would desynchronise the connection.
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "upgrade"))
# One cookie given as --cookie: a token name, "=", a value without separators (RFC 6265).
_COOKIE_PAIR = re.compile(
    r"[!#$%&'*+.^_`|~0-9A-Za-z-]+=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
)


def _header_problem(name: str, value: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return "expected 'Name: value'"
    if name.lower() in _FRAMING_HEADERS:
        return f"{name} is set by crawler itself"
    if _CONTROL.search(value):
        return "control characters in value"
    return None


# Each unit of concurrency is a worker task; past this, more would only exhaust memory
# and file descriptors (a typo of a few digits must not take the machine down).
MAX_CONCURRENCY = 65_536


def _positive(name: str, value: float) -> None:
    # inf/nan are refused: "forever" has its own spelling (0) where it makes sense, and
    # an infinite timeout or rate overflows where it is turned into an integer.
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


class InputConfig(Struct, frozen=True, kw_only=True):
    """How the URL list is read and deduplicated."""

    dedup: bool = True
    max_line_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        _positive("max_line_bytes", self.max_line_bytes)


class LimitConfig(Struct, frozen=True, kw_only=True):
    """Concurrency and pacing: global, per host, and the adaptive controller."""

    concurrency: int = 64
    per_host: int = 8  # 0 means no per-host limit beyond the global one
    rps: float = 0.0  # 0 means no cap
    per_host_rps: float = 0.0
    # Requests that may start at once under --rps / --per-host-rps (1: never two closer
    # than 1/rate s). robots.txt's Crawl-delay always paces with burst 1.
    burst: int = 1
    adaptive: bool = False
    queue_size: int = 1000
    # Per-host per_host / per_host_rps (crawler.hostrules), looked up once per host state.
    hosts: HostOverrides = field(default_factory=HostOverrides)

    def __post_init__(self) -> None:
        _positive("concurrency", self.concurrency)
        if self.concurrency > MAX_CONCURRENCY:
            raise ConfigError(f"concurrency must be <= {MAX_CONCURRENCY}, got {self.concurrency}")
        _non_negative("per_host", self.per_host)
        _non_negative("rps", self.rps)
        _non_negative("per_host_rps", self.per_host_rps)
        _positive("burst", self.burst)
        _positive("queue_size", self.queue_size)

    @property
    def host_limit(self) -> int:
        """The effective per-host cap: never more than the global one."""
        if self.per_host == 0:
            return self.concurrency
        return min(self.per_host, self.concurrency)


class RetryConfig(Struct, frozen=True, kw_only=True):
    """Retries share one deadline per URL with every attempt and back-off wait."""

    retries: int = 2
    timeout: float = 30.0  # the URL's deadline, from its first attempt
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    # The statuses retried (--retry-on); empty: only errors (connect, timeout) are.
    retry_on: frozenset[int] = RETRY_STATUSES

    def __post_init__(self) -> None:
        _non_negative("retries", self.retries)
        _positive("timeout", self.timeout)
        _non_negative("backoff_base", self.backoff_base)
        _non_negative("backoff_cap", self.backoff_cap)
        if self.backoff_cap < self.backoff_base:
            raise ConfigError(
                f"backoff MAX must be >= BASE, got {self.backoff_base!r},{self.backoff_cap!r}",
                option="backoff",
            )
        for status in self.retry_on:
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                raise ConfigError(
                    f"invalid retry_on status {status!r}: expected 100-599", option="retry_on"
                )


class BreakerConfig(Struct, frozen=True, kw_only=True):
    """Per-host circuit breaker."""

    threshold: int = 5  # consecutive failures; 0 disables the breaker
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        _non_negative("breaker threshold", self.threshold)
        _positive("breaker cooldown", self.cooldown)


class FetchConfig(Struct, frozen=True, kw_only=True):
    """One attempt: the request and how much of the response we accept."""

    method: str = "GET"
    connect_timeout: float = 10.0
    max_redirects: int = 10
    max_bytes: int = 10 * 1024 * 1024
    headers: tuple[tuple[str, str], ...] = ()
    # Names of more headers that go only to their origin, like Authorization (--secret-header).
    secret_headers: tuple[str, ...] = ()
    user_agent: str = DEFAULT_USER_AGENT
    verify_tls: bool = True
    max_header_bytes: int = 16 * 1024
    block_private: bool = False  # refuse private/loopback/link-local/... after DNS
    allow_only: tuple[str, ...] = ()  # if set, refuse every address outside these networks
    resolve: tuple[tuple[str, str], ...] = ()  # (name or "*", address) fixed resolutions
    dns_cache_ttl: int = 300
    # 0: the connector adds no limit (and no second wait queue) of its own; requests in
    # flight are already bounded by the engine's concurrency limits.
    pool_size: int = 0
    # Proxies (crawler.proxies): ``proxies`` for every URL (--proxy: one; --proxy-file: a
    # pool); else ``scheme_proxies``, (scheme or "all", proxy URL) pairs (the environment's
    # http_proxy, HTTPS_PROXY, ALL_PROXY as the CLI read them); ``noproxy``: hosts that go
    # direct (--noproxy / NO_PROXY entries).
    proxies: tuple[str, ...] = ()
    scheme_proxies: tuple[tuple[str, str], ...] = ()
    noproxy: tuple[str, ...] = ()

    # Sessions, TLS and revisits (crawler.sessions): all off by default, and then nothing
    # per request changes.
    cookies: bool = False  # a cookie jar for the run (crawl mode turns it on by default)
    cookie: tuple[str, ...] = ()  # "name=value" pairs, sent only to the seeds' origins
    cookie_jar: str | None = None  # Netscape cookies.txt: loaded at start, saved at the end
    cacert: str | None = None  # CA bundle trusted instead of the system's (curl --cacert)
    cert: str | None = None  # client certificate (PEM), with its key unless --key is given
    key: str | None = None
    etags: str | None = None  # revisit file: validators kept, conditional requests sent

    # --data / --json: the body of every plain input line's request (JSON request lines
    # bring their own); with one, --method defaults to POST (see crawler.options).
    body: bytes | None = None
    body_type: str | None = None  # its Content-Type (--json), unless -H gives one
    # A request that is not idempotent (POST, PATCH, ...) is sent again after a failure
    # once its bytes went out only if this says so (--retry-unsafe).
    retry_unsafe: bool = False

    # What a record carries beyond the contract's fields, and how redirects and requests
    # are shown (crawler/detail.py): each costs nothing when off.
    include_headers: bool = False  # the final response's headers
    include_request: bool = False  # the final request's headers, as sent
    include_body: bool = False  # the body, as text or base64
    no_follow: bool = False  # a 3xx is the final response, with its Location
    verbose: bool = False  # each request and response head on stderr (-v)
    # Per-host headers and proxy (crawler.hostrules, crawler.hostfetch): with none, the
    # run's fetcher is the one it always was.
    hosts: HostOverrides = field(default_factory=HostOverrides)

    @property
    def detail(self) -> bool:
        """Whether the final response is read for more than the contract's fields."""
        return self.include_headers or self.include_request or self.include_body or self.no_follow

    @property
    def proxied(self) -> bool:
        """Whether any request may go through a proxy (decided once per run)."""
        return bool(self.proxies or self.scheme_proxies) or self.hosts.proxied

    def __post_init__(self) -> None:
        for text in (*self.proxies, *(url for _, url in self.scheme_proxies)):
            from crawler.proxies import parse_proxy  # only for a run with proxies

            try:
                parse_proxy(text)
            except ValueError as exc:
                raise ConfigError(f"proxy: {exc}", option="proxy") from None
        for scheme, _ in self.scheme_proxies:
            if scheme not in ("http", "https", "all"):
                raise ConfigError(f"scheme_proxy: unknown scheme {scheme!r}")
        if not _HEADER_NAME.fullmatch(self.method) or self.method.upper() == "CONNECT":
            raise ConfigError(f"invalid method {self.method!r}: expected a token such as POST")
        _positive("connect_timeout", self.connect_timeout)
        _non_negative("max_redirects", self.max_redirects)
        _positive("max_bytes", self.max_bytes)
        _non_negative("pool_size", self.pool_size)
        for name, value in self.headers:
            problem = _header_problem(name, value)
            if problem:
                shown = f"{name}: {value}"
                raise ConfigError(f"invalid header {shown!r}: {problem}", option="header")
        for name in self.secret_headers:
            if not _HEADER_NAME.fullmatch(name):
                raise ConfigError(
                    f"invalid secret_header {name!r}: expected a header name",
                    option="secret_header",
                )
        if _CONTROL.search(self.user_agent):
            raise ConfigError(
                f"invalid user_agent {self.user_agent!r}: control characters in value",
                option="user_agent",
            )
        for pair in self.cookie:
            if not _COOKIE_PAIR.fullmatch(pair):
                raise ConfigError(
                    f"invalid cookie {pair!r}: expected 'name=value' (no ';', spaces or "
                    "control characters)",
                    option="cookie",
                )
        if self.cookie_jar is not None and not self.cookies:
            raise ConfigError("cookie_jar needs cookies (a jar to load and save)")
        if self.key is not None and self.cert is None:
            raise ConfigError("key needs cert (the client certificate)", option="key")

    @property
    def session_state(self) -> bool:
        """Whether requests carry state of the run (a cookie jar, stored validators)."""
        return self.cookies or self.etags is not None


class SinkConfig(Struct, frozen=True, kw_only=True):
    """Where records go and how they are batched."""

    output: str | None = None  # None means standard output
    batch_records: int = 512
    batch_bytes: int = 256 * 1024
    flush_interval: float = 0.2
    checkpoint_interval: float = 1.0  # with --state: fsync + commit at most this often

    def __post_init__(self) -> None:
        _positive("batch_records", self.batch_records)
        _positive("batch_bytes", self.batch_bytes)
        _positive("flush_interval", self.flush_interval)


class CrawlConfig(Struct, frozen=True, kw_only=True):
    """Crawl mode: which discovered links are followed, and politeness."""

    scope: str = "host"  # host | domain | prefix, relative to the seeds
    include: tuple[str, ...] = ()  # regexes: a link must match one of them (if any)
    exclude: tuple[str, ...] = ()  # regexes: a link matching one of them is dropped
    max_depth: int | None = None  # seeds are depth 0
    max_pages: int | None = None  # records of this crawl, resumed runs included
    assets: bool = False  # also follow img/script/stylesheet/... URLs
    obey_robots: bool = True  # robots.txt, <meta name=robots>, rel=nofollow
    sitemaps: bool = False  # seeds from robots.txt Sitemap: lines
    sitemap_urls: tuple[str, ...] = ()
    robots_ttl: float = 24 * 3600.0
    parse_inline_bytes: int = 64 * 1024  # bigger pages are parsed in a child process
    parse_timeout: float = 5.0  # seconds for one page (or sitemap step) in that child

    def __post_init__(self) -> None:
        if self.scope not in ("host", "domain", "prefix"):
            raise ConfigError(f"scope must be host, domain or prefix, got {self.scope!r}")
        for pattern in (*self.include, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"invalid regex {pattern!r}: {exc}") from None
        if self.max_depth is not None:
            _non_negative("depth", self.max_depth)
        if self.max_pages is not None:
            _positive("max_pages", self.max_pages)
        _positive("parse_timeout", self.parse_timeout)


class StoreConfig(Struct, frozen=True, kw_only=True):
    """Where bodies are kept: content-addressed files and/or WARC."""

    save_dir: str | None = None
    warc: str | None = None
    warc_max_size: int = 1 << 30

    def __post_init__(self) -> None:
        _positive("warc_max_size", self.warc_max_size)

    @property
    def active(self) -> bool:
        return self.save_dir is not None or self.warc is not None


class RunConfig(Struct, frozen=True, kw_only=True):
    """The whole run: the slices above plus run-level behaviour."""

    input: InputConfig = field(default_factory=InputConfig)
    limits: LimitConfig = field(default_factory=LimitConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    crawl: CrawlConfig | None = None  # None: fetch mode (no links followed)
    grace: float = 5.0  # seconds in-flight requests get to finish after SIGINT/SIGTERM
    # Seconds, then stop like SIGINT but exit 0: URLs not sent get no record (fetch and crawl).
    max_time: float | None = None
    # Worker processes, hosts sharded among them (crawler.coordinator); 1: this process.
    workers: int = 1

    def __post_init__(self) -> None:
        _non_negative("grace", self.grace)
        _positive("workers", self.workers)
        if self.workers > 1:
            _one_process_only(self)
        if self.max_time is not None:
            _positive("max_time", self.max_time)


def _one_process_only(config: RunConfig) -> None:
    """What --workers N does not do yet: one clear error rather than a run that would
    be wrong (a cookie jar or an ETag file would have N writers)."""
    fetch = config.fetch
    for name, used in (
        ("cookie_jar", fetch.cookie_jar is not None),
        ("etags", fetch.etags is not None),
    ):
        if used:
            raise ConfigError(
                f"workers > 1 does not work with {name} yet: leave workers at 1",
                option="workers",
            )
