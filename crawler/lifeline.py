"""Child processes (storage writers, the link parser) end when their parent dies.

A parent killed with SIGKILL runs no clean-up, so its children must notice on their own.
Two mechanisms, because each has a gap:

- ``PR_SET_PDEATHSIG`` (Linux): the kernel sends the child SIGKILL when the *thread* that
  started it exits. Immediate, but tied to a thread, not the process: a child started from
  a worker thread (an executor's) would be killed when that thread ends.
- a daemon thread in the child that watches ``os.getppid()``: when the parent dies the
  child is re-parented (to init or a subreaper), so its parent id changes. Works for any
  thread of the parent, on any POSIX system, within ``interval`` seconds.

The first is therefore set only when asked (the caller knows which thread starts the child);
the second always runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from typing import Final

_PR_SET_PDEATHSIG: Final = 1
_POLL_INTERVAL: Final = 0.25


def die_with_parent(parent_pid: int, *, pdeathsig: bool = False) -> None:
    """In a child process: exit as soon as ``parent_pid`` (our parent) is gone.

    Call it first thing in the child (an executor's ``initializer``), with the parent's
    pid taken in the parent (``os.getpid()`` there), so a parent that died before this
    call is noticed too."""
    if pdeathsig and sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(
        target=_watch, args=(parent_pid,), name="crawler-lifeline", daemon=True
    ).start()


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(_POLL_INTERVAL)
        if os.getppid() != parent_pid:
            # Nobody is left to read what we would write: end now, without clean-up
            # (atexit handlers and buffered files belong to a run that is over).
            os._exit(1)
