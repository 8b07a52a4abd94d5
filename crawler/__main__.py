"""``python -m crawler`` and the ``crawler`` console script: one entry point.

Stop signals are deferred before anything heavy is imported (see ``crawler.signals``):
a Ctrl-C while orjson, rich or aiohttp load must not interrupt their import (a traceback,
at worst a crash); it is remembered, and the run that follows stops at once.

``crawler --version`` alone is answered here: typer and the option declarations it would
load first cost ~0.2 s for one line. Everything else goes to the typer app.
"""

import gc
import os
import sys

from crawler import __version__, signals


def main() -> None:
    signals.defer()
    # Start-up (imports, options) allocates objects that live for the whole run: the
    # collector's ~100 passes over them found nothing and cost ~10% of a one-URL fetch.
    # ``crawler.cli.run.run_loop`` freezes them and turns it back on.
    gc.disable()
    try:
        if sys.argv[1:] == ["--version"]:
            raise SystemExit(_version())
        from crawler.cli import main as cli_main

        cli_main()
    finally:
        signals.ignore()  # the exit status is ours, whatever comes now (see there)


def _version() -> int:
    """What the app's ``--version`` prints (``crawler.cli.app``); exit status 0, also when
    the reader of standard output went away (as for records)."""
    try:
        sys.stdout.write(f"crawler {__version__}\n")
        sys.stdout.flush()
    except BrokenPipeError:  # no flush at exit may fail again: fd 1 becomes /dev/null
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return 0


if __name__ == "__main__":
    main()
