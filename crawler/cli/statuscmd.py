"""``crawler status``: a Redis job's state (``crawler.jobstatus``), as a table on a
terminal, plain lines otherwise, or JSON."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from crawler.cli.app import app
from crawler.cli.collectcmd import JobName, RedisURL
from crawler.errors import UsageError
from crawler.helptext import ManCommand

_COUNTS = (
    ("enqueued", "enqueued"),
    ("done", "done"),
    ("failed", "failed"),
    ("dead_lettered", "dead-lettered"),
    ("refused", "refused (stale commits)"),
    ("queued", "queued"),
    ("in_flight", "in flight"),
    ("not_collected", "not yet collected"),
    ("feeders", "enqueue running"),
)


@app.command(cls=ManCommand, short_help="Show a Redis job's progress, workers and memory.")
def status(
    redis: RedisURL,
    job: JobName,
    json_out: Annotated[bool, typer.Option("--json", help="JSON on standard output.")] = False,
) -> None:
    """Show job NAME: its counts (enqueued, done, failed, dead-lettered, queued, in
    flight, not yet collected), its workers and the shards each holds, the Redis memory
    it uses, and whether it is finished."""
    from crawler.cli.run import run_loop
    from crawler.redisjob import JobError

    try:
        state = run_loop(lambda: _query(redis, job), use_uvloop=False)
    except JobError as exc:
        raise UsageError(str(exc)) from None
    try:
        if json_out:
            import orjson

            sys.stdout.write(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() + "\n")
        elif os.isatty(1):
            _table(state)
        else:
            sys.stdout.write("".join(f"{k}: {v}\n" for k, v in _lines(state)))
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


async def _query(url: str, name: str) -> dict[str, Any]:
    from redis.exceptions import RedisError

    from crawler.jobstatus import job_status
    from crawler.redisjob import Job, JobError, check_name, connect

    check_name(name)
    redis = await connect(url)
    try:
        job = Job(redis, name)
        await job.open()
        return await job_status(job)
    except (RedisError, OSError) as exc:
        raise JobError(f"Redis failed: {exc}") from None
    finally:
        await redis.aclose()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _lines(state: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [("job", state["job"]), ("mode", state["mode"]), ("shards", str(state["shards"]))]
    lines += [(label, str(state[key])) for key, label in _COUNTS]
    for w in state["workers"]:
        shards = ",".join(map(str, w["shards"])) or "-"
        live = "live" if w["live"] else "gone"
        lines.append((f"worker {w['id']}", f"{live}, {w['in_flight']} in flight, shards {shards}"))
    mem = state["memory"]
    lines += [
        ("redis memory", _mib(mem["used_memory"])),
        ("dedup memory", _mib(mem["dedup"])),
        ("queue memory", _mib(mem["queues"])),
        ("output memory", _mib(mem["out"])),
        ("finished", "yes" if state["finished"] else "no"),
    ]
    return lines


def _table(state: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"job {state['job']}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    for key, value in _lines(state):
        if not key.startswith("worker "):
            summary.add_row(key, value)
    console.print(summary)
    if state["workers"]:
        workers = Table(title="workers")
        for column in ("worker", "live", "in flight", "shards"):
            workers.add_column(column)
        for w in state["workers"]:
            shards = ",".join(map(str, w["shards"])) or "-"
            workers.add_row(w["id"], "yes" if w["live"] else "no", str(w["in_flight"]), shards)
        console.print(workers)
