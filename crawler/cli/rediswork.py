"""``crawler enqueue`` and ``crawler worker``: a job shared through Redis (``--redis URL
--job NAME``; crawler.redisjob). ``enqueue`` makes the job with the run options given to
it (kept with the job, by their long names, as a config file has them) and feeds it
URLs; each ``worker`` takes those options, its own flags winning, and works on the job
(crawler.redisworker)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from crawler.cli.app import app
from crawler.cli.optionlists import FETCH_OPTIONS
from crawler.cli.options import RunOptions
from crawler.cli.signature import run_options
from crawler.errors import UsageError
from crawler.helptext import ManCommand

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crawler.redisjob import Job

# Options of one process, not of the job (where its records go, how it reports).
_NOT_THE_JOB: Final = frozenset(
    (
        *("output", "stats_json", "state", "progress", "quiet", "fail_on_error", "no_uvloop"),
        *("workers", "no_dedup", "save_dir", "warc", "warc_max_size"),
    )
)
JOB_OPTIONS: Final = tuple(n for n in FETCH_OPTIONS if n not in _NOT_THE_JOB)

RedisURL = Annotated[
    str,
    typer.Option("--redis", metavar="URL", help="The Redis server: redis://HOST[:PORT][/DB]."),
]
JobName = Annotated[str, typer.Option("--job", metavar="NAME", help="The job's name.")]


def job_options(opts: RunOptions) -> dict[str, Any]:
    """The job's run options: those not at their defaults, by their long names."""
    default = RunOptions()
    kept: dict[str, Any] = {}
    for name in JOB_OPTIONS:
        value = getattr(opts, name)
        if value != getattr(default, name):
            kept[name] = str(value) if isinstance(value, Path) else value
    return kept


def from_job(options: dict[str, Any], **flags: Any) -> RunOptions:
    """A worker's RunOptions: the job's, then the worker's own ``flags`` (not None)."""
    types = RunOptions.__annotations__  # strings: `from __future__ import annotations`
    values: dict[str, Any] = {}
    for name, value in options.items():
        if name in types and name in JOB_OPTIONS:
            is_path = "Path" in types[name] and isinstance(value, str)
            values[name] = Path(value) if is_path else value
    values.update({k: v for k, v in flags.items() if v is not None})
    return RunOptions(**values)


async def _open(url: str, name: str, *, block_ms: int = 0) -> Job:
    from crawler.redisjob import Job, check_name, connect

    check_name(name)
    return Job(await connect(url, block_ms=block_ms), name)


@contextlib.asynccontextmanager
async def _feeding(job: Job, me: str) -> AsyncIterator[None]:
    """A live feeder from before the job is made until its URLs are in: a worker started
    at the same time never finds it made and empty (finished) and ends."""
    from crawler.redisfeed import FEEDER_TTL_MS
    from crawler.redislease import redis_errors

    await job.beat("feeders", me, FEEDER_TTL_MS)
    try:
        yield
    finally:
        with contextlib.suppress(*redis_errors()):  # else it lapses in 10 s
            await job.beat("feeders", me, 0)


def _run_job(coro: Any, *, engine: bool = False) -> Any:
    """Run ``coro``; ``engine``: a worker's run, on the loop ``crawler fetch`` has (uvloop
    unless CRAWLER_NO_UVLOOP=1; start-up's objects frozen, the collector on again:
    crawler.cli.run.run_loop), the engine taking the stop signals."""
    import asyncio  # here: `crawler --help` loads no run

    from redis.exceptions import RedisError

    from crawler.redisjob import JobError

    try:
        if engine:
            from crawler.cli.run import run_loop, want_uvloop

            return run_loop(lambda: coro, use_uvloop=want_uvloop(False), takes_signals=True)
        return asyncio.run(coro)
    except JobError as exc:
        raise UsageError(str(exc)) from None
    except RedisError as exc:  # Redis gone mid-run (enqueue, a worker's set-up)
        raise UsageError(f"Redis failed: {exc}") from None


@app.command(cls=ManCommand, short_help="Add URLs to a job shared through Redis.")
@run_options(*JOB_OPTIONS)
def enqueue(
    input: Annotated[  # noqa: A002 - as fetch names it
        list[str] | None,
        typer.Argument(metavar="URL|FILE", show_default="standard input", help="URLs or files."),
    ] = None,
    *,
    redis: RedisURL,
    job: JobName,
    opts: RunOptions,
) -> None:
    """Add URLs (and the URLs of the files given, or of standard input) to the fetch job
    NAME on Redis, each once. The job is made if it does not exist, with the run options
    given here; workers (crawler worker) fetch its URLs."""
    from crawler.inputs import LineSource, SeedSource, split_arguments

    urls, files = split_arguments(input or ())
    if not urls and not files:
        files = ["-"]
    source = SeedSource(urls, [LineSource(f) for f in files])
    source.open()

    async def go() -> tuple[int, int]:
        from crawler.redisfeed import feed
        from crawler.redisjob import worker_id

        shared = await _open(redis, job)
        me = worker_id()
        try:
            async with _feeding(shared, me):
                await shared.create("fetch", job_options(opts))
                return await feed(shared, source, me)
        finally:
            await shared.redis.aclose()

    new, repeated = _run_job(go())
    sys.stderr.write(f"crawler enqueue: job {job}: {new} new, {repeated} duplicates\n")


def make_crawl(
    redis: str | None, job: str | None, seeds: list[str], own: dict[str, Any], opts: RunOptions
) -> None:
    """``crawler crawl SEEDS --redis URL --job NAME``: make the crawl job (its options,
    the crawl's own under ``crawl``), keep its seeds (every worker's scope) and enqueue
    them at depth 0; workers crawl it."""
    from crawler.errors import InvalidURL
    from crawler.inputs import LineSource, SeedSource, split_arguments
    from crawler.redisfeed import target

    if redis is None or job is None:
        raise UsageError("--redis and --job go together")
    if own.get("sitemaps") or own.get("sitemap"):
        raise UsageError("--sitemap and --sitemaps cannot be combined with --redis")
    opts.config(crawl=own)  # a bad option: one line now, not in every worker
    urls, files = split_arguments(seeds)
    if not urls and not files:
        files = ["-"]
    source = SeedSource(urls, [LineSource(f) for f in files])
    source.open()
    crawl = {k: v for k, v in own.items() if v not in (None, False)}
    crawl.pop("sitemaps", None)

    async def go() -> tuple[int, int]:
        from crawler.redisjob import Target
        from crawler.shards import target_of

        lines: list[str] = []
        async for batch in source.batches():
            lines += [line for line in batch if line]
        for line in lines:
            try:
                target_of(line)
            except InvalidURL:
                raise UsageError(f"invalid seed {line!r}") from None
        from crawler.redisjob import worker_id

        shared = await _open(redis, job)
        try:
            async with _feeding(shared, worker_id()):
                await shared.create("crawl", {**job_options(opts), "crawl": crawl})
                if lines:
                    await shared.redis.rpush(shared.key("seeds"), *lines)
                made = (target(line, shared.shards) for line in lines)
                new = await shared.enqueue(Target(t.fp, t.shard, t.line, 0) for t in made)
                return new, len(lines)
        finally:
            await shared.redis.aclose()

    new, given = _run_job(go())
    sys.stderr.write(f"crawler crawl: job {job}: {given} seeds, {new} enqueued\n")


@app.command(cls=ManCommand, short_help="Work on a job shared through Redis.")
def worker(
    *,
    redis: RedisURL,
    job: JobName,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", "-c", help="Requests in flight at most (the job's)."),
    ] = None,
    grace: Annotated[
        float | None, typer.Option(help="Seconds in-flight requests get after a signal.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for more URLs once the job is finished.")
    ] = False,
    lease_ttl: Annotated[float, typer.Option("--lease-ttl", hidden=True, min=0.2)] = 10.0,
    max_deliveries: Annotated[
        int,
        typer.Option(
            "--max-deliveries", min=1, help="Deliveries of a URL before it is dead-lettered."
        ),
    ] = 3,
) -> None:
    """Fetch the URLs of job NAME on Redis with the job's options (a crawl job: crawl
    from its seeds), with other workers on this or other machines, until the job is
    finished (nothing queued or in flight)."""
    from crawler.redisworker import work

    async def go() -> tuple[Any, Any]:
        from crawler.redisjob import worker_id

        shared = await _open(redis, job, block_ms=500)
        try:
            await shared.open()
            opts = from_job(shared.options, concurrency=concurrency, grace=grace)
            crawl = shared.options.get("crawl") if shared.mode == "crawl" else None
            config = opts.config(crawl=crawl)
            return await work(
                shared,
                worker_id(),
                config,
                wait=wait,
                ttl=lease_ttl,
                max_deliveries=max_deliveries,
            )
        finally:
            await shared.redis.aclose()

    result, sink = _run_job(go(), engine=True)
    sys.stderr.write(
        f"crawler worker: job {job}: {sink.committed} records committed, "
        f"{sink.refused} refused (lease lost)\n"
    )
    if result.interrupted:
        raise typer.Exit(130)
