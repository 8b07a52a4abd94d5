"""Per-host circuit breaker: closed -> open -> half-open -> closed.

- closed: requests pass; ``threshold`` consecutive failures (connect errors, timeouts,
  5xx; never 4xx) open it.
- open: every request is refused at once (the URL gets a ``circuit_open`` record; it does
  not wait out the cooldown). After ``cooldown`` seconds the next request becomes the probe.
- half-open: exactly one probe is in flight; other requests are refused. The probe's
  success closes the breaker, its failure opens it for another cooldown.

A breaker remembers why it opened: the kind and message of the last failure, and
whether the consecutive failures were all of that kind (``reason()``, which the
``circuit_open`` record's message quotes).

The breaker never awaits: ``allow()`` and ``record()`` are plain state changes, so no lock
is needed and none is ever held across a request.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = (
        "_clock",
        "cooldown",
        "failures",
        "last_failure",
        "last_kind",
        "last_message",
        "mixed",
        "opened_at",
        "probing",
        "state",
        "threshold",
    )

    def __init__(self, threshold: int, cooldown: float, clock: Callable[[], float]) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self.state = State.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.last_failure = 0.0
        self.last_kind = ""  # error kind and message of the last failure
        self.last_message = ""
        self.mixed = False  # the consecutive failures were not all of last_kind
        self.probing = False

    def allow(self) -> bool:
        """May a request go to this host now? In half-open, True means "you are the probe"."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            if self._clock() - self.opened_at < self.cooldown:
                return False
            self.state = State.HALF_OPEN
            self.probing = True
            return True
        # HALF_OPEN: one probe at a time.
        if self.probing:
            return False
        self.probing = True
        return True

    def record(self, failure: bool, kind: str = "", message: str = "") -> None:
        """Report the outcome of a request that ``allow()`` let through; a failure's
        error ``kind`` and ``message`` are kept for ``reason()``."""
        if failure:
            if self.failures and kind != self.last_kind:
                self.mixed = True
            self.last_kind, self.last_message = kind, message
            self.failures += 1
            self.last_failure = self._clock()
            if self.state is State.HALF_OPEN or (
                self.threshold and self.failures >= self.threshold
            ):
                self.state = State.OPEN
                self.opened_at = self._clock()
            self.probing = False
        else:
            self.failures = 0
            self.mixed = False
            self.state = State.CLOSED
            self.probing = False

    def reason(self) -> str:
        """Why requests are refused: "after 5 consecutive connect errors: Connection
        refused" (the message is the last failure's)."""
        n = self.failures
        if self.mixed:
            what = f"{n} consecutive failures, the last a {self.last_kind} error"
        else:
            what = f"{n} consecutive {self.last_kind} error{'s' if n != 1 else ''}"
        return f"after {what}: {self.last_message}" if self.last_message else f"after {what}"

    def release_probe(self) -> None:
        """The probe ended with no verdict (e.g. cancelled): let another request probe."""
        if self.state is State.HALF_OPEN:
            self.probing = False

    def forgettable(self, now: float) -> bool:
        """May this breaker be dropped and later rebuilt fresh (closed, no failures)?

        Yes when it holds nothing, or when its memory has gone stale: failures older
        than a cooldown, or an open period that has run out (the next request would be
        a probe anyway). This bounds breaker state for lists of a million dead hosts.
        """
        if self.state is State.CLOSED:
            return self.failures == 0 or now - self.last_failure >= self.cooldown
        if self.state is State.OPEN:
            return now - self.opened_at >= self.cooldown
        return False
