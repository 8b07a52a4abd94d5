"""Records built by name (crawler.records.Records): every field set, from the right source."""

from __future__ import annotations

import orjson
from yarl import URL

from crawler import errors
from crawler.records import Error, ErrorKind, Record, Records, encode
from crawler.response import Response
from crawler.retry import Deadline
from crawler.task import Item


class Clock:
    now = 10.0

    def __call__(self) -> float:
        return self.now


def item() -> Item:
    clock = Clock()
    task = Item("http://a.test/x", URL("http://a.test/x"), "a.test:80", 7, 2, "http://a.test/")
    task.attempts = 3
    task.deadline = Deadline(30.0, clock)
    clock.now = 10.25
    return task


def test_an_answered_record_sets_every_field_from_its_source() -> None:
    resp = Response(404, "http://a.test/y", "text/html", 123, ["http://a.test/x"])
    record = Records().answered(item(), resp, errors.HTTPStatusError("HTTP 404"))
    for name in Record.__struct_fields__:
        getattr(record, name)  # a field left unset raises here
    line = orjson.loads(encode(record))
    assert line == {
        **line,
        "url": "http://a.test/x",
        "final_url": "http://a.test/y",
        "status": 404,
        "ok": False,
        "error": {"kind": "http", "message": "HTTP 404"},
        "attempts": 3,
        "elapsed_ms": 250.0,
        "bytes": 123,
        "content_type": "text/html",
        "redirects": ["http://a.test/x"],
        "depth": 2,
        "parent": "http://a.test/",
        "body_path": None,
        "sha256": None,
        "method": "GET",
        "meta": None,
        "location": None,
        "proxy": None,
        "headers": None,
        "request_headers": None,
        "body": None,
        "body_encoding": None,
        "not_modified": None,
    }
    assert list(line) == list(Record.__struct_fields__)
    assert line["fetched_at"].endswith("Z")


def test_an_answered_record_equals_the_struct_built_by_keyword() -> None:
    resp = Response(200, "http://a.test/x", None, 5)
    built = Records().answered(item(), resp, None)
    assert built.ok and built.error is None
    same = Record(
        url="http://a.test/x",
        final_url="http://a.test/x",
        status=200,
        ok=True,
        attempts=3,
        elapsed_ms=250.0,
        bytes=5,
        fetched_at=built.fetched_at,
        depth=2,
        parent="http://a.test/",
        method="GET",
    )
    assert built == same


def test_unanswered_and_invalid_records() -> None:
    records = Records()
    gone = records.unanswered(item(), errors.ConnectError("Connection refused"))
    assert (gone.status, gone.ok, gone.attempts, gone.elapsed_ms) == (None, False, 3, 250.0)
    assert gone.error == Error(ErrorKind.CONNECT, "Connection refused")
    assert (gone.depth, gone.parent) == (2, "http://a.test/")
    bad = records.invalid("nope", errors.InvalidURL("no scheme"))
    assert (bad.url, bad.attempts, bad.elapsed_ms) == ("nope", 0, 0.0)
    assert bad.error == Error(ErrorKind.INVALID_URL, "no scheme")
