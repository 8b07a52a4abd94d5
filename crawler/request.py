"""What a request is beyond its URL: method, headers of its own, body, and the caller's
``meta``; read from a JSON request line (``{"url": ..., "method": ...}``) or set for the
whole run (``--method``, ``--data``, ``--json``).

A plain input line with a plain run (GET or HEAD, no body) has no Request at all: its
Item's ``request`` is None and the fetcher takes its fast path (see crawler.task).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import orjson

from crawler.config import FetchConfig, _header_problem
from crawler.errors import InvalidURL

# RFC 9110 §9.2.2: these may be sent again after a failure without changing the outcome.
IDEMPOTENT: Final = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"))
# Methods written in any case are sent upper-case (``--method post``); any other token
# is sent as it was written (methods are case-sensitive).
_STANDARD: Final = frozenset((*IDEMPOTENT, "POST", "PATCH"))
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_KEYS: Final = frozenset(("url", "method", "headers", "body", "json", "meta"))


def check_method(text: str) -> str:
    """The method to send for ``text``; ValueError, saying why, if it cannot be one."""
    if not isinstance(text, str) or not _TOKEN.fullmatch(text):
        raise ValueError(f"invalid method {text!r}: expected a token such as GET or POST")
    upper = text.upper()
    if upper == "CONNECT":
        raise ValueError("method CONNECT is not supported")
    return upper if upper in _STANDARD else text


def request_key(key: str, method: str, body: bytes | None) -> str:
    """The dedup key of a request: a plain GET keeps its URL's canonical ``key``; another
    method adds itself; a body adds its SHA-256."""
    if body is not None:
        return f"{method} {key} sha256:{hashlib.sha256(body).hexdigest()}"
    return key if method == "GET" else f"{method} {key}"


class Request:
    """A request's method, own headers (``(name, value)`` pairs, merged over -H), body
    and ``meta`` (any JSON value, copied into its record). ``unsafe``: not idempotent, so
    not sent again once bytes went out (unless --retry-unsafe). ``bound``: lower-case
    names of own headers that, like the sensitive ones, go to the URL's origin only (a
    host's headers from the config file: crawler.hostfetch)."""

    __slots__ = ("body", "bound", "headers", "meta", "method", "unsafe")

    def __init__(
        self,
        method: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes | None = None,
        meta: Any = None,
        bound: frozenset[str] = frozenset(),
    ) -> None:
        self.method = method
        self.headers = headers
        self.body = body
        self.meta = meta
        self.bound = bound
        self.unsafe = method not in IDEMPOTENT

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.headers, self.body, self.meta) == (
            other.method,
            other.headers,
            other.body,
            other.meta,
        )

    __hash__ = None  # type: ignore[assignment]  # meta may be a dict

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.headers!r}, {self.body!r}, {self.meta!r})"


def run_request(config: FetchConfig) -> Request | None:
    """The request of every plain input line (--data, --json, --method), or None for a
    plain GET or HEAD without a body (the fetcher's fast path)."""
    if config.body is None and config.method in ("GET", "HEAD"):
        return None
    own = (("Content-Type", config.body_type),) if config.body_type is not None else ()
    return Request(config.method, own, config.body)


def check_headers(value: object) -> tuple[tuple[str, str], ...]:
    """A request's ``headers`` object as pairs; ValueError saying what is wrong."""
    if not isinstance(value, dict):
        raise ValueError(f'"headers" must be an object, not {_kind(value)}')
    pairs = []
    for name, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"header {name!r} must be a string, not {_kind(text)}")
        problem = _header_problem(name, text)
        if problem is not None:
            raise ValueError(f"invalid header {name!r}: {problem}")
        pairs.append((name, text))
    return tuple(pairs)


def parse_request_line(line: str) -> tuple[str, Request]:
    """The URL text and Request of a JSON request line; InvalidURL saying what is wrong
    (the caller's record carries the line)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidURL(f"request line is not valid JSON: {exc}") from None
    try:
        return _request_of(obj)
    except ValueError as exc:
        raise InvalidURL(f"invalid request line: {exc}") from None


def _request_of(obj: object) -> tuple[str, Request]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, not {_kind(obj)}")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    url = obj.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError('"url" must be a non-empty string' if "url" in obj else 'no "url"')
    headers = check_headers(obj["headers"]) if "headers" in obj else ()
    if "body" in obj and "json" in obj:
        raise ValueError('"body" and "json" cannot both be given')
    body: bytes | None = None
    if "body" in obj:
        text = obj["body"]
        if not isinstance(text, str):
            raise ValueError(f'"body" must be a string, not {_kind(text)}')
        body = text.encode("utf-8", "surrogatepass")
    elif "json" in obj:
        body = orjson.dumps(obj["json"])
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers = (*headers, ("Content-Type", "application/json"))
    method = obj.get("method")
    if method is None:
        method = "GET" if body is None else "POST"
    elif not isinstance(method, str):
        raise ValueError(f'"method" must be a string, not {_kind(method)}')
    else:
        method = check_method(method)
    return url.strip(), Request(method, headers, body, obj.get("meta"))


def _kind(value: object) -> str:
    """How JSON calls ``value``'s type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
