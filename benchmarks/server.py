"""A fast local HTTP server to benchmark against, in its own process(es).

    python benchmarks/server.py --port 8080 --workers 2          # aiohttp.web (uvloop if any)
    python benchmarks/server.py --port 8080 --kind nginx --workers 1

Every GET/HEAD on any path gets 200 with a fixed text/html body (``--body-bytes``, 512 by
default); nginx sends it gzip-encoded under ``/gzip/`` (to a client that accepts gzip).
``--kind aiohttp`` runs N worker processes that each bind the port with SO_REUSEPORT (the
kernel spreads connections over them); the launching process only supervises them and
serves nothing. ``--kind nginx`` writes a minimal config into a temp
directory (127.0.0.1 only, ``return 200``, access_log off, N worker processes) and runs
``nginx -g 'daemon off;'``. ``--kind auto`` is nginx when installed, else aiohttp.

The server prints its URL prefix (``http://127.0.0.1:PORT``) on one line of stdout once it
accepts connections, and runs until SIGINT/SIGTERM; it stops its workers on the way out.
Workers also stop by themselves when the supervisor disappears.

Other scripts use :func:`running` (a context manager) instead of the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BODY_BYTES = 512


def body(size: int = BODY_BYTES) -> bytes:
    head, tail = b"<html><body>", b"</body></html>"
    if size <= len(head) + len(tail):
        return (b"x" * size)[:size]
    return head + b"x" * (size - len(head) - len(tail)) + tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start within {timeout:g} s")


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM us when our parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- aiohttp worker


async def _worker_main(port: int, body_bytes: int, parent_pid: int) -> None:
    from aiohttp import web

    payload = body(body_bytes)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)  # add_get also answers HEAD
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_port=True, backlog=4096)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set() and os.getppid() == parent_pid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await runner.cleanup()


def run_worker(port: int, body_bytes: int, parent_pid: int) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker_main(port, body_bytes, parent_pid))
    else:
        uvloop.run(_worker_main(port, body_bytes, parent_pid))


def _uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- nginx


def nginx_config(tmp: Path, port: int, workers: int, body_bytes: int, hosts: int = 1) -> Path:
    """``hosts``: listen on 127.0.0.1 .. 127.0.0.{hosts} (loopback addresses all)."""
    text = body(body_bytes).decode()
    listen = "\n        ".join(
        f"listen 127.0.0.{i}:{port} backlog=4096 reuseport;" for i in range(1, hosts + 1)
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    server {{
        {listen}
        location / {{ default_type text/html; return 200 '{text}'; }}
        location /gzip/ {{
            gzip on; gzip_min_length 0; gzip_comp_level 1;
            default_type text/html; return 200 '{text}';
        }}
        location /status/503 {{ add_header Retry-After 1; return 503 'busy'; }}
    }}
}}
"""
    )
    return conf


def nginx_version(nginx: str) -> str:
    res = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return res.stderr.strip().removeprefix("nginx version: ")


# --------------------------------------------------------------------------- launching


@contextlib.contextmanager
def running(
    kind: str = "auto",
    workers: int = 1,
    port: int = 0,
    body_bytes: int = BODY_BYTES,
    hosts: int = 1,
) -> Iterator[tuple[str, str]]:
    """Start the server in child process(es); yield (URL prefix, description); stop it.

    kind: ``auto`` (nginx when installed, else aiohttp), ``nginx`` or ``aiohttp``
    (``embedded`` is an alias of ``aiohttp``). ``hosts`` (nginx): the prefix is
    127.0.0.1's, and the server answers on 127.0.0.2 .. 127.0.0.{hosts} too."""
    if kind == "embedded":
        kind = "aiohttp"
    nginx = shutil.which("nginx")
    if kind == "auto":
        kind = "nginx" if nginx else "aiohttp"
    if kind == "nginx" and not nginx:
        raise RuntimeError("nginx is not installed (use --server aiohttp)")
    port = port or free_port()
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="crawler-bench-server-"))
    try:
        if kind == "nginx":
            assert nginx is not None
            conf = nginx_config(tmp, port, workers, body_bytes, hosts)
            procs.append(
                subprocess.Popen(
                    [nginx, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            )
            desc = f"{nginx_version(nginx)}, {workers} worker process(es)"
        else:
            for _ in range(workers):
                cmd = [sys.executable, __file__, "--_worker", "--port", str(port),
                       "--body-bytes", str(body_bytes), "--_parent", str(os.getpid())]  # fmt: skip
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
            import aiohttp

            loop = "uvloop" if _uvloop_available() else "asyncio"
            desc = f"aiohttp.web {aiohttp.__version__} on {loop}, {workers} process(es)"
        wait_port(port, proc=procs[0])
        if kind == "aiohttp":
            time.sleep(0.2 * workers)  # let every SO_REUSEPORT worker bind, not only the first
        yield f"http://127.0.0.1:{port}", desc
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port")
    ap.add_argument("--workers", type=int, default=1, help="server processes")
    ap.add_argument("--kind", default="aiohttp", choices=["auto", "aiohttp", "nginx"])
    ap.add_argument("--body-bytes", type=int, default=BODY_BYTES)
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_parent", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        run_worker(args.port, args.body_bytes, args._parent)
        return
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with running(args.kind, args.workers, args.port, args.body_bytes) as (prefix, desc):
        print(prefix, flush=True)
        print(f"serving: {desc}", file=sys.stderr, flush=True)
        while not stop:
            time.sleep(0.2)


if __name__ == "__main__":
    main()
