"""Circuit breaker state machine with a fake clock."""

from __future__ import annotations

from crawler.breaker import Breaker, State


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_consecutive_failures() -> None:
    b = Breaker(threshold=3, cooldown=10, clock=Clock())
    for _ in range(2):
        assert b.allow()
        b.record(failure=True)
    b.record(failure=False)  # a success resets the count
    for _ in range(2):
        b.record(failure=True)
    assert b.state is State.CLOSED
    b.record(failure=True)
    assert b.state is State.OPEN
    assert not b.allow()


def test_half_open_allows_a_single_probe_then_closes_on_success() -> None:
    clock = Clock()
    b = Breaker(threshold=1, cooldown=10, clock=clock)
    b.record(failure=True)
    clock.now = 9.9
    assert not b.allow()
    clock.now = 10.0
    assert b.allow()  # the probe
    assert b.state is State.HALF_OPEN
    assert not b.allow()  # everyone else is refused while the probe is out
    b.record(failure=False)
    assert b.state is State.CLOSED and b.allow() and b.allow()


def test_failed_probe_reopens_for_another_cooldown() -> None:
    clock = Clock()
    b = Breaker(threshold=2, cooldown=5, clock=clock)
    b.record(True)
    b.record(True)
    clock.now = 5
    assert b.allow()
    b.record(True)
    assert b.state is State.OPEN
    clock.now = 9
    assert not b.allow()
    clock.now = 10
    assert b.allow()


def test_cancelled_probe_lets_another_probe_through() -> None:
    clock = Clock()
    b = Breaker(threshold=1, cooldown=1, clock=clock)
    b.record(True)
    clock.now = 1
    assert b.allow()
    b.release_probe()
    assert b.allow()


def test_forgettable_only_when_stale() -> None:
    clock = Clock()
    b = Breaker(threshold=3, cooldown=5, clock=clock)
    assert b.forgettable(clock.now)
    b.record(True)
    assert not b.forgettable(clock.now)
    assert b.forgettable(clock.now + 5)
    b.record(True)
    b.record(True)
    assert b.state is State.OPEN
    assert not b.forgettable(clock.now + 4)
    assert b.forgettable(clock.now + 5)
