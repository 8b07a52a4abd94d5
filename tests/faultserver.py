"""A raw asyncio HTTP server that breaks HTTP on purpose; the request path picks the fault.

    async with FaultServer() as srv:
        await fetch(srv.url("/garbage"))

Paths (every response closes the connection; nothing is kept alive):

/ok                 200, ``Content-Type: text/plain``, body ``ok``
/status/<code>      that status, empty body
/silent             reads the request, never answers
/drip               a valid head (Content-Length 100000), then one body byte a second, forever
/reset-headers      half a status line, then a TCP reset (SO_LINGER 0)
/reset-body         the head promises 1000 bytes, 10 arrive, then a TCP reset
/garbage            bytes that are not HTTP at all
/bad-chunk          chunked encoding whose chunk size is not hex
/huge-header        one 200 KB header line
/many-headers       10,000 small headers
/short-body         Content-Length 1000, 10 bytes, then a clean close (FIN)
/promise-big        Content-Length 64 MiB, 10 bytes, then silence (the body never comes)
/big-body           64 MiB with a Content-Length, streamed 1 MiB at a time
/big-chunked        64 MiB chunked (no Content-Length), streamed 1 MiB at a time
/gzip-bomb          ~200 KB of gzip that inflates to 200 MiB of zeros
/deflate-bomb       the same as zlib-wrapped deflate
/loop               a 302 to itself
/chain/<n>          /chain/n -> /chain/n-1 -> ... -> /chain/0 (200 "ok")
/to-closed          a 302 to a port on 127.0.0.1 nobody listens on
/redirect?to=<url>  a 302 to <url> (percent-encoded), e.g. another host
/year               503 with ``Retry-After: 31536000`` (a year)
anything else       404

``srv.requests`` records what arrived, in order: (method, path with query, headers with
lower-case names). At teardown every connection is aborted and stalled faults wake up,
so a test never waits for a fault to finish.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import struct
import zlib
from dataclasses import dataclass
from functools import cache
from types import TracebackType

from yarl import URL

BOMB_SIZE = 200 << 20  # what each bomb inflates to
BIG_SIZE = 64 << 20
_MIB = bytes(1 << 20)
_OK = b"HTTP/1.1 200 OK\r\nConnection: close\r\n"


@cache
def bomb(encoding: str = "gzip", size: int = BOMB_SIZE) -> bytes:
    """``size`` zero bytes compressed as ``gzip`` or ``deflate``; built once per process,
    streaming, so building it costs ~1 MiB of memory (and ~0.5 s, off the loop)."""
    wbits = {"gzip": 31, "deflate": 15}[encoding]
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    parts = [comp.compress(_MIB) for _ in range(size >> 20)]
    parts.append(comp.flush())
    return b"".join(parts)


_HELD: list[socket.socket] = []  # bound, never listening: see closed_port
atexit.register(lambda: [s.close() for s in _HELD])


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, and nobody can while this process lives: it stays bound
    (never listening, so a connection is refused). A port bound and released at once could
    be taken meanwhile by another program, such as a second test suite running alongside."""
    s = socket.socket()
    s.bind((host, 0))
    _HELD.append(s)
    return int(s.getsockname()[1])


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _redirect(location: str) -> bytes:
    return (
        b"HTTP/1.1 302 Found\r\nConnection: close\r\nLocation: "
        + location.encode()
        + b"\r\nContent-Length: 0\r\n\r\n"
    )


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict[str, str]  # lower-case names


class FaultServer:
    """One listening socket on ``host`` (127.0.0.1 unless told), port chosen by the OS."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[Request] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()  # set at teardown: stalled faults give up

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, prefix: str) -> int:
        """How many requests arrived for paths starting with ``prefix``."""
        return sum(r.path.startswith(prefix) for r in self.requests)

    async def __aenter__(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Stalled faults (silent, drip, a body the client stopped reading) never end by
        # themselves: wake them and cut their connections (a blocked drain() then raises),
        # and wait for them, so no handler outlives the server. Not cancel(): on 3.11
        # asyncio logs an error for every cancelled start_server handler.
        self._closing.set()
        for w in self._writers:
            w.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _stall(self, seconds: float | None = None) -> None:
        """Wait until teardown, or ``seconds`` if given."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {}
            for h in lines:
                name, sep, value = h.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            self.requests.append(Request(method, path, headers))
            await self._respond(method, path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or sent nonsense: nothing to answer
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _respond(self, method: str, path: str, w: asyncio.StreamWriter) -> None:
        url = URL(path)
        route = url.path
        if route == "/ok":
            w.write(_OK + b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        elif route.startswith("/status/"):
            code = int(route.rsplit("/", 1)[1])
            w.write(b"HTTP/1.1 %d X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" % code)
        elif route == "/silent":
            await self._stall()
        elif route == "/drip":
            w.write(_OK + b"Content-Length: 100000\r\n\r\n")
            while not self._closing.is_set():
                w.write(b"x")
                await w.drain()
                await self._stall(1.0)  # the fault itself: one byte a second
        elif route == "/reset-headers":
            w.write(b"HTTP/1.1 200 O")
            await w.drain()
            _reset(w)
            return
        elif route == "/reset-body":
            w.write(_OK + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
            await w.drain()
            _reset(w)
            return
        elif route == "/garbage":
            w.write(b"\x00\x01\x02 this is not HTTP at all \xff\xfe\r\n\r\n")
        elif route == "/bad-chunk":
            w.write(_OK + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n")
        elif route == "/huge-header":
            w.write(_OK + b"X-Huge: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n")
        elif route == "/many-headers":
            flood = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
            w.write(_OK + flood + b"Content-Length: 0\r\n\r\n")
        elif route == "/short-body":
            w.write(_OK + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        elif route == "/promise-big":
            w.write(_OK + b"Content-Length: %d\r\n\r\n" % BIG_SIZE + b"x" * 10)
            await w.drain()
            await self._stall()
        elif route == "/big-body":
            w.write(_OK + b"Content-Length: %d\r\n\r\n" % BIG_SIZE)
            if method != "HEAD":
                for _ in range(BIG_SIZE >> 20):
                    if self._closing.is_set():
                        return
                    w.write(_MIB)
                    await w.drain()
        elif route == "/big-chunked":
            w.write(_OK + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(BIG_SIZE >> 20):
                if self._closing.is_set():
                    return
                w.write(b"%x\r\n" % len(_MIB) + _MIB + b"\r\n")
                await w.drain()
            w.write(b"0\r\n\r\n")
        elif route in ("/gzip-bomb", "/deflate-bomb"):
            encoding = route[1:].split("-")[0]
            body = await asyncio.to_thread(bomb, encoding)  # cached after the first call
            w.write(
                _OK
                + b"Content-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
                % (encoding.encode(), len(body))
            )
            w.write(body)
        elif route == "/loop":
            w.write(_redirect("/loop"))
        elif route.startswith("/chain/"):
            n = int(route.rsplit("/", 1)[1])
            if n == 0:
                w.write(_OK + b"Content-Length: 2\r\n\r\nok")
            else:
                w.write(_redirect(f"/chain/{n - 1}"))
        elif route == "/to-closed":
            w.write(_redirect(f"http://127.0.0.1:{closed_port()}/"))
        elif route == "/redirect":
            w.write(_redirect(url.query["to"]))
        elif route == "/year":
            w.write(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                b"Retry-After: 31536000\r\nContent-Length: 0\r\n\r\n"
            )
        else:
            w.write(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        with contextlib.suppress(ConnectionError):
            w.close()
            await w.wait_closed()
