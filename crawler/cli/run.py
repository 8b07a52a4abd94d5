"""A run of ``fetch`` or ``crawl`` from its config: the paths checked first, the engine on
its event loop, then the summary and the exit status. Also the event loop ``serve`` and
``bench`` run on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import stat
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec.structs
import orjson
import typer

from crawler import signals
from crawler.cli.app import EXIT_FAILED_RECORDS, EXIT_INTERRUPTED, EXIT_OK, drop_stderr
from crawler.cli.options import NO_UVLOOP_ENV, RunOptions
from crawler.config import RunConfig
from crawler.errors import UsageError
from crawler.inputs import Source
from crawler.paths import (
    Named,
    Place,
    check_distinct,
    check_places,
    session_places,
    state_places,
    stdio,
    write_now,
)
from crawler.runner import Runner
from crawler.summary import plain_text, summary_of

if TYPE_CHECKING:
    from rich.console import Console

PROGRESS_INTERVAL_ENV: Final = "CRAWLER_PROGRESS_INTERVAL"  # seconds between status lines

T = TypeVar("T")

# ``--stats-json -``: the summary goes to standard output (compared by identity: ``./-``
# names a file called ``-``).
STATS_TO_STDOUT: Final = Path("-")


def stdout_dashes(opts: RunOptions) -> tuple[RunOptions, Path | None]:
    """``-o -`` and ``--stats-json -`` mean standard output, as ``-`` does for curl's ``-o``:
    the options with ``-o -`` as no ``-o``, and where the summary goes.

    Standard output carries nothing but records: the summary may go there only when the
    records go to a file (it is written after the run, so it would end the JSONL stream
    with an object of another shape)."""
    output, stats_json = opts.output, opts.stats_json
    if output == "-":
        opts = msgspec.structs.replace(opts, output=None)
        output = None
    if stats_json is None:
        return opts, None
    if stats_json != "-":
        if stats_json.endswith(os.sep):  # Path() would drop the slash: a file "dir" made
            raise UsageError(f"cannot write --stats-json {stats_json!r}: names a directory")
        return opts, Path(stats_json)
    if output is None:
        raise UsageError(
            "--stats-json - needs -o PATH: standard output carries the records "
            "(or give --stats-json a file)"
        )
    return opts, STATS_TO_STDOUT


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


def note_terminal_stdin(files: list[str], quiet: bool) -> None:
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


def _rich_wanted(progress: bool | None) -> bool:
    """Is rich the writer of stderr? For a terminal (as rich tells one: TTY_COMPATIBLE and
    FORCE_COLOR first), and for --progress's status lines; otherwise the summary is plain
    text (crawler.summary) and rich is never loaded."""
    if progress:
        return True
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force != ""
    return os.isatty(2)


def _write_stderr(text: str) -> None:
    """Write ``text`` to stderr; if nobody reads it any more, stop talking (as
    crawler.cli.console does): the run's exit status stands."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BrokenPipeError:
        drop_stderr()


def _per_host_notice(config: RunConfig, console: Console | None) -> Callable[[], None] | None:
    """A one-line note, once a run, when workers wait while URLs wait for a busy host:
    ``-c 200`` on a one-host list shows 8 in flight, and the user should know why."""
    limits = config.limits
    if not (limits.adaptive or 0 < limits.per_host < limits.concurrency):
        return None
    bound = f"--per-host {limits.per_host}" if limits.per_host else "no --per-host"
    if limits.adaptive:
        bound += ", lowered by --adaptive"
    text = (
        f"crawler: note: workers are idle while URLs wait for a busy host: the per-host limit "
        f"({bound}), not -c {limits.concurrency}, bounds the requests in flight"
    )

    def notice() -> None:
        if console is not None and console.is_terminal:  # a live line: print above it
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        # Written from the event loop: never block it on a stderr nobody reads (a pipe
        # polls writable with at least PIPE_BUF bytes free, more than this line).
        data = (text + "\n").encode()
        with contextlib.suppress(OSError, ValueError):
            if select.select([], [2], [], 0)[1]:
                os.write(2, data[: select.PIPE_BUF])

    return notice


def run_pipeline(
    config: RunConfig,
    source: Source,
    identity: dict[str, Any],
    *,
    opts: RunOptions,
    inputs: list[Named],
    stats_json: Path | None,
) -> None:
    """What fetch and crawl share: the paths checked, the run (``crawler.runner``) on its
    event loop with the CLI's progress and notes, then the summary and exit status."""
    state, quiet = opts.state, opts.quiet
    _check_paths(config, inputs, state=state, stats_json=stats_json)
    console = None
    if not quiet and _rich_wanted(opts.progress):  # rich (~60 ms): a terminal's, or --progress
        from crawler.cli.console import StderrConsole

        console = StderrConsole(stderr=True)
    show_progress = console is not None and _progress_wanted(config, console, opts.progress)

    runner = Runner(
        config,
        source,
        state=None if state is None else str(state),
        identity=identity,
        handle_signals=True,
        progress=console if show_progress else None,
        progress_interval=_progress_interval(),
        notice=None if quiet else _per_host_notice(config, console),
    )
    result = run_loop(runner.run, use_uvloop=want_uvloop(opts.no_uvloop), takes_signals=True)
    if not quiet and not result.output_closed and not _summary_would_block(config, result):
        shown = {"interrupted": result.interrupted, "timed_out": result.timed_out}
        if console is not None:
            from crawler.progress import render_summary

            render_summary(result.snapshot, console, **shown, state=state is not None)
        else:
            _write_stderr(plain_text(summary_of(result.snapshot, **shown, state=state is not None)))
    if stats_json is not None:
        payload = result.snapshot.to_dict()
        payload["interrupted"] = result.interrupted
        payload["timed_out"] = result.timed_out
        try:
            data = orjson.dumps(payload, option=orjson.OPT_INDENT_2)
            if stats_json is STATS_TO_STDOUT:
                _write_stdout(data + b"\n")
            else:
                write_now(str(stats_json), data)
        except OSError as exc:
            raise UsageError(
                f"cannot write --stats-json {str(stats_json)!r}: {exc.strerror}"
            ) from None
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.output_closed:
        raise typer.Exit(EXIT_OK)
    if opts.fail_on_error and result.snapshot.failed:
        raise typer.Exit(EXIT_FAILED_RECORDS)


def _progress_wanted(config: RunConfig, console: Console, progress: bool | None) -> bool:
    """Progress on stderr: by default when it is a terminal (a live line), with
    --progress also when it is not (a status line every few seconds). Never while the
    records go to that same terminal: a line redrawn in place, or one written between
    two partial writes of a record, would splice into the records."""
    if progress is None:  # -v writes heads on stderr: a live line would tear them
        progress = console.is_terminal and not config.fetch.verbose
    if not progress:
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


def _check_paths(
    config: RunConfig, inputs: list[Named], *, state: Path | None, stats_json: Path | None
) -> None:
    """Before anything is opened for writing: every file written is a new name, distinct
    from the inputs and from each other, and can be written where it is (found now, not
    after the run; said as the OS says it, naming the path)."""
    outputs = []
    places: list[Place] = []  # everything the run will write
    if config.sink.output is not None:
        outputs.append(Named("-o", config.sink.output))
        places.append(Place("write output", config.sink.output))
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
        places.append(Place("write --stats-json", str(stats_json)))
    if config.store.warc is not None:
        places.append(Place("write --warc", config.store.warc))
    if config.store.save_dir is not None:
        places.append(Place("use --save-dir", config.store.save_dir, directory=True))
    if state is not None:
        named, writes = state_places(str(state))
        outputs += named
        places += writes
    sessions = (("--cookie-jar", config.fetch.cookie_jar), ("--etags", config.fetch.etags))
    for option, path in sessions:
        if path is not None:
            outputs.append(Named(option, path))
            places += session_places(option, path)
    check_distinct(inputs, outputs, warc=config.store.warc, save_dir=config.store.save_dir)
    check_places(places)
    if config.fetch.session_state or config.fetch.cacert or config.fetch.cert:
        from crawler.sessions import check_session_files  # late: aiohttp, only if needed

        check_session_files(config.fetch)  # TLS files usable; the jar and --etags files ours


def run_loop(
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
    if factory is None:
        from crawler.session import small_tls_reads

        small_tls_reads()
    # Everything allocated so far (imports, option parsing) lives for the whole run:
    # freezing it keeps the garbage collector from rescanning it over and over. Not
    # collected first: a full pass costs ~50 ms for ~0.4 MiB of start-up's garbage (class
    # building's); the collector is off until now when started as ``crawler`` (__main__).
    gc.freeze()
    gc.enable()
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


def want_uvloop(no_uvloop: bool) -> bool:
    return not (no_uvloop or os.environ.get(NO_UVLOOP_ENV))
