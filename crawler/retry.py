"""Retry policy: which outcomes are retried, the back-off schedule, Retry-After, deadlines.

Everything here is pure (clock and random source injected) so tests need no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

RETRY_STATUSES: Final = frozenset((408, 425, 429, 500, 502, 503, 504))


def backoff_delay(attempt: int, base: float, cap: float, rand: float) -> float:
    """The wait before retry number ``attempt`` (1-based); ``rand`` is uniform in [0, 1)."""
    return rand * min(cap, base * 2.0 ** (attempt - 1))


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime  # ~10 ms, only for an HTTP-date

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())


class Deadline:
    """One deadline per URL, shared by every attempt and back-off wait."""

    __slots__ = ("_clock", "expires", "started")

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.started = clock()
        self.expires = self.started + timeout

    def remaining(self) -> float:
        return self.expires - self._clock()

    def elapsed(self) -> float:
        return self._clock() - self.started

    def allows_wait(self, delay: float, margin: float = 0.0) -> bool:
        """True if waiting ``delay`` seconds still leaves time (``margin``) for an attempt."""
        return self._clock() + delay + margin < self.expires
