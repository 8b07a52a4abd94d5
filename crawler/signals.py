"""Stop signals before (and after) the engine handles them: remembered, never a traceback.

Python's default SIGINT handler raises ``KeyboardInterrupt`` between any two bytecodes,
also in the middle of importing a C extension (where it has crashed the interpreter) or
of an ``except`` block; SIGTERM, SIGHUP and SIGQUIT kill outright. So the program starts
by ``defer()``-ing them: a signal then only sets a flag, and whoever runs next decides what
it means (the engine stops the run as if the signal came now, the CLI exits 130). Signals
a parent set to be ignored (``nohup``, a background job of a shell script) stay ignored.

This module is imported first thing, so at run time it imports only the built-in
``_signal`` (no file to load, no ``enum``): the window before ``defer()`` stays tiny.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from asyncio import AbstractEventLoop
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

    _Handler = Callable[[int, FrameType | None], Any] | int | _signal.Handlers | None
else:
    import _signal

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(_signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    if hasattr(_signal, name)
)

_saved: dict[int, _Handler] = {}
_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def handled(sig: int) -> bool:
    """False when the signal is ignored (set so by our parent): leave it ignored."""
    return bool(_signal.getsignal(sig) != _signal.SIG_IGN)


def defer() -> None:
    """From now on a stop signal only sets a flag (see ``pending``). Main thread only."""
    for sig in STOP_SIGNALS:
        current = _signal.getsignal(sig)
        if current == _signal.SIG_IGN or current is _remember:
            continue
        _saved.setdefault(sig, current)
        _signal.signal(sig, _remember)


def take_over(
    loop: AbstractEventLoop, handler: Callable[[], object], previous: dict[int, Any]
) -> None:
    """Handle the stop signals (those not ignored) in ``loop``, by calling ``handler``;
    ``previous`` gets the handlers replaced, as they are replaced (see ``give_back``)."""
    for sig in STOP_SIGNALS:
        if handled(sig):
            replaced = _signal.getsignal(sig)
            loop.add_signal_handler(sig, handler)
            previous[sig] = replaced


def give_back(loop: AbstractEventLoop, previous: dict[int, Any]) -> None:
    """Undo ``take_over``: the loop lets go of the signals, the old handlers return."""
    for sig, handler in previous.items():
        loop.remove_signal_handler(sig)
        if handler is not None:
            _signal.signal(sig, handler)


def restore() -> None:
    """Put back the handlers ``defer()`` replaced (pending signals stay pending)."""
    for sig, handler in list(_saved.items()):
        if _signal.getsignal(sig) is _remember:
            _signal.signal(sig, _signal.SIG_DFL if handler is None else handler)
        del _saved[sig]


def ignore() -> None:
    """For the very end (``crawler.__main__``): stop signals are ignored from now on. Late
    in its finalization Python puts the default action back for every signal with a Python
    handler (ours: deferred), and a signal then killed the process after it had finished
    everything: status -SIGTERM (a shell's 143) instead of the run's 0 or 130. An ignored
    signal is left alone there; blocking would not do, as threads of libraries (uvloop's
    pool) would take the signal."""
    for sig in STOP_SIGNALS:
        _signal.signal(sig, _signal.SIG_IGN)


def pending() -> int:
    """Stop signals received while deferred, not yet taken."""
    return len(_pending)


def take() -> int:
    """The number of pending stop signals; they are no longer pending."""
    n = len(_pending)
    _pending.clear()
    return n


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, with SIGHUP and SIGQUIT blocked.

    The tracker (a child shared by our process pools) ignores SIGINT and SIGTERM but not
    the other signals a terminal sends to the whole process group: a hang-up or Ctrl-\\
    would kill it mid-run, and the pools' clean-up would then print tracebacks. It keeps
    the signal mask it is started with, so blocked there they never reach it; here they
    are only delayed until it is started."""
    import signal
    from multiprocessing import resource_tracker

    group = {getattr(signal, name) for name in ("SIGHUP", "SIGQUIT") if hasattr(signal, name)}
    if not group or not hasattr(signal, "pthread_sigmask"):
        resource_tracker.ensure_running()
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, group)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
