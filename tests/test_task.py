"""A URL's unit of work (crawler.task.Task) and its runtime side (Item): bytes round trip,
the deadline carried across processes as wall-clock time, malformed payloads refused."""

from __future__ import annotations

import pytest

from crawler.request import Request
from crawler.retry import Deadline
from crawler.task import Item, RequestItem, Task
from crawler.urls import parse_target


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bytes_round_trip() -> None:
    for task in (
        Task("http://a.test/x?q=1", 2**64 - 1, 3, "http://a.test/", 2, 1_700_000_123.25),
        Task("https://b.test/", 0, 0, None, 0, None),
    ):
        data = task.to_bytes()
        assert isinstance(data, bytes)
        assert Task.from_bytes(data) == task


def test_a_request_travels_with_its_task() -> None:
    request = Request("POST", (("X-A", "1"), ("X-A", "2")), b"\x00\xffbody", {"row": [1]})
    task = Task("http://a.test/x", 5, 0, None, 1, None, request)
    data = task.to_bytes()
    assert data.endswith(b',["POST",[["X-A","1"],["X-A","2"]],"AP9ib2R5",{"row":[1]}]]')
    assert Task.from_bytes(data) == task
    item = Item.from_task(task, clock=Clock(0.0), wall=Clock(0.0))
    assert isinstance(item, RequestItem) and item.request == request
    assert item.task(clock=Clock(0.0), wall=Clock(0.0)) == task
    # A plain task stays six fields long, and its item has no request.
    plain = Task("http://a.test/x", 5)
    assert Task.from_bytes(plain.to_bytes()) == plain and plain.to_bytes().count(b",") == 5
    assert Item.from_task(plain, clock=Clock(0.0), wall=Clock(0.0)).request is None


def test_wire_format_is_a_compact_list() -> None:
    task = Task("http://a.test/", 7, 1, "http://p.test/", 2, 5.5)
    assert task.to_bytes() == b'["http://a.test/",7,1,"http://p.test/",2,5.5]'
    # A whole number of seconds, as another writer may send it, is a valid expiry.
    assert Task.from_bytes(b'["http://a.test/",7,1,null,2,5]').expires == 5


def test_item_restores_as_the_reader_builds_it() -> None:
    raw = "HTTP://Example.TEST:80/a/../b?x=1"
    task = Task(raw, 42, 2, "http://example.test/", 0, None)
    item = Item.from_task(task, clock=Clock(0.0), wall=Clock(0.0))
    url, _, host = parse_target(raw)
    assert (item.raw, item.url, item.host_key) == (raw, url, host)
    assert (item.fp, item.depth, item.parent, item.attempts) == (42, 2, "http://example.test/", 0)
    assert item.deadline is None  # not started: its deadline starts with its first attempt
    assert item.host is None and not item.finished and not item.checked
    assert item.task(clock=Clock(5.0), wall=Clock(9.0)) == task


def test_attempts_and_time_left_survive_a_move_to_another_clock() -> None:
    mono_a, wall_a = Clock(1000.0), Clock(1_700_000_000.0)
    url, _, host = parse_target("http://a.test/x")
    item = Item("http://a.test/x", url, host, 9)
    item.deadline = Deadline(30.0, mono_a)  # the first attempt started it
    item.attempts = 2
    mono_a.now += 27.0
    wall_a.now += 27.0
    task = item.task(clock=mono_a, wall=wall_a)
    assert task.attempts == 2
    assert task.expires == pytest.approx(wall_a.now + 3.0)

    # Another process: its monotonic clock has another origin; the wall clocks agree.
    mono_b, wall_b = Clock(5.0), Clock(wall_a.now)
    back = Item.from_task(Task.from_bytes(task.to_bytes()), clock=mono_b, wall=wall_b)
    assert back.attempts == 2
    assert back.deadline is not None
    assert back.deadline.remaining() == pytest.approx(3.0)
    assert back.deadline.expires == pytest.approx(8.0)  # on mono_b
    assert back.deadline.allows_wait(2.5) and not back.deadline.allows_wait(3.5)
    mono_b.now += 1.0
    assert back.deadline.remaining() == pytest.approx(2.0)  # it runs on the clock given


def test_an_expired_task_restores_expired() -> None:
    wall = Clock(1_700_000_000.0)
    task = Task("http://a.test/", 1, 0, None, 3, wall.now - 4.0)
    item = Item.from_task(task, clock=Clock(50.0), wall=wall)
    assert item.attempts == 3
    assert item.deadline is not None
    assert item.deadline.remaining() == pytest.approx(-4.0)
    assert not item.deadline.allows_wait(0.0)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "not JSON"),
        (b"[1,", "not JSON"),
        (b'{"url": "http://a.test/"}', "must be a list"),
        (b'"http://a.test/"', "must be a list"),
        (b'["http://a.test/",1,0,null,0]', "must be a list"),
        (b'["http://a.test/",1,0,null,0,null,7]', "must be a list"),
        (b"[7,1,0,null,0,null]", "url must be a non-empty string"),
        (b'["",1,0,null,0,null]', "url must be a non-empty string"),
        (b'["http://a.test/","1",0,null,0,null]', "fp must be a non-negative integer"),
        (b'["http://a.test/",true,0,null,0,null]', "fp must be a non-negative integer"),
        (b'["http://a.test/",1.5,0,null,0,null]', "fp must be a non-negative integer"),
        (b'["http://a.test/",-1,0,null,0,null]', "fp must be a non-negative integer"),
        # orjson reads an integer past 64 bits as a float
        (b'["http://a.test/",18446744073709551616,0,null,0,null]', "fp must be a non-negative"),
        (b'["http://a.test/",1,-1,null,0,null]', "depth must be a non-negative integer"),
        (b'["http://a.test/",1,0,5,0,null]', "parent must be a string or null"),
        (b'["http://a.test/",1,0,null,-2,null]', "attempts must be a non-negative integer"),
        (b'["http://a.test/",1,0,null,null,null]', "attempts must be a non-negative integer"),
        (b'["http://a.test/",1,0,null,0,"soon"]', "expires must be a finite number"),
        (b'["http://a.test/",1,0,null,0,false]', "expires must be a finite number"),
        (b'["http://a.test/",1,0,null,0,1e999]', "not JSON"),  # orjson refuses infinity
        (b'["ftp://a.test/",1,0,null,0,null]', "task url 'ftp://a.test/'"),
        (b'["not a url",1,0,null,0,null]', "task url 'not a url'"),
        (b'["http://a.test/",1,0,null,0,null,["POST",[],null]]', "request must be a list"),
        (b'["http://a.test/",1,0,null,0,null,["BAD M",[],null,null]]', "invalid method"),
        (b'["http://a.test/",1,0,null,0,null,["POST",{"A":"b"},null,null]]', "pairs"),
        (b'["http://a.test/",1,0,null,0,null,["POST",[[1,"b"]],null,null]]', "header name"),
        (b'["http://a.test/",1,0,null,0,null,["POST",[["A","b\\n"]],null,null]]', "control"),
        (b'["http://a.test/",1,0,null,0,null,["POST",[],"%%%",null]]', "not base64"),
        (b'["http://a.test/",1,0,null,0,null,["POST",[],5,null]]', "base64 or null"),
    ],
)
def test_malformed_payload_is_a_value_error(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Task.from_bytes(payload)


def test_a_task_built_in_code_is_checked_too() -> None:
    with pytest.raises(ValueError, match="fp must be below 2"):
        Task("http://a.test/", 2**64)
    with pytest.raises(ValueError, match="expires must be a finite number"):
        Task("http://a.test/", 1, expires=float("inf"))
