"""The options of the commands that run the pipeline (``fetch``, ``crawl``, ``bench``),
declared once: each option's typer declaration here (those of requests, records and
storage in ``requestopts.py``), its default from the config slice it ends up in
(``crawler.config``); ``signature.run_options`` gives a command the ones it takes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from msgspec import Struct

from crawler.cli.requestopts import (
    Backoff,
    Cacert,
    Cert,
    Cookie,
    CookieJar,
    Cookies,
    Data,
    Etags,
    IncludeBody,
    IncludeHeaders,
    IncludeRequest,
    JsonBody,
    Key,
    MaxTime,
    NoEnvProxy,
    NoFollow,
    NoProxy,
    ProxyFile,
    ProxyOpt,
    RetryOn,
    RetryUnsafe,
    SaveDir,
    Verbose,
    Warc,
    WarcMaxSize,
    Workers,
    body_file,
)
from crawler.cli.values import parse_method, parse_size
from crawler.config import (
    BreakerConfig,
    CrawlConfig,
    FetchConfig,
    InputConfig,
    LimitConfig,
    RetryConfig,
    RunConfig,
    SinkConfig,
    StoreConfig,
    field_defaults,
)
from crawler.errors import UsageError
from crawler.options import CrawlOptions, FetchOptions, run_config

NO_UVLOOP_ENV: Final = "CRAWLER_NO_UVLOOP"
CONFIG_ENV: Final = "CRAWLER_CONFIG"


def config_path(given: str | None) -> str | None:
    """The config file of a command: ``--config``'s, else ``CRAWLER_CONFIG``'s, else None.
    Here, not in ``configfile``: a run without one need not load the file's reader."""
    return given if given is not None else os.environ.get(CONFIG_ENV) or None


_BACKOFF_DEFAULTS: Final = tuple(
    field_defaults(RetryConfig)[f] for f in ("backoff_base", "backoff_cap")
)

Concurrency = Annotated[
    int, typer.Option("-c", "--concurrency", min=1, metavar="N", help="Max requests in flight.")
]
PerHost = Annotated[
    int,
    typer.Option(
        "--per-host",
        min=0,
        metavar="N",
        help="Max in flight per host (0: only the -c limit); with few hosts this, not -c, "
        "bounds the requests in flight.",
    ),
]
Rps = Annotated[
    float,
    typer.Option("--rps", min=0.0, metavar="R", help="Global requests/second cap (0: none)."),
]
PerHostRps = Annotated[
    float,
    typer.Option(
        "--per-host-rps", min=0.0, metavar="R", help="Requests/second cap per host (0: none)."
    ),
]
Burst = Annotated[
    int,
    typer.Option(
        "--burst",
        min=1,
        metavar="N",
        help="Requests that may start at once under --rps and --per-host-rps (1: never two"
        " closer than 1/rate s). robots.txt's Crawl-delay always allows 1.",
    ),
]
Adaptive = Annotated[
    bool,
    typer.Option(
        "--adaptive/--no-adaptive",
        help="Tune per-host concurrency from latency and errors (AIMD).",
    ),
]
Retries = Annotated[int, typer.Option("--retries", min=0, metavar="N", help="Retries per URL.")]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.001,
        metavar="S",
        help="Seconds per URL: one deadline for all attempts and waits.",
    ),
]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        "--connect-timeout", min=0.001, metavar="S", help="Seconds to connect, per attempt."
    ),
]
MaxRedirects = Annotated[
    int, typer.Option("--max-redirects", min=0, metavar="N", help="Redirects to follow.")
]
MaxBytes = Annotated[
    int,
    typer.Option(
        "--max-bytes",
        parser=parse_size,
        metavar="SIZE",
        help="Max body size, decompressed (bytes, or 512k, 10M, 1G).",
    ),
]
QueueSize = Annotated[
    int,
    typer.Option(
        "--queue-size", min=1, metavar="N", help="Frontier bound: URLs read ahead of workers."
    ),
]
Headers = Annotated[
    list[str] | None,
    typer.Option("-H", "--header", metavar="'NAME: VALUE'", help="Extra request header."),
]
SecretHeaders = Annotated[
    list[str] | None,
    typer.Option(
        "--secret-header",
        metavar="NAME",
        help="A header (from -H) sent only to the origin of the URL or seed it was given "
        "for, like Authorization, Cookie and Proxy-Authorization.",
    ),
]
UserAgent = Annotated[
    str | None,
    typer.Option(
        "--user-agent", metavar="UA", show_default="crawler/VERSION", help="User-Agent header."
    ),
]

Method = Annotated[
    str | None,
    typer.Option(
        "--method",
        parser=parse_method,
        metavar="METHOD",
        show_default="GET; POST with --data/--json",
        help="HTTP method (any token: GET, HEAD, POST, PUT, DELETE, ...).",
    ),
]
BreakerThreshold = Annotated[
    int,
    typer.Option(
        "--breaker-threshold",
        min=0,
        metavar="N",
        help="Consecutive failures that open a host's breaker (0: no breaker).",
    ),
]
BreakerCooldown = Annotated[
    float,
    typer.Option(
        "--breaker-cooldown",
        min=0.001,
        metavar="S",
        help="Seconds before an open breaker lets a probe through.",
    ),
]
Insecure = Annotated[
    bool, typer.Option("-k", "--insecure", help="Skip TLS certificate verification.")
]
StatsJson = Annotated[
    str | None,
    typer.Option(
        "--stats-json",
        metavar="PATH",
        help="Write the summary as JSON; '-': standard output (needs -o PATH for the records).",
    ),
]
State = Annotated[
    Path | None,
    typer.Option("--state", metavar="PATH", help="Resume file: run again to resume."),
]
NoDedup = Annotated[bool, typer.Option("--no-dedup", help="Fetch duplicate URLs again.")]
Output = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="PATH",
        show_default="stdout",
        help="Write records here ('-': standard output).",
    ),
]
Progress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        show_default="when stderr is a terminal",
        help="Progress line on stderr.",
    ),
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Only errors that stop the run.")]
FailOnError = Annotated[
    bool, typer.Option("--fail-on-error", help="Exit 1 if any record has ok: false.")
]
Grace = Annotated[
    float,
    typer.Option(
        "--grace",
        min=0.0,
        metavar="S",
        help="Seconds in-flight requests get to finish after SIGINT/SIGTERM.",
    ),
]
BlockPrivate = Annotated[
    bool,
    typer.Option(
        "--block-private",
        help="Refuse loopback/private/link-local/multicast addresses, checked after DNS.",
    ),
]
Resolve = Annotated[
    list[str] | None,
    typer.Option(
        "--resolve",
        metavar="NAME:ADDRESS",
        help="Resolve NAME (or * for every name) to ADDRESS.",
    ),
]
NoUvloop = Annotated[
    bool,
    typer.Option("--no-uvloop", help=f"Use asyncio's default loop (or set {NO_UVLOOP_ENV}=1)."),
]


_LIMIT = field_defaults(LimitConfig)
_RETRY = field_defaults(RetryConfig)
_BREAKER = field_defaults(BreakerConfig)
_FETCH = field_defaults(FetchConfig)
_STORE = field_defaults(StoreConfig)
CRAWL_DEFAULTS: Final = field_defaults(CrawlConfig)


class RunOptions(Struct, frozen=True, kw_only=True):
    """Every option of ``fetch``, ``crawl`` and ``bench`` that shapes the run, as given.

    A command given fewer of them runs with these defaults for the rest; each is the
    default of the config field the option becomes."""

    output: str | None = field_defaults(SinkConfig)["output"]
    concurrency: int = _LIMIT["concurrency"]
    per_host: int = _LIMIT["per_host"]
    rps: float = _LIMIT["rps"]
    per_host_rps: float = _LIMIT["per_host_rps"]
    burst: int = _LIMIT["burst"]
    adaptive: bool = _LIMIT["adaptive"]
    retries: int = _RETRY["retries"]
    timeout: float = _RETRY["timeout"]
    connect_timeout: float = _FETCH["connect_timeout"]
    max_redirects: int = _FETCH["max_redirects"]
    max_bytes: int = _FETCH["max_bytes"]
    queue_size: int = _LIMIT["queue_size"]
    header: list[str] | None = None
    secret_header: list[str] | None = None
    user_agent: str | None = None  # FetchConfig's DEFAULT_USER_AGENT
    method: str | None = None  # FetchConfig's method; POST with a body
    breaker_threshold: int = _BREAKER["threshold"]
    breaker_cooldown: float = _BREAKER["cooldown"]
    insecure: bool = not _FETCH["verify_tls"]
    stats_json: str | None = None
    state: Path | None = None
    no_dedup: bool = not field_defaults(InputConfig)["dedup"]
    progress: bool | None = None
    quiet: bool = False
    fail_on_error: bool = False
    grace: float = field_defaults(RunConfig)["grace"]
    block_private: bool = _FETCH["block_private"]
    resolve: list[str] | None = None
    save_dir: Path | None = _STORE["save_dir"]
    warc: Path | None = _STORE["warc"]
    warc_max_size: int = _STORE["warc_max_size"]
    no_uvloop: bool = False
    proxy: str | None = None
    proxy_file: Path | None = None
    noproxy: str | None = None
    no_env_proxy: bool = False
    cookies: bool | None = None  # FetchConfig's default for a fetch, on for a crawl
    cookie: list[str] | None = None
    cookie_jar: Path | None = _FETCH["cookie_jar"]
    cacert: Path | None = _FETCH["cacert"]
    cert: Path | None = _FETCH["cert"]
    key: Path | None = _FETCH["key"]
    etags: Path | None = _FETCH["etags"]
    data: str | None = None
    json: str | None = None
    retry_unsafe: bool = _FETCH["retry_unsafe"]
    max_time: float | None = field_defaults(RunConfig)["max_time"]
    include_headers: bool = _FETCH["include_headers"]
    include_request: bool = _FETCH["include_request"]
    include_body: bool = _FETCH["include_body"]
    no_follow: bool = _FETCH["no_follow"]
    verbose: bool = _FETCH["verbose"]
    retry_on: str | None = None  # RetryConfig's retry_on
    backoff: str | None = None  # RetryConfig's backoff_base, backoff_cap
    hosts: Any = None  # a config file's [hosts."..."] (crawler.hostrules.HostOverrides)
    workers: str = "1"

    def config(self, crawl: Mapping[str, object] | None = None) -> RunConfig:
        """The frozen config slices each component receives, built by the Python API's
        ``run_config``: a crawl's if ``crawl`` (its own options) is given. A bad value
        raises ConfigError, which the CLI reports as a usage error."""
        from crawler.tls import load_aiohttp  # not for --help: asyncio, ssl

        load_aiohttp()  # before the config's modules import it: see crawler.tls
        takes = (FetchOptions if crawl is None else CrawlOptions).__optional_keys__
        given = {name: getattr(self, name) for name in _RUN_OPTIONS if name in takes}
        given.update(crawl or {})
        given.update(self._env_proxies())
        if self.data is not None and self.json is not None:
            raise UsageError("--data and --json cannot both be given")
        if "data" in given:
            given["data"] = body_file("--data", self.data)
        if "json" in given:
            given["json"] = body_file("--json", self.json)
        return run_config(
            {name: value for name, value in given.items() if value is not None},
            crawl=crawl is not None,
            sink=SinkConfig(output=self.output),
        )

    def _env_proxies(self) -> dict[str, object]:
        """The environment's proxies (curl's rules: crawler.cli.proxyenv), unless
        --no-env-proxy; --proxy/--proxy-file and --noproxy take precedence."""
        if self.no_env_proxy:
            return {}
        import os

        from crawler.cli.proxyenv import env_noproxy, env_proxies

        found: dict[str, object] = {}
        if self.proxy is None and self.proxy_file is None:
            schemes = env_proxies(os.environ)
            if schemes:
                found["scheme_proxy"] = schemes
        noproxy = env_noproxy(os.environ)
        if self.noproxy is None and noproxy is not None:
            found["noproxy"] = noproxy
        return found


# Each RunOptions field's option: typer's declaration of it.
OPTIONS: Final[dict[str, Any]] = {
    "output": Output,
    "concurrency": Concurrency,
    "per_host": PerHost,
    "rps": Rps,
    "per_host_rps": PerHostRps,
    "burst": Burst,
    "adaptive": Adaptive,
    "retries": Retries,
    "timeout": TimeoutOpt,
    "connect_timeout": ConnectTimeout,
    "max_redirects": MaxRedirects,
    "max_bytes": MaxBytes,
    "queue_size": QueueSize,
    "header": Headers,
    "secret_header": SecretHeaders,
    "user_agent": UserAgent,
    "method": Method,
    "breaker_threshold": BreakerThreshold,
    "breaker_cooldown": BreakerCooldown,
    "insecure": Insecure,
    "stats_json": StatsJson,
    "state": State,
    "no_dedup": NoDedup,
    "progress": Progress,
    "quiet": Quiet,
    "fail_on_error": FailOnError,
    "grace": Grace,
    "block_private": BlockPrivate,
    "resolve": Resolve,
    "save_dir": SaveDir,
    "warc": Warc,
    "warc_max_size": WarcMaxSize,
    "no_uvloop": NoUvloop,
    "proxy": ProxyOpt,
    "proxy_file": ProxyFile,
    "noproxy": NoProxy,
    "no_env_proxy": NoEnvProxy,
    "cookies": Cookies,
    "cookie": Cookie,
    "cookie_jar": CookieJar,
    "cacert": Cacert,
    "cert": Cert,
    "key": Key,
    "etags": Etags,
    "data": Data,
    "json": JsonBody,
    "retry_unsafe": RetryUnsafe,
    "max_time": MaxTime,
    "include_headers": IncludeHeaders,
    "include_request": IncludeRequest,
    "include_body": IncludeBody,
    "no_follow": NoFollow,
    "verbose": Verbose,
    "retry_on": RetryOn,
    "backoff": Backoff,
    "workers": Workers,
}
DEFAULTS: Final = field_defaults(RunOptions)
# The RunOptions fields that shape the run's config (the others: where and how it reports).
_RUN_OPTIONS: Final = tuple(sorted(FetchOptions.__optional_keys__ & DEFAULTS.keys()))
