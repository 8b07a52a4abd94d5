"""Option values as the user types them: headers, sizes, methods, checked before any run."""

from __future__ import annotations

import re

import typer

from crawler.errors import UsageError

HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FRAMING_HEADERS = frozenset(("content-length", "transfer-encoding", "upgrade"))
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value``: the name an RFC 9110 token, the value without control characters
    (each of them makes every request fail; CR/LF would inject headers)."""
    name, sep, value = text.partition(":")
    name = name.strip(" \t")
    if not sep or not HEADER_NAME.fullmatch(name):
        raise UsageError(f"invalid header {text!r}: expected 'Name: value'")
    if name.lower() in _FRAMING_HEADERS:
        # A GET has no body: a framing header of our own would desynchronise the connection.
        raise UsageError(f"invalid header {text!r}: {name} is set by crawler itself")
    value = value.strip(" \t")
    check_field_value(value, f"header {text!r}")
    return name, value


def check_field_value(value: str, what: str) -> None:
    """A header field value (RFC 9110 5.5): visible characters, spaces and tabs."""
    if _CONTROL.search(value):
        raise UsageError(f"invalid {what}: control characters in value")


def parse_size(text: str | int) -> int:
    """Byte counts with optional binary suffix: 10485760, 10M, 10MiB, 512k."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size (e.g. 1048576, 512k, 10M)")
    unit = (match.group(2) or "").lower().rstrip("b").rstrip("i")
    size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size <= 0:
        raise typer.BadParameter("must be > 0")
    return size


def parse_method(text: str) -> str:
    method = text.strip().upper()
    if method not in ("GET", "HEAD"):
        raise typer.BadParameter(f"{text!r} is not one of GET, HEAD")
    return method
