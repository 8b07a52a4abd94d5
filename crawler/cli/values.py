"""Option values that typer parses from what the user types: sizes (``10M``) and methods.

Whether a value is allowed is checked once, by the config slices (``crawler.config``)."""

from __future__ import annotations

import re

import typer

_SIZE = re.compile(r"(\d+)\s*([kmg]i?b?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


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
    """Any method token (RFC 9110); GET, POST, ... in any case are sent upper-case."""
    from crawler.request import check_method

    try:
        return check_method(text.strip())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
