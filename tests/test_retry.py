"""Back-off schedule, Retry-After parsing and the per-URL deadline."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from crawler.retry import (
    RETRY_STATUSES,
    Deadline,
    backoff_delay,
    parse_retry_after,
)


def test_retry_set_matches_the_contract() -> None:
    assert {408, 425, 429, 500, 502, 503, 504} == RETRY_STATUSES


def test_backoff_caps_grow_exponentially() -> None:
    caps = [round(backoff_delay(n, 0.5, 8.0, 0.999999), 3) for n in range(1, 7)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@given(st.integers(1, 30), st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_in_range(attempt: int, r: float) -> None:
    d = backoff_delay(attempt, 0.25, 10.0, r)
    assert 0 <= d < min(10.0, 0.25 * 2 ** (attempt - 1)) + 1e-9


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    date = format_datetime(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(date, now=lambda: now) == 30.0
    past = format_datetime(datetime(2025, 1, 1, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(past, now=lambda: now) == 0.0


def test_retry_after_garbage_is_ignored() -> None:
    for value in (None, "", "soon", "-5", "1.5e3", "Mon, 99 Foo 2026"):
        assert parse_retry_after(value) is None


def test_deadline_is_shared_and_bounds_waits() -> None:
    now = [0.0]
    d = Deadline(10.0, lambda: now[0])
    now[0] = 4.0
    assert d.remaining() == 6.0 and d.elapsed() == 4.0
    assert d.allows_wait(5.9)
    assert not d.allows_wait(6.0)
    assert not d.allows_wait(5.0, margin=1.0)
