"""``crawler collect``: a Redis job's records, each exactly once, to a file (resumable:
see ``crawler.collect``) or standard output."""

from __future__ import annotations

from typing import Annotated, Final

import typer

from crawler.cli.app import app
from crawler.errors import UsageError
from crawler.helptext import ManCommand

MAX_BATCH: Final = 100_000

RedisURL = Annotated[
    str,
    typer.Option(
        "--redis",
        metavar="URL",
        help="The Redis server holding the job: redis://[:PASSWORD@]HOST[:PORT][/DB].",
    ),
]
JobName = Annotated[
    str, typer.Option("--job", metavar="NAME", help="The job's name (letters, digits, _.:-).")
]


@app.command(cls=ManCommand, short_help="Write a Redis job's records, each exactly once.")
def collect(
    redis: RedisURL,
    job: JobName,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="PATH",
            show_default="standard output",
            help="Append the records to PATH; killed and run again with the same PATH, "
            "it goes on where it stopped (PATH.collect records how far).",
        ),
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            "--batch", min=1, max=MAX_BATCH, metavar="N", help="Records read and written at once."
        ),
    ] = 1_000,
) -> int:
    """Write the records of job NAME (JSONL, in the order they were committed), each
    exactly once, until the job is finished and every record is written; exit 0. What is
    written is then removed from Redis: run one collect per job. SIGINT/SIGTERM: the batch
    being written is finished, exit 130."""
    from crawler.cli.run import run_loop
    from crawler.collect import collect as run_collect
    from crawler.redisjob import JobError

    path = None if output in (None, "-") else output
    try:
        return run_loop(
            lambda: run_collect(redis, job, path, batch=batch),
            use_uvloop=False,
            takes_signals=True,
        )
    except JobError as exc:
        raise UsageError(str(exc)) from None
