"""``crawler fetch`` and ``crawler crawl``: their own arguments and options; the options
they share are in ``crawler.cli.options``, the run they share in ``crawler.cli.run``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crawler.cli.app import app
from crawler.cli.optionlists import CRAWL_OPTIONS, FETCH_OPTIONS
from crawler.cli.options import CRAWL_DEFAULTS, RunOptions
from crawler.cli.signature import run_options
from crawler.config import RunConfig
from crawler.errors import UsageError
from crawler.helptext import ManCommand

if TYPE_CHECKING:  # a run's modules (asyncio, rich, the engine) load with it, not for --help
    from crawler.inputs import LineSource, SeedSource

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
@run_options(*FETCH_OPTIONS)
def fetch(
    input: InputArgs = None,  # noqa: A002 - the contract's name for it
    *,
    opts: RunOptions,
) -> None:
    """Fetch every URL given, and every URL of the files given, once; write one JSON record
    per URL (JSONL) to standard output. With no URL or file, URLs are read from standard
    input."""
    from crawler.cli.run import stdout_dashes
    from crawler.inputs import LineSource, SeedSource, split_arguments

    if opts.state is not None and opts.no_dedup:
        raise UsageError("--state cannot be combined with --no-dedup: resume is keyed by URL")
    opts, stats_path = stdout_dashes(opts)
    config = opts.config()
    urls, files = split_arguments(input or ())
    if not urls and not files:
        files = ["-"]
    max_line = config.input.max_line_bytes
    source: LineSource | SeedSource
    if not urls and len(files) == 1:  # the identity --state files have always had
        source = LineSource(files[0], max_line_bytes=max_line)
    else:
        source = SeedSource(urls, [LineSource(f, max_line_bytes=max_line) for f in files])
    _run(config, source, files, "INPUT", opts, stats_path)


Scope = Annotated[
    str,
    typer.Option(
        "--scope",
        metavar="host|domain|prefix",
        help="Follow links on the seeds' hosts, their domains, or under their URL prefix.",
    ),
]


@app.command(cls=ManCommand, short_help="Crawl from seed URLs, following links in scope.")
@run_options(*CRAWL_OPTIONS)
def crawl(
    seeds: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SEED|FILE",
            show_default="standard input",
            help="Seed URLs (with their scheme), or files of seed URLs ('-': standard input).",
        ),
    ] = None,
    scope: Scope = CRAWL_DEFAULTS["scope"],
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
    ] = CRAWL_DEFAULTS["max_depth"],
    max_pages: Annotated[
        int | None,
        typer.Option(
            "--max-pages", min=1, metavar="N", show_default="none", help="Stop after N pages."
        ),
    ] = CRAWL_DEFAULTS["max_pages"],
    assets: Annotated[
        bool, typer.Option("--assets", help="Also fetch images, scripts, stylesheets, media.")
    ] = CRAWL_DEFAULTS["assets"],
    ignore_robots: Annotated[
        bool,
        typer.Option("--ignore-robots", help="Ignore robots.txt, meta robots and rel=nofollow."),
    ] = not CRAWL_DEFAULTS["obey_robots"],
    sitemaps: Annotated[
        bool, typer.Option("--sitemaps", help="Seed from the Sitemap: lines of robots.txt.")
    ] = CRAWL_DEFAULTS["sitemaps"],
    sitemap: Annotated[
        list[str] | None,
        typer.Option("--sitemap", metavar="URL", help="Seed from this sitemap."),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis", metavar="URL", help="Make a crawl job on this Redis server (see worker)."
        ),
    ] = None,
    job: Annotated[
        str | None, typer.Option("--job", metavar="NAME", help="The Redis job's name.")
    ] = None,
    *,
    opts: RunOptions,
) -> None:
    """Crawl from the seeds: follow links within a scope, politely; one JSON record per page.
    With no seed, seed URLs are read from standard input. With --redis and --job, make a
    crawl job of the seeds for workers (crawler worker) instead."""
    from crawler.cli.run import stdout_dashes
    from crawler.inputs import LineSource, SeedSource, split_arguments

    opts, stats_path = stdout_dashes(opts)
    own = {
        "scope": scope,
        "include": include,
        "exclude": exclude,
        "depth": depth,
        "max_pages": max_pages,
        "assets": assets,
        "ignore_robots": ignore_robots,
        "sitemaps": sitemaps,
        "sitemap": sitemap,
    }
    if redis is not None or job is not None:
        from crawler.cli.rediswork import make_crawl

        make_crawl(redis, job, seeds or [], own, opts)
        return
    config = opts.config(crawl=own)
    urls, files = split_arguments(seeds or ())
    if not urls and not files and not sitemap:
        files = ["-"]
    max_line = config.input.max_line_bytes
    source = SeedSource(urls, [LineSource(f, max_line_bytes=max_line) for f in files])
    _run(config, source, files, "SEEDS file", opts, stats_path)


def _run(
    config: RunConfig,
    source: LineSource | SeedSource,
    files: list[str],
    what: str,
    opts: RunOptions,
    stats_path: Path | None,
) -> None:
    """What fetch and crawl do once their input is known: open it, say so if it is a
    terminal, run."""
    from crawler.cli.run import note_terminal_stdin, run_pipeline
    from crawler.paths import inputs as input_files

    source.open()
    note_terminal_stdin(files, opts.quiet)
    run_pipeline(
        config,
        source,
        source.identity(),
        opts=opts,
        inputs=input_files(what, files),
        stats_json=stats_path,
    )
