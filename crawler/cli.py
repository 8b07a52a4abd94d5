"""The command line: the only place options become config, and exit statuses are decided.

Exit statuses: 0 done · 1 done, ``--fail-on-error`` and some record not ok · 2 usage
error (one line on stderr, no traceback) · 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import select
import stat
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console

from crawler import __version__, signals
from crawler.config import (
    DEFAULT_USER_AGENT,
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
from crawler.errors import UsageError
from crawler.helptext import ManCommand, ManGroup
from crawler.inputs import LineSource, SeedSource, Source, split_arguments
from crawler.paths import Named, check_distinct, os_reason, state_files, stdio, writable_problem
from crawler.paths import inputs as input_files

EXIT_OK: Final = 0
EXIT_FAILED_RECORDS: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
NO_UVLOOP_ENV: Final = "CRAWLER_NO_UVLOOP"
PROGRESS_INTERVAL_ENV: Final = "CRAWLER_PROGRESS_INTERVAL"  # seconds between status lines
# The embedded server: each worker is a process, each body is held in memory.
MAX_SERVER_WORKERS: Final = 256
MAX_BODY_BYTES: Final = 1 << 30
MAX_LATENCY_MS: Final = 3_600_000.0
MAX_RETRY_AFTER: Final = 86_400.0

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "upgrade"))
_SPACE = re.compile(r"[\x00-\x20\x7f]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

T = TypeVar("T")

app = typer.Typer(
    name="crawler",
    help="Fetch and crawl the web at high concurrency, safely; one JSON record per URL.",
    cls=ManGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crawler {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Fetch and crawl the web at high concurrency, safely; one JSON record per URL."""


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value``: the name an RFC 9110 token, the value without control characters
    (each of them makes every request fail; CR/LF would inject headers)."""
    name, sep, value = text.partition(":")
    name = name.strip(" \t")
    if not sep or not _HEADER_NAME.fullmatch(name):
        raise UsageError(f"invalid header {text!r}: expected 'Name: value'")
    if name.lower() in _FRAMING_HEADERS:
        # A GET has no body: a framing header of our own would desynchronise the connection.
        raise UsageError(f"invalid header {text!r}: {name} is set by crawler itself")
    value = value.strip(" \t")
    check_field_value(value, f"header {text!r}")
    return name, value


def check_field_value(value: str, what: str) -> None:
    """A header field value (RFC 9110 5.5): visible characters, spaces and tabs."""
    if _CONTROL.search(value):
        raise UsageError(f"invalid {what}: control characters in value")


def parse_size(text: str | int) -> int:
    """Byte counts with optional binary suffix: 10485760, 10M, 10MiB, 512k."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 1048576, 512k, 10M)")
    unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
    size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size <= 0:
        raise typer.BadParameter("must be > 0")
    return size


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


def parse_method(text: str) -> str:
    method = text.strip().upper()
    if method not in ("GET", "HEAD"):
        raise typer.BadParameter(f"{text!r} is not one of GET, HEAD")
    return method


Method = Annotated[
    str, typer.Option("--method", parser=parse_method, metavar="GET|HEAD", help="HTTP method.")
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
Insecure = Annotated[bool, typer.Option("--insecure", help="Skip TLS certificate verification.")]
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
SaveDir = Annotated[
    Path | None,
    typer.Option(
        "--save-dir",
        metavar="DIR",
        help="Store bodies as DIR/ab/<sha256>; records get body_path and sha256.",
    ),
]
Warc = Annotated[
    Path | None,
    typer.Option(
        "--warc", metavar="PATH", help="Write WARC 1.1 request/response records (gzip) here."
    ),
]
WarcMaxSize = Annotated[
    int,
    typer.Option(
        "--warc-max-size",
        parser=parse_size,
        metavar="SIZE",
        help="Start a new WARC file past this size (e.g. 1G).",
    ),
]


InputArgs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="URL|FILE",
        show_default="standard input",
        help="URLs (with their scheme: https://...), or files of URLs, one a line "
        "('-': standard input).",
    ),
]


@app.command(cls=ManCommand, short_help="Fetch URLs once each; one JSON record per URL.")
def fetch(
    input: InputArgs = None,  # noqa: A002 - the contract's name for it
    output: Output = None,
    concurrency: Concurrency = 64,
    per_host: PerHost = 8,
    rps: Rps = 0.0,
    per_host_rps: PerHostRps = 0.0,
    burst: Burst = 1,
    adaptive: Adaptive = False,
    retries: Retries = 2,
    timeout: TimeoutOpt = 30.0,
    connect_timeout: ConnectTimeout = 10.0,
    max_redirects: MaxRedirects = 10,
    max_bytes: MaxBytes = 10 * 1024 * 1024,
    queue_size: QueueSize = 1000,
    header: Headers = None,
    secret_header: SecretHeaders = None,
    user_agent: UserAgent = None,
    method: Method = "GET",
    breaker_threshold: BreakerThreshold = 5,
    breaker_cooldown: BreakerCooldown = 30.0,
    insecure: Insecure = False,
    stats_json: StatsJson = None,
    state: State = None,
    no_dedup: NoDedup = False,
    progress: Progress = None,
    quiet: Quiet = False,
    fail_on_error: FailOnError = False,
    grace: Grace = 5.0,
    block_private: BlockPrivate = False,
    resolve: Resolve = None,
    save_dir: SaveDir = None,
    warc: Warc = None,
    warc_max_size: WarcMaxSize = 1 << 30,
    no_uvloop: NoUvloop = False,
) -> None:
    """Fetch every URL given, and every URL of the files given, once; write one JSON record
    per URL (JSONL) to standard output. With no URL or file, URLs are read from standard
    input."""
    if state is not None and no_dedup:
        raise UsageError("--state cannot be combined with --no-dedup: resume is keyed by URL")
    output, stats_path = _stdout_dashes(output, stats_json)
    config = build_config(**_shared_options(locals()), method=method, dedup=not no_dedup)
    urls, files = split_arguments(input or ())
    if not urls and not files:
        files = ["-"]
    max_line = config.input.max_line_bytes
    source: LineSource | SeedSource
    if not urls and len(files) == 1:  # the identity --state files have always had
        source = LineSource(files[0], max_line_bytes=max_line)
    else:
        source = SeedSource(urls, [LineSource(f, max_line_bytes=max_line) for f in files])
    source.open()
    _note_terminal_stdin(files, quiet)
    _run_pipeline(
        config,
        source,
        source.identity(),
        inputs=input_files("INPUT", files),
        state=state,
        stats_json=stats_path,
        progress=progress,
        quiet=quiet,
        fail_on_error=fail_on_error,
        no_uvloop=no_uvloop,
    )


Scope = Annotated[
    str,
    typer.Option(
        "--scope",
        metavar="host|domain|prefix",
        help="Follow links on the seeds' hosts, their domains, or under their URL prefix.",
    ),
]


@app.command(cls=ManCommand, short_help="Crawl from seed URLs, following links in scope.")
def crawl(
    seeds: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SEED|FILE",
            show_default="standard input",
            help="Seed URLs (with their scheme), or files of seed URLs ('-': standard input).",
        ),
    ] = None,
    scope: Scope = "host",
    include: Annotated[
        list[str] | None,
        typer.Option("--include", metavar="REGEX", help="Follow only links matching one."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", metavar="REGEX", help="Never follow links matching."),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            "--depth", min=0, metavar="N", show_default="none", help="Max link depth (seeds: 0)."
        ),
    ] = None,
    max_pages: Annotated[
        int | None,
        typer.Option(
            "--max-pages", min=1, metavar="N", show_default="none", help="Stop after N pages."
        ),
    ] = None,
    max_time: Annotated[
        float | None,
        typer.Option(
            "--max-time",
            min=0.001,
            metavar="S",
            show_default="none",
            help="Stop after S seconds (exit 0; resumable).",
        ),
    ] = None,
    assets: Annotated[
        bool, typer.Option("--assets", help="Also fetch images, scripts, stylesheets, media.")
    ] = False,
    ignore_robots: Annotated[
        bool,
        typer.Option("--ignore-robots", help="Ignore robots.txt, meta robots and rel=nofollow."),
    ] = False,
    sitemaps: Annotated[
        bool, typer.Option("--sitemaps", help="Seed from the Sitemap: lines of robots.txt.")
    ] = False,
    sitemap: Annotated[
        list[str] | None,
        typer.Option("--sitemap", metavar="URL", help="Seed from this sitemap."),
    ] = None,
    output: Output = None,
    concurrency: Concurrency = 64,
    per_host: PerHost = 8,
    rps: Rps = 0.0,
    per_host_rps: PerHostRps = 0.0,
    burst: Burst = 1,
    adaptive: Adaptive = False,
    retries: Retries = 2,
    timeout: TimeoutOpt = 30.0,
    connect_timeout: ConnectTimeout = 10.0,
    max_redirects: MaxRedirects = 10,
    max_bytes: MaxBytes = 10 * 1024 * 1024,
    queue_size: QueueSize = 1000,
    header: Headers = None,
    secret_header: SecretHeaders = None,
    user_agent: UserAgent = None,
    breaker_threshold: BreakerThreshold = 5,
    breaker_cooldown: BreakerCooldown = 30.0,
    insecure: Insecure = False,
    stats_json: StatsJson = None,
    state: State = None,
    progress: Progress = None,
    quiet: Quiet = False,
    fail_on_error: FailOnError = False,
    grace: Grace = 5.0,
    block_private: BlockPrivate = False,
    resolve: Resolve = None,
    save_dir: SaveDir = None,
    warc: Warc = None,
    warc_max_size: WarcMaxSize = 1 << 30,
    no_uvloop: NoUvloop = False,
) -> None:
    """Crawl from the seeds: follow links within a scope, politely; one JSON record per page.
    With no seed, seed URLs are read from standard input."""
    output, stats_path = _stdout_dashes(output, stats_json)

    for pattern in [*(include or ()), *(exclude or ())]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"invalid regex {pattern!r}: {exc}") from None
    sitemap_urls = tuple(sitemap or ())
    try:
        crawl_config = CrawlConfig(
            scope=scope,
            include=tuple(include or ()),
            exclude=tuple(exclude or ()),
            max_depth=depth,
            max_pages=max_pages,
            max_time=max_time,
            assets=assets,
            obey_robots=not ignore_robots,
            sitemaps=sitemaps or bool(sitemap_urls),
            sitemap_urls=sitemap_urls,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    config = build_config(**_shared_options(locals()), method="GET", dedup=True, crawl=crawl_config)
    urls, files = split_arguments(seeds or ())
    if not urls and not files and not sitemap_urls:
        files = ["-"]
    max_line = config.input.max_line_bytes
    source = SeedSource(urls, [LineSource(f, max_line_bytes=max_line) for f in files])
    source.open()
    _note_terminal_stdin(files, quiet)
    _run_pipeline(
        config,
        source,
        {"mode": "crawl", **source.identity()},
        inputs=input_files("SEEDS file", files),
        state=state,
        stats_json=stats_path,
        progress=progress,
        quiet=quiet,
        fail_on_error=fail_on_error,
        no_uvloop=no_uvloop,
    )


_SHARED: Final = (
    "concurrency",
    "per_host",
    "rps",
    "per_host_rps",
    "burst",
    "adaptive",
    "retries",
    "timeout",
    "connect_timeout",
    "max_redirects",
    "max_bytes",
    "queue_size",
    "header",
    "secret_header",
    "user_agent",
    "breaker_threshold",
    "breaker_cooldown",
    "insecure",
    "grace",
    "block_private",
    "resolve",
)


def _shared_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options fetch and crawl share, picked from a command's ``locals()``."""
    options = {name: values[name] for name in _SHARED}
    output, save_dir, warc = values["output"], values["save_dir"], values["warc"]
    options["output"] = str(output) if output is not None else None
    options["store"] = StoreConfig(
        save_dir=str(save_dir) if save_dir is not None else None,
        warc=str(warc) if warc is not None else None,
        warc_max_size=values["warc_max_size"],
    )
    return options


# ``--stats-json -``: the summary goes to standard output (compared by identity: ``./-``
# names a file called ``-``).
STATS_TO_STDOUT: Final = Path("-")


def _stdout_dashes(output: str | None, stats_json: str | None) -> tuple[str | None, Path | None]:
    """``-o -`` and ``--stats-json -`` mean standard output, as ``-`` does for curl's ``-o``.

    Standard output carries nothing but records: the summary may go there only when the
    records go to a file (it is written after the run, so it would end the JSONL stream
    with an object of another shape)."""
    if output == "-":
        output = None
    if stats_json is None:
        return output, None
    if stats_json != "-":
        if stats_json.endswith(os.sep):  # Path() would drop the slash: a file "dir" made
            raise UsageError(f"cannot write --stats-json {stats_json!r}: names a directory")
        return output, Path(stats_json)
    if output is None:
        raise UsageError(
            "--stats-json - needs -o PATH: standard output carries the records "
            "(or give --stats-json a file)"
        )
    return output, STATS_TO_STDOUT


def _write_stdout(data: bytes) -> None:
    """The ``--stats-json -`` summary, on standard output; a reader that went away
    (``| head -c 10``) ends it quietly, as it does for records."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(1, view) :]
    except BrokenPipeError:
        return
    except OSError as exc:
        raise UsageError(f"cannot write --stats-json to standard output: {exc.strerror}") from None


def _note_terminal_stdin(files: list[str], quiet: bool) -> None:
    """Waiting on a terminal for URLs says so, or it looks like a hang."""
    if quiet or "-" not in files:
        return
    with contextlib.suppress(OSError):
        if os.isatty(0):
            sys.stderr.write(
                "crawler: reading URLs from standard input, one a line "
                "(end with Ctrl-D; crawler --help for more)\n"
            )
            sys.stderr.flush()


def _per_host_notice(config: RunConfig, console: Console, quiet: bool) -> Callable[[], None] | None:
    """A one-line note, once a run, when workers wait while URLs wait for a busy host:
    ``-c 200`` on a one-host list shows 8 in flight, and the user should know why."""
    limits = config.limits
    if quiet or not (limits.adaptive or 0 < limits.per_host < limits.concurrency):
        return None
    bound = f"--per-host {limits.per_host}" if limits.per_host else "no --per-host"
    if limits.adaptive:
        bound += ", lowered by --adaptive"
    text = (
        f"crawler: note: workers are idle while URLs wait for a busy host: the per-host limit "
        f"({bound}), not -c {limits.concurrency}, bounds the requests in flight"
    )

    def notice() -> None:
        if console.is_terminal:  # the progress line may be live: print above it
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        # Written from the event loop: never block it on a stderr nobody reads (a pipe
        # polls writable with at least PIPE_BUF bytes free, more than this line).
        data = (text + "\n").encode()
        with contextlib.suppress(OSError, ValueError):
            if select.select([], [2], [], 0)[1]:
                os.write(2, data[: select.PIPE_BUF])

    return notice


def _run_pipeline(
    config: RunConfig,
    source: Source,
    identity: dict[str, Any],
    *,
    inputs: list[Named],
    state: Path | None,
    stats_json: Path | None,
    progress: bool | None,
    quiet: bool,
    fail_on_error: bool,
    no_uvloop: bool,
) -> None:
    """What fetch and crawl share: state, the engine run, summary, exit status."""
    output = config.sink.output
    _check_paths(config, inputs, state=state, stats_json=stats_json)
    console = _StderrConsole(stderr=True)
    show_progress = _progress_wanted(config, console, progress, quiet)

    from crawler.engine import Engine  # imported late: keeps `crawler --help` fast

    store = None
    if state is not None:
        from crawler.state import StateStore

        identity = {
            **identity,
            "output": os.path.abspath(output) if output is not None else None,
            "method": config.fetch.method,
        }
        store = StateStore(
            str(state), identity, owner=f"crawler {'fetch' if config.crawl is None else 'crawl'}"
        )
    engine = Engine(
        config,
        source,
        progress=console if show_progress else None,
        progress_interval=_progress_interval(),
        state=store,
        notice=_per_host_notice(config, console, quiet),
    )
    result = _run(engine.run, use_uvloop=_want_uvloop(no_uvloop), takes_signals=True)
    if not quiet and not result.output_closed and not _summary_would_block(config, result):
        from crawler.progress import render_summary

        render_summary(
            result.snapshot,
            console,
            interrupted=result.interrupted,
            timed_out=result.timed_out,
            state=store is not None,
        )
    if stats_json is not None:
        payload = result.snapshot.to_dict()
        payload["interrupted"] = result.interrupted
        payload["timed_out"] = result.timed_out
        try:
            data = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
            if stats_json is STATS_TO_STDOUT:
                _write_stdout(data + b"\n")
            else:
                _write_now(stats_json, data)
        except OSError as exc:
            raise UsageError(
                f"cannot write --stats-json {str(stats_json)!r}: {exc.strerror}"
            ) from None
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.output_closed:
        raise typer.Exit(EXIT_OK)
    if fail_on_error and result.snapshot.failed:
        raise typer.Exit(EXIT_FAILED_RECORDS)


def _progress_wanted(
    config: RunConfig, console: Console, progress: bool | None, quiet: bool
) -> bool:
    """Progress on stderr: by default when it is a terminal (a live line), with
    --progress also when it is not (a status line every few seconds). Never while the
    records go to that same terminal: a line redrawn in place, or one written between
    two partial writes of a record, would splice into the records."""
    if quiet or not (console.is_terminal if progress is None else progress):
        return False
    if _same_terminal(config.sink.output):
        if progress:
            console.print(
                "crawler: no progress while records are written to this terminal"
                " (use -o PATH or a pipe)",
                soft_wrap=True,
                highlight=False,
            )
        return False
    return True


def _same_terminal(output: str | None) -> bool:
    """Do the records go to the terminal that stderr is?"""
    try:
        err = os.fstat(2)
        out = os.fstat(1) if output is None else os.stat(output)
    except OSError:
        return False
    return stat.S_ISCHR(err.st_mode) and os.isatty(2) and os.path.samestat(err, out)


def _progress_interval() -> float:
    """Seconds between status lines when stderr is not a terminal (default 5)."""
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, "5"))
    except ValueError:
        return 5.0
    return value if 0.05 <= value < float("inf") else 5.0


def _summary_would_block(config: RunConfig, result: Any) -> bool:
    """Records were given up on (a pipe nobody reads) and stderr is that same pipe
    (``2>&1``): the summary could only block there, with the run over and no signal left
    to end it."""
    if not result.snapshot.lost:
        return False
    try:
        err = os.fstat(2)
        out = os.fstat(1) if config.sink.output is None else os.stat(config.sink.output)
    except OSError:
        return False
    return stat.S_ISFIFO(err.st_mode) and os.path.samestat(err, out)


def _write_now(path: Path, data: bytes) -> None:
    """Write ``path`` without ever blocking: a FIFO nobody opens or reads (where
    ``Path.write_bytes`` waited for ever, after the run) is an OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _check_paths(
    config: RunConfig, inputs: list[Named], *, state: Path | None, stats_json: Path | None
) -> None:
    """Before anything is opened for writing: every file written is a new name, distinct
    from the inputs and from each other, and can be written where it is (found now, not
    after the run; said as the OS says it, naming the path)."""
    outputs = []
    # (how a message names it, path, a directory?) of everything the run will write
    places: list[tuple[str, str, bool]] = []
    if config.sink.output is not None:
        outputs.append(Named("-o", config.sink.output))
        places.append(("write output", config.sink.output, False))
    else:  # records go to stdout: `>> urls.txt` would feed them back as input
        outputs += stdio(1, "stdout")
    if stats_json is not None and stats_json is not STATS_TO_STDOUT:
        try:
            # os.stat, not Path.resolve(): that raises RuntimeError on a symlink loop.
            os.stat(stats_json)
        except FileNotFoundError:
            pass
        except OSError as exc:  # e.g. a symlink loop: found now, not after the run
            raise UsageError(
                f"cannot write --stats-json {str(stats_json)!r}: {exc.strerror}"
            ) from None
        outputs.append(Named("--stats-json", str(stats_json)))
        places.append(("write --stats-json", str(stats_json), False))
    if config.store.warc is not None:
        places.append(("write --warc", config.store.warc, False))
    if config.store.save_dir is not None:
        places.append(("use --save-dir", config.store.save_dir, True))
    if state is not None:
        if state.is_dir():
            raise UsageError(f"cannot use --state {str(state)!r}: is a directory")
        if not os.path.isdir(os.path.dirname(os.path.realpath(state))):
            raise UsageError(f"cannot use --state {str(state)!r}: no such directory")
        outputs += state_files(str(state))
        # SQLite makes its -wal and -shm beside the file (a new one is made there too).
        places.append(("use --state", os.path.dirname(os.path.realpath(state)), True))
        if state.exists():
            places.append(("use --state", str(state), False))
    check_distinct(inputs, outputs, warc=config.store.warc, save_dir=config.store.save_dir)
    for verb, path, directory in places:
        problem = writable_problem(path, directory=directory)
        if problem is not None:
            shown = str(state) if verb == "use --state" else path
            raise UsageError(f"cannot {verb} {shown!r}: {os_reason(problem, shown)}")


@app.command(cls=ManCommand, short_help="Run the embedded test server (no network needed).")
def serve(
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="ADDR",
            show_default="127.0.0.1",
            help="Address to listen on (127.0.0.2, ... for more hosts).",
        ),
    ] = None,
    port: Annotated[
        int,
        typer.Option("--port", min=0, max=65535, metavar="N", help="Port (0: any free port)."),
    ] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, max=MAX_SERVER_WORKERS, metavar="N", help="Server processes."
        ),
    ] = 1,
    latency_ms: Annotated[
        float,
        typer.Option(
            "--latency-ms",
            min=0.0,
            max=MAX_LATENCY_MS,
            metavar="MS",
            help="Mean latency of /page/..., milliseconds.",
        ),
    ] = 0.0,
    latency_dist: Annotated[
        str, typer.Option("--latency-dist", metavar="exp|fixed", help="Latency distribution.")
    ] = "exp",
    error_rate: Annotated[
        float,
        typer.Option(
            "--error-rate", min=0.0, max=1.0, metavar="R", help="Share of /page/... that fail."
        ),
    ] = 0.0,
    error_kind: Annotated[
        str, typer.Option("--error-kind", metavar="503|429|reset", help="How /page fails.")
    ] = "503",
    retry_after: Annotated[
        float,
        typer.Option(
            "--retry-after",
            min=0.0,
            max=MAX_RETRY_AFTER,
            metavar="S",
            help="Retry-After on 503/429, seconds.",
        ),
    ] = 1.0,
    body_bytes: Annotated[
        int,
        typer.Option(
            "--body-bytes",
            min=0,
            max=MAX_BODY_BYTES,
            metavar="N",
            help="Body size of /page/..., bytes.",
        ),
    ] = 512,
    access_log: Annotated[
        bool,
        typer.Option("--access-log", help="Log every request on stderr (Common Log Format)."),
    ] = False,
    reuse_port: Annotated[bool, typer.Option("--reuse-port", hidden=True)] = False,
    parent_pid: Annotated[int | None, typer.Option("--parent-pid", hidden=True)] = None,
    no_uvloop: NoUvloop = False,
) -> None:
    """Run the embedded test server in the foreground (no network needed); GET / lists its
    routes."""
    from crawler.bench.server import ServeOptions, serve_forever

    try:
        opts = ServeOptions(
            hosts=tuple(host or ("127.0.0.1",)),
            port=port,
            workers=workers,
            latency_ms=latency_ms,
            latency_dist=latency_dist,
            error_rate=error_rate,
            error_kind=error_kind,
            retry_after=retry_after,
            body_bytes=body_bytes,
            access_log=access_log,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        _run(
            lambda: serve_forever(opts, reuse_port=reuse_port, parent_pid=parent_pid),
            use_uvloop=_want_uvloop(no_uvloop),
        )
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc.strerror or exc}") from None


@app.command(cls=ManCommand, short_help="Measure throughput against a local server.")
def bench(
    n: Annotated[int, typer.Option("-n", min=1, metavar="N", help="URLs per round.")] = 50_000,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            metavar="URL-PREFIX",
            show_default="the embedded server",
            help="Use this server: PREFIX/page/<i>.",
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", min=1, metavar="N", help="Rounds (medians).")
    ] = 1,
    compare: Annotated[
        bool, typer.Option("--compare", help="Also run a bare aiohttp loop, interleaved.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    concurrency: Concurrency = 100,
    per_host: PerHost = 0,
    rps: Rps = 0.0,
    per_host_rps: PerHostRps = 0.0,
    adaptive: Adaptive = False,
    retries: Retries = 2,
    timeout: TimeoutOpt = 30.0,
    server_workers: Annotated[
        int,
        typer.Option(
            "--server-workers",
            min=1,
            max=MAX_SERVER_WORKERS,
            metavar="N",
            help="Embedded server processes.",
        ),
    ] = 1,
    latency_ms: Annotated[
        float,
        typer.Option(
            "--latency-ms",
            min=0.0,
            max=MAX_LATENCY_MS,
            metavar="MS",
            help="Embedded server: mean latency.",
        ),
    ] = 0.0,
    error_rate: Annotated[
        float,
        typer.Option(
            "--error-rate", min=0.0, max=1.0, metavar="R", help="Embedded server: 503 rate."
        ),
    ] = 0.0,
    body_bytes: Annotated[
        int,
        typer.Option(
            "--body-bytes",
            min=0,
            max=MAX_BODY_BYTES,
            metavar="N",
            help="Embedded server: body size, bytes.",
        ),
    ] = 512,
    save_dir: SaveDir = None,
    warc: Warc = None,
    no_uvloop: NoUvloop = False,
) -> None:
    """Measure throughput through the fetch pipeline against a local server.

    With --save-dir or --warc the embedded server gives every URL its own body."""
    from crawler.bench.runner import embedded_server, run_rounds, summarize, unexpected_errors
    from crawler.bench.server import ServeOptions

    if target is not None:
        _check_target(target)
    config = build_config(
        output=None,
        concurrency=concurrency,
        per_host=per_host,
        rps=rps,
        per_host_rps=per_host_rps,
        adaptive=adaptive,
        retries=retries,
        timeout=timeout,
        connect_timeout=10.0,
        max_redirects=10,
        max_bytes=10 * 1024 * 1024,
        queue_size=1000,
        header=None,
        user_agent=None,
        method="GET",
        breaker_threshold=5,
        breaker_cooldown=30.0,
        insecure=False,
        dedup=True,
        grace=0.0,
        store=StoreConfig(
            save_dir=str(save_dir) if save_dir is not None else None,
            warc=str(warc) if warc is not None else None,
        ),
    )
    use_uvloop = _want_uvloop(no_uvloop)
    opts = ServeOptions(
        port=0,
        workers=server_workers,
        latency_ms=latency_ms,
        error_rate=error_rate,
        body_bytes=body_bytes,
    )
    path = "unique" if config.store.active and not target else "page"
    with contextlib.ExitStack() as stack:
        prefix = target if target else stack.enter_context(embedded_server(opts))
        results = _run(
            lambda: run_rounds(config, prefix, n, rounds, compare, path), use_uvloop=use_uvloop
        )
    report = summarize(results, n=n, config=config, loop=_loop_name(use_uvloop))
    report["target"] = target or "embedded"
    # Errors nobody asked for make the figures those of failures: exit 1, and when no
    # URL was fetched at all, no figures.
    unexpected = unexpected_errors(report, injected=error_rate > 0 and not target)
    if report["ok"] or not unexpected:
        if json_out:
            sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
            sys.stdout.flush()
        else:
            _render_bench(report, Console())
    if unexpected:
        failed = sum(unexpected.values())
        kinds = ", ".join(f"{kind}: {count}" for kind, count in unexpected.items())
        where = report["target"] if target else "the embedded server"
        verdict = "no URL was fetched" if not report["ok"] else "the figures include them"
        _fail(
            f"bench: {failed} of {n * rounds} URLs failed against {where} ({kinds}); {verdict}",
            EXIT_FAILED_RECORDS,
        )


def _check_target(target: str) -> None:
    """``--target`` is a URL prefix every request is built from: an http(s) URL, or every
    URL of the run would fail the same way."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(target)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a bad IPv6 literal or port
        valid = False
    if not valid or _SPACE.search(target):
        raise UsageError(f"invalid --target {target!r}: expected an http(s) URL prefix")


def _render_bench(report: dict[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"crawler bench: {report['n']:,} URLs x {report['rounds']}", box=None)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("target", str(report["target"]))
    table.add_row("event loop", str(report["event_loop"]))
    table.add_row("concurrency", str(report["concurrency"]))
    table.add_row("URLs/s (median)", f"{report['urls_per_s']:,.0f}")
    if "baseline_urls_per_s" in report:
        table.add_row("bare aiohttp URLs/s", f"{report['baseline_urls_per_s']:,.0f}")
        table.add_row("ratio to bare aiohttp", f"{report['ratio_to_baseline']:.2f}x")
    lat = report["latency_ms"]
    table.add_row("latency p50/p95/p99", f"{lat['p50']} / {lat['p95']} / {lat['p99']} ms")
    lag = report["loop_lag_ms"]
    table.add_row("loop lag p50/p99/max", f"{lag['p50']} / {lag['p99']} / {lag['max']} ms")
    table.add_row("peak RSS", f"{report['peak_rss_mib']} MiB")
    table.add_row("retries", str(report["retries"]))
    table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none")
    console.print(table)


def build_config(
    *,
    output: str | None,
    concurrency: int,
    per_host: int,
    rps: float,
    per_host_rps: float,
    adaptive: bool,
    retries: int,
    timeout: float,
    connect_timeout: float,
    max_redirects: int,
    max_bytes: int,
    queue_size: int,
    header: list[str] | None,
    user_agent: str | None,
    method: str,
    breaker_threshold: int,
    breaker_cooldown: float,
    insecure: bool,
    dedup: bool,
    grace: float,
    block_private: bool = False,
    resolve: list[str] | None = None,
    secret_header: list[str] | None = None,
    burst: int = 1,
    store: StoreConfig | None = None,
    crawl: CrawlConfig | None = None,
) -> RunConfig:
    """Options -> the frozen config slices each component receives."""
    from crawler.netpolicy import parse_resolve

    headers = tuple(parse_header(h) for h in header or ())
    secrets = tuple(n.strip() for n in secret_header or ())
    for name in secrets:
        if not _HEADER_NAME.fullmatch(name):
            raise UsageError(f"invalid --secret-header {name!r}: expected a header name")
    if user_agent is not None:
        check_field_value(user_agent, f"--user-agent {user_agent!r}")
    try:
        resolved = tuple(parse_resolve(r) for r in resolve or ())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        return RunConfig(
            input=InputConfig(dedup=dedup),
            limits=LimitConfig(
                concurrency=concurrency,
                per_host=per_host,
                rps=rps,
                per_host_rps=per_host_rps,
                burst=burst,
                adaptive=adaptive,
                queue_size=queue_size,
            ),
            retry=RetryConfig(retries=retries, timeout=timeout),
            breaker=BreakerConfig(threshold=breaker_threshold, cooldown=breaker_cooldown),
            fetch=FetchConfig(
                method=method,
                connect_timeout=connect_timeout,
                max_redirects=max_redirects,
                max_bytes=max_bytes,
                headers=headers,
                secret_headers=secrets,
                verify_tls=not insecure,
                user_agent=user_agent or DEFAULT_USER_AGENT,
                block_private=block_private,
                resolve=resolved,
            ),
            sink=SinkConfig(output=output),
            store=store or StoreConfig(),
            crawl=crawl,
            grace=grace,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _loop_name(use_uvloop: bool) -> str:
    if use_uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "asyncio"
        return "uvloop"
    return "asyncio"


def _run(
    main: Callable[[], Coroutine[Any, Any, T]], *, use_uvloop: bool, takes_signals: bool = False
) -> T:
    """Run ``main`` on uvloop when it is installed and wanted, else on asyncio's loop.

    Stop signals are still deferred here (see ``crawler.signals``). ``takes_signals``: the
    coroutine installs its own handlers and takes the pending signals (the engine), so the
    signals stay deferred until it does. Otherwise the usual handlers come back first (Ctrl-C
    raises KeyboardInterrupt), and a signal that came while deferred ends the program now.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    # Everything allocated so far (imports, option parsing) lives for the whole run:
    # freezing it keeps the garbage collector from rescanning it over and over.
    gc.collect()
    gc.freeze()
    if not takes_signals:
        signals.restore()
        if signals.take():
            raise KeyboardInterrupt
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            return runner.run(main())
        finally:
            if takes_signals:
                # The engine's handlers are gone with its loop, leaving the defaults: a
                # second SIGHUP/SIGQUIT/SIGTERM while the summary is written killed the
                # process (a SIGINT raised there). Deferred again until exit.
                signals.defer()


def _want_uvloop(no_uvloop: bool) -> bool:
    return not (no_uvloop or os.environ.get(NO_UVLOOP_ENV))


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    try:
        sys.stderr.write(f"crawler: error: {message}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        _drop_stderr()  # the exit status still says what happened
    raise SystemExit(code)


class _StderrConsole(Console):
    """The progress display and summary, on stderr. When nobody reads stderr any more
    (``2>&1 | head -1``), rich's default points fd 1 (our records!) at /dev/null and
    exits 1 (also mid-run); this one only stops talking, and the run's status stands."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _drop_stderr()


def _drop_stderr() -> None:
    """The reader of standard error went away: point fd 2 at /dev/null, so no later write
    (nor the flush at exit) fails again and the exit status is ours, not click's 1."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console-script entry point: one-line errors, exit statuses from the contract.

    No signal ends it with a traceback: stop signals are deferred from the start (and again
    for the way out, where a KeyboardInterrupt would interrupt clean-up), and a
    KeyboardInterrupt from the spans where Ctrl-C has its usual meaning is exit status 130.
    """
    signals.defer()  # already done by crawler.__main__ before the heavy imports
    code = EXIT_INTERRUPTED
    try:
        if not signals.pending():  # a signal during start-up: do nothing at all
            code = _main(argv)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        signals.defer()
    raise SystemExit(code)


def _main(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    args = argv if argv is not None else sys.argv[1:]
    try:
        code = command.main(args=args, prog_name="crawler", standalone_mode=False)
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            command.main(args=["--help"], prog_name="crawler", standalone_mode=False)
            return EXIT_OK
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(" ".join(message.split()))
    except UsageError as exc:
        _fail(str(exc))
    except (typer.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    return code if isinstance(code, int) else EXIT_OK
