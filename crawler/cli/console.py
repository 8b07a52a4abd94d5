"""The console the progress display and summary write to (rich): imported only when a run
shows one of them, so ``-q`` never loads rich."""

from __future__ import annotations

from rich.console import Console

from crawler.cli.app import drop_stderr


class StderrConsole(Console):
    """The progress display and summary, on stderr. When nobody reads stderr any more
    (``2>&1 | head -1``), rich's default points fd 1 (our records!) at /dev/null and
    exits 1 (also mid-run); this one only stops talking, and the run's status stands."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        drop_stderr()
