"""Latency histogram, records encoding and timestamps."""

from __future__ import annotations

import re

import msgspec
import orjson
from hypothesis import given
from hypothesis import strategies as st

from crawler.records import Error, ErrorKind, Record, UTCStamp, encode
from crawler.stats import Histogram, Stats


def test_histogram_quantiles_within_bucket_resolution() -> None:
    h = Histogram()
    for ms in range(1, 1001):
        h.add(ms / 1000)
    assert abs(h.quantile(0.5) - 0.5) / 0.5 < 0.1
    assert abs(h.quantile(0.99) - 0.99) / 0.99 < 0.1
    assert h.max == 1.0 and h.count == 1000


def test_snapshot_counts_by_status_and_error() -> None:
    s = Stats(clock=lambda: 0.0)
    s.record(True, 200, None, 10)
    s.record(False, 503, "http", 0)
    s.record(False, None, "connect", 0)
    snap = s.snapshot()
    assert (snap.urls_done, snap.ok, snap.failed) == (3, 1, 2)
    assert snap.by_status == {"200": 1, "503": 1}
    assert snap.by_error == {"connect": 1, "http": 1}
    assert orjson.loads(orjson.dumps(snap.to_dict()))["bytes"] == 10


def test_record_encodes_every_contract_field_in_order() -> None:
    line = encode(Record(url="http://a/", fetched_at="2026-01-01T00:00:00.000Z"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(orjson.loads(line)) == [
        "url",
        "final_url",
        "status",
        "ok",
        "error",
        "attempts",
        "elapsed_ms",
        "bytes",
        "content_type",
        "redirects",
        "fetched_at",
        "depth",
        "parent",
        "body_path",
        "sha256",
        "method",
        "meta",
        "location",
        "proxy",
        "headers",
        "request_headers",
        "body",
        "body_encoding",
        "not_modified",
    ]


@given(
    st.builds(
        Record,
        url=st.text(),
        final_url=st.none() | st.text(),
        status=st.none() | st.integers(100, 599),
        ok=st.booleans(),
        error=st.none() | st.builds(Error, st.sampled_from(ErrorKind), st.text()),
        attempts=st.integers(0, 10),
        elapsed_ms=st.floats(0, 1e6),
        bytes=st.integers(0, 1 << 40),
        content_type=st.none() | st.text(),
        redirects=st.lists(st.text(), max_size=3),
        fetched_at=st.text(),
        depth=st.integers(0, 100),
        parent=st.none() | st.text(),
        body_path=st.none() | st.text(),
        sha256=st.none() | st.text(),
        method=st.none() | st.text(),
        meta=st.none()
        | st.dictionaries(st.text(), st.integers(-(2**63), 2**63 - 1) | st.text(), max_size=2),
        location=st.none() | st.text(),
        proxy=st.none() | st.text(),
        headers=st.none() | st.dictionaries(st.text(), st.text(), max_size=2),
        request_headers=st.none() | st.dictionaries(st.text(), st.text(), max_size=2),
        body=st.none() | st.text(),
        body_encoding=st.none() | st.sampled_from(["text", "base64"]),
        not_modified=st.none() | st.booleans(),
    )
)
def test_record_encoding_is_msgspecs_own_encoding_of_the_struct(record: Record) -> None:
    """encode() spells the fields out for speed: it must say exactly what msgspec says
    of the Struct (every field and value, in declaration order), so a new field cannot be
    forgotten there."""
    line = encode(record)
    assert line.endswith(b"\n")
    assert list(orjson.loads(line).items()) == list(msgspec.to_builtins(record).items())


def test_record_with_odd_unicode_stays_one_line() -> None:
    line = encode(Record(url="http://a/\u2028\n\x00\ufffd"))
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["url"] == "http://a/\u2028\n\x00\ufffd"


def test_utc_stamp_is_iso8601_utc() -> None:
    stamp = UTCStamp()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp())
