"""``crawler serve`` and ``crawler bench``: the embedded test server, and the benchmark
against it (its rendering is in ``crawler.bench.report``)."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Annotated, Final

import typer

from crawler.cli.app import EXIT_FAILED_RECORDS, app, fail
from crawler.cli.options import NoUvloop, RunOptions
from crawler.cli.signature import run_options
from crawler.errors import UsageError
from crawler.helptext import ManCommand

# The embedded server: each worker is a process, each body is held in memory.
MAX_SERVER_WORKERS: Final = 256
MAX_BODY_BYTES: Final = 1 << 30
MAX_LATENCY_MS: Final = 3_600_000.0
MAX_RETRY_AFTER: Final = 86_400.0

_SPACE = re.compile(r"[\x00-\x20\x7f]")


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
    from crawler.cli.run import run_loop, want_uvloop  # asyncio, rich: not for --help

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
        run_loop(
            lambda: serve_forever(opts, reuse_port=reuse_port, parent_pid=parent_pid),
            use_uvloop=want_uvloop(no_uvloop),
        )
    except OSError as exc:
        raise UsageError(f"cannot listen: {exc.strerror or exc}") from None


@app.command(cls=ManCommand, short_help="Measure throughput against a local server.")
@run_options(
    "concurrency",
    "per_host",
    "rps",
    "per_host_rps",
    "adaptive",
    "retries",
    "timeout",
    "server_workers",
    "latency_ms",
    "error_rate",
    "body_bytes",
    "save_dir",
    "warc",
    "no_uvloop",
    "include_headers",
    "include_body",
    # all at once, none held per host; no grace: a bench is not resumed
    concurrency=100,
    per_host=0,
    grace=0.0,
    no_env_proxy=True,  # the embedded server is never behind the environment's proxy
)
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
    *,
    opts: RunOptions,
) -> None:
    """Measure throughput through the fetch pipeline against a local server.

    With --save-dir or --warc the embedded server gives every URL its own body."""
    import orjson
    from rich.console import Console

    from crawler.bench.report import loop_name, render
    from crawler.bench.runner import embedded_server, run_rounds, summarize, unexpected_errors
    from crawler.bench.server import ServeOptions
    from crawler.cli.run import run_loop, want_uvloop  # asyncio, rich: not for --help

    if target is not None:
        _check_target(target)
    config = opts.config()
    use_uvloop = want_uvloop(opts.no_uvloop)
    server = ServeOptions(
        port=0,
        workers=server_workers,
        latency_ms=latency_ms,
        error_rate=error_rate,
        body_bytes=body_bytes,
    )
    path = "unique" if config.store.active and not target else "page"
    with contextlib.ExitStack() as stack:
        prefix = target if target else stack.enter_context(embedded_server(server))
        results = run_loop(
            lambda: run_rounds(config, prefix, n, rounds, compare, path), use_uvloop=use_uvloop
        )
    report = summarize(results, n=n, config=config, loop=loop_name(use_uvloop))
    report["target"] = target or "embedded"
    # Errors nobody asked for make the figures those of failures: exit 1, and when no
    # URL was fetched at all, no figures.
    unexpected = unexpected_errors(report, injected=error_rate > 0 and not target)
    if report["ok"] or not unexpected:
        if json_out:
            sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
            sys.stdout.flush()
        else:
            render(report, Console())
    if unexpected:
        failed = sum(unexpected.values())
        kinds = ", ".join(f"{kind}: {count}" for kind, count in unexpected.items())
        where = report["target"] if target else "the embedded server"
        verdict = "no URL was fetched" if not report["ok"] else "the figures include them"
        fail(
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
