"""The output record (one per input URL) and its JSON encoding."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import orjson
from msgspec import Struct, field

_ENCODE_OPTS = orjson.OPT_APPEND_NEWLINE


class ErrorKind(StrEnum):
    """A record's ``error.kind``: the contract's error kinds (see README "Error kinds")."""

    INVALID_URL = "invalid_url"
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    PROTOCOL = "protocol"
    HTTP = "http"
    CIRCUIT_OPEN = "circuit_open"
    ROBOTS = "robots"
    CANCELLED = "cancelled"
    BLOCKED = "blocked"
    PROXY = "proxy"
    INTERNAL = "internal"
    DEAD_LETTER = "dead_letter"


class Error(Struct, frozen=True):
    """A record's ``error`` field: ``{"kind": ..., "message": ...}`` in JSON (``encode``
    writes it so, the enum as its value)."""

    kind: ErrorKind
    message: str


class Record(Struct):
    """One line of output. Field order is the JSON key order; see README "Records"."""

    url: str
    final_url: str | None = None
    status: int | None = None
    ok: bool = False
    error: Error | None = None
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
    method: str | None = None  # the request's method (null: an input line that is no request)
    meta: Any = None  # a JSON request line's "meta", as it was given
    location: str | None = None  # --no-follow: a redirect's Location, as sent
    proxy: str | None = None  # the proxy the request went through (without credentials)
    headers: dict[str, str | list[str]] | None = None  # --include-headers: the response's
    request_headers: dict[str, str | list[str]] | None = None  # --include-request
    body: str | None = None  # --include-body: the body, as text or base64
    body_encoding: str | None = None  # --include-body: "text" or "base64"
    not_modified: bool | None = None  # --etags: the server answered 304 Not Modified

    def to_json(self) -> str:
        """The record's JSON line as the CLI writes it, without the final newline."""
        return encode(self)[:-1].decode()


class _Timed(Protocol):
    def elapsed(self) -> float: ...


class Task(Protocol):
    """What a record says of the URL (crawler.frontier.Item)."""

    @property
    def raw(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def parent(self) -> str | None: ...
    @property
    def deadline(self) -> _Timed | None: ...


class Answer(Protocol):
    """What a record says of the response (crawler.response.Response)."""

    @property
    def status(self) -> int: ...
    @property
    def final_url(self) -> str: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def redirects(self) -> list[str]: ...


class Failure(Protocol):
    """What a record says of an error (crawler.errors.FetchError)."""

    @property
    def kind(self) -> str: ...
    @property
    def message(self) -> str: ...


def _described(error: Failure | None) -> Error | None:
    """A record's ``error`` field."""
    return Error(ErrorKind(error.kind), error.message) if error is not None else None


def _elapsed_ms(task: Task) -> float:
    """A record's ``elapsed_ms``: from the URL's first attempt (its deadline's start)."""
    deadline = task.deadline
    return int(deadline.elapsed() * 1_000_000) / 1000 if deadline is not None else 0.0


class Records:
    """Builds the records, each stamped when it is made (``fetched_at``)."""

    __slots__ = ("_method", "_stamp")

    def __init__(self, method: str = "GET") -> None:
        self._stamp = UTCStamp()
        self._method = method  # the run's (--method)

    def answered(self, task: Task, resp: Answer, error: Failure | None) -> Record:
        """A URL that got a response (``error``: its status >= 400, or a failure after
        the status line, e.g. too_large).

        Once per URL: keywords for the fields a response sets, defaults for the rest
        (~0.5 us with msgspec's init; by keyword, as a positional call would silently
        misplace values when a field is added or moved)."""
        return Record(
            url=task.raw,
            final_url=resp.final_url,
            status=resp.status,
            ok=error is None,
            error=_described(error),
            attempts=task.attempts,
            elapsed_ms=_elapsed_ms(task),
            bytes=resp.nbytes,
            content_type=resp.content_type,
            redirects=resp.redirects,
            fetched_at=self._stamp(),
            depth=task.depth,
            parent=task.parent,
            method=self._method,
        )

    def unanswered(self, task: Task, error: Failure | None) -> Record:
        """A URL that got no response (failed, refused or cancelled)."""
        return Record(
            url=task.raw,
            error=_described(error),
            attempts=task.attempts,
            elapsed_ms=_elapsed_ms(task),
            fetched_at=self._stamp(),
            depth=task.depth,
            parent=task.parent,
            method=self._method,
        )

    def invalid(self, raw: str, error: Failure) -> Record:
        """An input line that is not a URL we can fetch."""
        return Record(url=raw, error=_described(error), fetched_at=self._stamp())


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8. aiohttp decodes header bytes that are not UTF-8 as lone
    surrogates (``surrogateescape``), which no UTF-8 encoder accepts: each such byte
    becomes ``\\xNN``; any other lone surrogate becomes U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "replace")
        return raw.decode("utf-8", "backslashreplace")
    return text


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value


def encode(record: Record) -> bytes:
    """One JSON line, newline included.

    A dict literal for orjson: this runs once per URL. tests/test_stats_records.py holds
    it equal to msgspec's own encoding of the Struct (every field, in declaration order)."""
    r = record
    error = r.error
    fields = {
        "url": r.url,
        "final_url": r.final_url,
        "status": r.status,
        "ok": r.ok,
        "error": None if error is None else {"kind": error.kind, "message": error.message},
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
        "method": r.method,
        "meta": r.meta,
        "location": r.location,
        "proxy": r.proxy,
        "headers": r.headers,
        "request_headers": r.request_headers,
        "body": r.body,
        "body_encoding": r.body_encoding,
        "not_modified": r.not_modified,
    }
    try:
        return orjson.dumps(fields, option=_ENCODE_OPTS)
    except orjson.JSONEncodeError:
        # A string that is not valid UTF-8 (a header byte that slipped past the fetcher's
        # own decoding): one bad value must not end the run, so encode it safely.
        return orjson.dumps(_safe(fields), option=_ENCODE_OPTS)


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
