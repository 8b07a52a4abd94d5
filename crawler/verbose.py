"""``-v/--verbose``: each request and response head on stderr, as curl -v shows them.

    [7] > GET /page HTTP/1.1
    [7] > Host: example.org
    [7] < HTTP/1.1 200 OK
    [7] < Content-Type: text/html

``[7]`` numbers the request (each attempt and each redirect hop is one), so the lines of
concurrent requests can be told apart. A request and its response head are written
together in one ``os.write`` of at most PIPE_BUF bytes (a pipe writes that much whole:
no torn or interleaved lines), only when stderr can take it at once: it is written from
the event loop, which must never block on a stderr nobody reads (as the CLI's per-host
notice). What could not be written is counted and said on the next block that is.
Credentials (Authorization, Cookie, Proxy-Authorization, --secret-header) are shown as
``[redacted]``; curl shows them, a log should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import select
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from aiohttp.client_reqrep import ClientResponse
from yarl import URL

from crawler.records import safe_text

_BLOCK_MAX: Final = select.PIPE_BUF
_STDERR: Final = 2

_Send = TypeVar("_Send", bound=Callable[..., Awaitable[ClientResponse]])


class Verbose:
    """Shows the heads of the requests a fetcher sends (one per Fetcher)."""

    def __init__(self, redact: frozenset[str], fd: int = _STDERR) -> None:
        self._redact = redact
        self._fd = fd
        self._ids = itertools.count(1)
        self._dropped = 0  # blocks stderr could not take at once

    def wrap(self, send: _Send) -> _Send:
        """``send`` (Fetcher._send or _request: method, URL, ...), showing each exchange."""

        @functools.wraps(send)
        async def shown(method: str, url: URL, *rest: Any) -> ClientResponse:
            n = next(self._ids)
            try:
                resp = await send(method, url, *rest)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The record says what went wrong; here, that this request got no answer.
                self._write(
                    f"[{n}] * {method} {_shown_url(url)}: no response ({type(exc).__name__})\n"
                )
                raise
            self._write(self.block(n, method, resp))
            return resp

        return shown  # type: ignore[return-value]

    def block(self, n: int, method: str, resp: ClientResponse) -> str:
        """The request head as sent and the response head as received, each line
        prefixed with ``[n]``."""
        info = resp.request_info
        redact = self._redact
        target = info.url.raw_path_qs or "/"
        lines = [f"> {method} {target} HTTP/1.1"]
        for name, value in info.headers.items():
            shown = "[redacted]" if name.lower() in redact else safe_text(value)
            lines.append(f"> {name}: {shown}")
        lines.append(">")
        v = resp.version
        version = f"HTTP/{v.major}.{v.minor}" if v else "HTTP/1.1"
        lines.append(f"< {version} {resp.status} {safe_text(resp.reason or '')}".rstrip())
        for raw_name, raw_value in resp.raw_headers:
            name = raw_name.decode("utf-8", "backslashreplace")
            value = raw_value.decode("utf-8", "backslashreplace")
            lines.append(f"< {name}: {value}")
        lines.append("<")
        prefix = f"[{n}] "
        return "".join(f"{prefix}{line}\n" for line in lines)

    def _write(self, text: str) -> None:
        if self._dropped:
            text = f"[*] * {self._dropped} verbose block(s) not shown: stderr was full\n" + text
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > _BLOCK_MAX:
            cut = data.rfind(b"\n", 0, _BLOCK_MAX - 64) + 1
            data = data[:cut] + b"[*] * (the rest of these heads is not shown: too long)\n"
        with contextlib.suppress(OSError, ValueError):
            # A pipe polls writable with at least PIPE_BUF bytes free: the write neither
            # blocks nor is cut short.
            if select.select([], [self._fd], [], 0)[1]:
                os.write(self._fd, data)
                self._dropped = 0
                return
        self._dropped += 1


def _shown_url(url: URL) -> str:
    """``url`` without its user:password."""
    return str(url.with_user(None)) if url.raw_user or url.raw_password else str(url)
