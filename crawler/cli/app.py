"""The typer app and the entry point: one-line errors, and the contract's exit statuses.

Exit statuses: 0 done · 1 done, ``--fail-on-error`` and some record not ok · 2 usage
error (one line on stderr, no traceback) · 130 interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from typing import Annotated, Final, NoReturn

import typer
from typer._click.exceptions import NoArgsIsHelpError

from crawler import __version__, signals
from crawler.config import ConfigError
from crawler.errors import UsageError
from crawler.helptext import ManGroup

EXIT_OK: Final = 0
EXIT_FAILED_RECORDS: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

# Each command's module in crawler.cli, imported (and so registered with the app) when
# the command is run: the others' option declarations and imports are not a run's cost.
COMMAND_MODULES: Final = {
    "fetch": "commands",
    "crawl": "commands",
    "config": "configcmd",
    "serve": "tools",
    "bench": "tools",
    "enqueue": "rediswork",
    "worker": "rediswork",
    "collect": "collectcmd",
    "status": "statuscmd",
}

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


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """``crawler: error: MESSAGE`` on stderr, and exit with ``code``."""
    try:
        sys.stderr.write(f"crawler: error: {message}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        drop_stderr()  # the exit status still says what happened
    raise SystemExit(code)


def drop_stderr() -> None:
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


def _group(args: list[str]) -> typer._click.Command:
    """The app as a click group. When ``args`` start with a command's name (``crawler
    fetch ...``), only its module is imported and the group holds that command only:
    typer would build the options of every command, several times what the run parses.
    What the others are there for (the group's own help, a mistyped command's
    suggestion) needs a first word that is not a command's name, and gets them all."""
    first = args[0] if args else ""
    wanted = [COMMAND_MODULES[first]] if first in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in sorted(set(wanted)):
        importlib.import_module(f"crawler.cli.{module}")
    chosen = [
        info
        for info in app.registered_commands
        if info.callback is not None
        and (info.name or typer.main.get_command_name(info.callback.__name__)) == first
    ]
    if not chosen:
        return typer.main.get_command(app)
    only = copy.copy(app)  # the same settings and callback, one command
    only.registered_commands = chosen
    return typer.main.get_command(only)


def _main(argv: list[str] | None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    command = _group(args)
    try:
        code = command.main(args=args, prog_name="crawler", standalone_mode=False)
    except NoArgsIsHelpError:  # bare `crawler`: the help, on stdout, and exit 0
        command.main(args=["--help"], prog_name="crawler", standalone_mode=False)
        return EXIT_OK
    except typer.TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        fail(" ".join(message.split()))
    except UsageError as exc:
        fail(str(exc))
    except ConfigError as exc:  # a value the config refused: named as the option was typed
        fail(exc.naming(f"--{exc.option.replace('_', '-')}") if exc.option else str(exc))
    except (typer.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    return code if isinstance(code, int) else EXIT_OK
