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
    """One JSON line, newline included. orjson encodes slotted dataclasses natively."""
    return orjson.dumps(record, option=_ENCODE_OPTS)


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
