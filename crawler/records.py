"""The output record (one per input URL) and its JSON encoding."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

_ENCODE_OPTS = orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True)
class Record:
    """One line of output. Field order is the JSON key order; see README "Records"."""

    url: str
    final_url: str | None = None
    status: int | None = None
    ok: bool = False
    error: dict[str, str] | None = None
    attempts: int = 0
    elapsed_ms: float = 0.0
    bytes: int = 0
    content_type: str | None = None
    redirects: list[str] = field(default_factory=list)
    fetched_at: str = ""
    depth: int = 0  # crawl mode: links followed from a seed (seeds and fetch inputs: 0)
    parent: str | None = None  # crawl mode: the page (or sitemap) the URL was found on
    body_path: str | None = None  # --save-dir: where the body is stored
    sha256: str | None = None  # --save-dir: the body's SHA-256 (hex)


def encode(record: Record) -> bytes:
    """One JSON line, newline included.

    orjson would encode the dataclass itself, but through its field table and one
    attribute lookup per field (~1.2 us); a dict literal is half that, and this runs
    once per URL. tests/test_stats_records.py holds the two encodings equal."""
    r = record
    return orjson.dumps(
        {
            "url": r.url,
            "final_url": r.final_url,
            "status": r.status,
            "ok": r.ok,
            "error": r.error,
            "attempts": r.attempts,
            "elapsed_ms": r.elapsed_ms,
            "bytes": r.bytes,
            "content_type": r.content_type,
            "redirects": r.redirects,
            "fetched_at": r.fetched_at,
            "depth": r.depth,
            "parent": r.parent,
            "body_path": r.body_path,
            "sha256": r.sha256,
        },
        option=_ENCODE_OPTS,
    )


class UTCStamp:
    """ISO 8601 UTC timestamps with millisecond precision. The string is rebuilt once per
    millisecond and the date part once per second, not once per record."""

    __slots__ = ("_ms", "_prefix", "_second", "_stamp")

    def __init__(self) -> None:
        self._second = -1
        self._ms = -1
        self._prefix = ""
        self._stamp = ""

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms == self._ms:
            return self._stamp
        self._ms = ms
        second, frac = divmod(ms, 1000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        self._stamp = stamp = f"{self._prefix}.{frac:03d}Z"
        return stamp
