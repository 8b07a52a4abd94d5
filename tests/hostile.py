"""A raw asyncio HTTP server that misbehaves on purpose, one fault per path.

/silent            reads the request, never answers
/drip              a valid header, then one body byte a second, forever
/reset-headers     half a status line, then a TCP reset
/reset-body        headers promise 1000 bytes, 10 arrive, then a TCP reset
/garbage           bytes that are not HTTP
/bad-chunk         chunked encoding with a chunk size that is not hex
/huge-header       a 200 KB header line
/short-body        Content-Length: 1000, 10 bytes, then a clean close
/big-body          64 MiB of body, streamed
/gzip-bomb         ~256 KiB of gzip that inflates to 256 MiB
/deflate-bomb      the same as zlib-wrapped deflate
/loop              a redirect to itself
/chain/<n>         a redirect chain: /chain/n -> /chain/n-1 ... -> /chain/0 (200)
/to-closed         a redirect to a closed port on 127.0.0.1
/year              503 with Retry-After of a year
/to-other?url=U    a redirect to U (another host)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from functools import cache


@cache
def bomb(wbits: int, size: int = 256 << 20) -> bytes:
    """Compressed zeros; computed once per process, before the server starts."""
    comp = zlib.compressobj(1, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    parts = [comp.compress(zeros) for _ in range(size >> 20)]
    parts.append(comp.flush())
    return b"".join(parts)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HostileServer:
    def __init__(self) -> None:
        self.port = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = asyncio.Event()  # set at teardown: stalled handlers give up

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *header_lines = head.decode("latin-1").split("\r\n")
            path = line.split(" ")[1]
            headers = {}
            for h in header_lines:
                if ":" in h:
                    k, v = h.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            self.requests.append((path, headers))
            await self._respond(path, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _respond(self, path: str, w: asyncio.StreamWriter) -> None:
        ok = b"HTTP/1.1 200 OK\r\n"
        if path == "/silent":
            await self.closing.wait()
        elif path == "/drip":
            w.write(ok + b"Content-Length: 100000\r\n\r\n")
            while not self.closing.is_set():
                w.write(b"x")
                await w.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        await self.closing.wait()
        elif path == "/reset-headers":
            w.write(b"HTTP/1.1 200 O")
            await w.drain()
            _reset(w)
        elif path == "/reset-body":
            w.write(ok + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
            await w.drain()
            _reset(w)
        elif path == "/garbage":
            w.write(b"\x00\x01\x02 this is not HTTP at all \xff\xfe\r\n\r\n")
        elif path == "/bad-chunk":
            w.write(ok + b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n0\r\n\r\n")
        elif path == "/huge-header":
            w.write(ok + b"X-Huge: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n")
        elif path == "/short-body":
            w.write(ok + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        elif path == "/big-body":
            w.write(ok + b"Content-Length: %d\r\n\r\n" % (64 << 20))
            chunk = bytes(1 << 20)
            for _ in range(64):
                w.write(chunk)
                await w.drain()
        elif path in ("/gzip-bomb", "/deflate-bomb"):
            gz = path == "/gzip-bomb"
            body = bomb(31 if gz else 15)
            enc = b"gzip" if gz else b"deflate"
            w.write(
                ok + b"Content-Encoding: " + enc + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            w.write(body)
        elif path == "/loop":
            w.write(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
        elif path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            if n == 0:
                w.write(ok + b"Content-Length: 2\r\n\r\nok")
            else:
                w.write(b"HTTP/1.1 302 Found\r\nLocation: /chain/%d\r\n" % (n - 1))
                w.write(b"Content-Length: 0\r\n\r\n")
        elif path == "/to-closed":
            loc = f"http://127.0.0.1:{closed_port()}/".encode()
            w.write(b"HTTP/1.1 302 Found\r\nLocation: " + loc + b"\r\nContent-Length: 0\r\n\r\n")
        elif path == "/year":
            w.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 31536000\r\nContent-Length: 0\r\n\r\n")
        elif path.startswith("/to-other?url="):
            loc = path.split("=", 1)[1].encode()
            w.write(b"HTTP/1.1 302 Found\r\nLocation: " + loc + b"\r\nContent-Length: 0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        # Keep-alive is not offered: close after each response.
        w.close()


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[HostileServer]:
    srv = HostileServer()
    # Build the bombs off the event loop first: compressing 256 MiB inside a handler
    # would stall the server and turn every other fault into a timeout.
    await asyncio.gather(asyncio.to_thread(bomb, 31), asyncio.to_thread(bomb, 15))
    server = await asyncio.start_server(srv._handle, "127.0.0.1", 0, limit=1 << 20)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        srv.closing.set()
        server.close()
        await asyncio.gather(*srv._tasks, return_exceptions=True)
        await server.wait_closed()
