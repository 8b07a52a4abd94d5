"""An embedded HTTP server to try and benchmark crawler with no network.

Routes (any host it listens on; ``/`` lists them):
    /page/<anything>   200, ``body_bytes`` of HTML; latency and errors injected here
    /status/<code>     that status (``?retry_after=S`` adds Retry-After)
    /redirect/<n>      302 chain of n hops ending at /page/end
    /drip/<n>          n bytes, one every ``?interval=`` seconds (default 1)
    /gzip/<n>          n bytes of HTML, gzip-encoded
    /unique/<anything> like /page, but every URL gets a different body (storage benchmarks)
    /site/<n>          a synthetic site to crawl: links to /site/10n+1 ... /site/10n+10
                       (below ``?size=``, default 100000), a back link and a cycle
Injected behaviour on /page: latency with mean ``latency_ms`` (fixed or exponential),
and with probability ``error_rate`` a 503 (with Retry-After), a 429, or a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import random
import signal
import socket
import sys
from typing import Final

from aiohttp import web
from msgspec import Struct, field

from crawler import __version__

# What ``GET /`` answers: the routes, for a user who points a browser or curl at it.
ROUTES: Final = (
    ("/page/<any>", "200 with --body-bytes of HTML; --latency-ms and --error-rate apply here"),
    ("/unique/<any>", "like /page, a different body per URL (storage benchmarks)"),
    ("/status/<code>", "that status; ?retry_after=S adds Retry-After"),
    ("/redirect/<n>", "a chain of n 302 redirects ending at /page/end"),
    ("/drip/<n>", "n bytes, one every ?interval=S seconds (default 1)"),
    ("/gzip/<n>", "n bytes of HTML, gzip-encoded"),
    ("/site/<n>", "a synthetic site to crawl: /site/n links to /site/10n+1 ... /site/10n+10 "
     "below ?size= (default 100000), plus a home and an up link; start at /site/0"),
)  # fmt: skip
# Common Log Format, as web servers write it (aiohttp's own default adds referer and agent).
ACCESS_LOG_FORMAT: Final = '%a - - %t "%r" %s %b'


class ServeOptions(Struct, frozen=True, kw_only=True):
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 8080
    workers: int = 1
    latency_ms: float = 0.0
    latency_dist: str = "exp"  # exp | fixed
    error_rate: float = 0.0
    error_kind: str = "503"  # 503 | 429 | reset
    retry_after: float = 1.0
    body_bytes: int = 512
    seed: int | None = None
    access_log: bool = False  # every request on stderr, one line each
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latency_dist not in ("exp", "fixed"):
            raise ValueError("latency distribution must be 'exp' or 'fixed'")
        if self.error_kind not in ("503", "429", "reset"):
            raise ValueError("error kind must be 503, 429 or reset")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error rate must be within 0..1")
        if self.workers < 1 or self.body_bytes < 0 or self.latency_ms < 0:
            raise ValueError("workers must be >= 1; body bytes and latency >= 0")


def build_app(opts: ServeOptions) -> web.Application:
    rng = random.Random(opts.seed)
    body = (b"<html><body>" + b"x" * opts.body_bytes)[: opts.body_bytes]
    mean = opts.latency_ms / 1000.0

    async def page(request: web.Request) -> web.StreamResponse:
        return await served(request, body)

    async def unique(request: web.Request) -> web.StreamResponse:
        head = f"<html><!-- {request.path} -->".encode()
        return await served(request, head + body[len(head) :])

    async def served(request: web.Request, body: bytes) -> web.StreamResponse:
        """A /page-like response: injected latency and errors first."""
        if mean > 0:
            await asyncio.sleep(rng.expovariate(1 / mean) if opts.latency_dist == "exp" else mean)
        if opts.error_rate and rng.random() < opts.error_rate:
            if opts.error_kind == "reset":
                transport = request.transport
                if transport is not None:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    transport.close()
                return web.Response(status=500)
            return web.Response(
                status=int(opts.error_kind),
                headers={"Retry-After": f"{opts.retry_after:g}"},
                text="busy",
            )
        return web.Response(body=body, content_type="text/html")

    async def site(request: web.Request) -> web.Response:
        try:
            n = int(request.match_info["n"])
            size = int(request.query.get("size", "100000"))
        except ValueError:
            raise web.HTTPNotFound from None
        if not 0 <= n < size:
            raise web.HTTPNotFound
        query = f"?size={size}" if "size" in request.query else ""
        kids = "".join(
            f'<li><a href="/site/{k}{query}">page {k}</a>'
            for k in range(10 * n + 1, min(10 * n + 11, size))
        )
        html = (
            f"<!doctype html><html><head><title>page {n}</title></head><body>"
            f'<a href="/site/0{query}">home</a> <a href="/site/{n // 10}{query}">up</a>'
            f"<ul>{kids}</ul>{body.decode('latin-1')}</body></html>"
        )
        return web.Response(text=html, content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        try:
            code = int(request.match_info["code"])
        except ValueError:
            raise web.HTTPBadRequest(text="status must be a number") from None
        return web.Response(status=code, headers=headers, text=f"status {code}")

    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPFound("/page/end" if n <= 1 else f"/redirect/{n - 1}")

    async def drip(request: web.Request) -> web.StreamResponse:
        n = min(int(request.match_info["n"]), 10_000)
        interval = float(request.query.get("interval", "1"))
        resp = web.StreamResponse(headers={"Content-Length": str(n)})
        await resp.prepare(request)
        for _ in range(n):
            await resp.write(b"x")
            await asyncio.sleep(interval)
        return resp

    async def gzipped(request: web.Request) -> web.Response:
        n = min(int(request.match_info["n"]), 64 << 20)
        return web.Response(
            body=gzip.compress(b"x" * n, 1),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/html"},
        )

    async def index(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        lines = [f"crawler {__version__} embedded test server", "", "Routes:"]
        width = max(len(path) for path, _ in ROUTES)
        lines += [f"  {path:<{width}}  {what}" for path, what in ROUTES]
        lines += ["", "Try:", f"  crawler fetch {base}/page/1 {base}/status/503"]
        lines.append(f"  crawler crawl '{base}/site/0?size=1111'")
        return web.Response(text="\n".join(lines) + "\n")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_route("*", "/page/{tail:.*}", page)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get(r"/redirect/{n:\d+}", redirect)
    app.router.add_get(r"/drip/{n:\d+}", drip)
    app.router.add_get(r"/gzip/{n:\d+}", gzipped)
    app.router.add_get("/unique/{tail:.*}", unique)
    app.router.add_get(r"/site/{n}", site)
    return app


async def start(opts: ServeOptions, *, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start listening on every host; return the runner and the (shared) port."""
    if opts.access_log:
        log = logging.getLogger("crawler.serve.access")
        if not log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            log.propagate = False
        runner = web.AppRunner(
            build_app(opts),
            access_log=log,
            access_log_format=ACCESS_LOG_FORMAT,
            handle_signals=False,
        )
    else:
        runner = web.AppRunner(build_app(opts), access_log=None, handle_signals=False)
    await runner.setup()
    port = opts.port
    for host in opts.hosts:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=4096)
        await site.start()
        if port == 0:
            server = site._server
            assert server is not None  # noqa: S101
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, port


def child_command(opts: ServeOptions, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "crawler", "serve", "--port", str(port), "--workers", "1"]
    for host in opts.hosts:
        cmd += ["--host", host]
    cmd += [
        "--latency-ms", str(opts.latency_ms), "--latency-dist", opts.latency_dist,
        "--error-rate", str(opts.error_rate), "--error-kind", opts.error_kind,
        "--retry-after", str(opts.retry_after), "--body-bytes", str(opts.body_bytes),
        "--reuse-port",
    ]  # fmt: skip
    if opts.access_log:
        cmd.append("--access-log")
    return cmd


async def serve_forever(
    opts: ServeOptions, *, reuse_port: bool = False, parent_pid: int | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation). With workers > 1, child processes
    share the port; they are stopped with the parent, and stop by themselves if the
    parent disappears without stopping them (``parent_pid``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, port = await start(opts, reuse_port=reuse_port or opts.workers > 1)
    children: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(opts.workers - 1):
            cmd = [*child_command(opts, port), "--parent-pid", str(os.getpid())]
            child = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL)
            children.append(child)
        hosts = ", ".join(f"http://{h}:{port}" for h in opts.hosts)
        os.write(1, f"{hosts}\n".encode())
        while not stop.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                break  # orphaned: the parent died without stopping us
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
        for child in children:
            await child.wait()
        await runner.cleanup()
