"""Shared helpers for the benchmark scripts: a local server (nginx if installed, else
``crawler serve``), URL files, timing subprocesses, medians."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BODY = "<html><body>" + "x" * 500 + "</body></html>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


@contextlib.contextmanager
def local_server(kind: str = "auto", workers: int = 1) -> Iterator[tuple[str, str]]:
    """Yield (URL prefix, description). nginx when installed (and kind != 'embedded')."""
    port = free_port()
    nginx = shutil.which("nginx")
    tmp = Path(tempfile.mkdtemp(prefix="crawler-bench-"))
    if kind in ("auto", "nginx") and nginx:
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"""
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/html; return 200 '{BODY}'; }}
        location /status/503 {{ add_header Retry-After 1; return 503 'busy'; }}
    }}
}}
"""
        )
        proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)])
        version = subprocess.run(
            [nginx, "-v"], capture_output=True, text=True, check=False
        ).stderr.strip()
        desc = f"{version} ({workers} worker)"
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "crawler", "serve", "--port", str(port),
             "--workers", str(workers), "--body-bytes", str(len(BODY))],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        desc = f"crawler serve ({workers} process)"
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", desc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def write_urls(path: Path, prefix: str, n: int) -> None:
    with path.open("w") as f:
        f.writelines(f"{prefix}/page/{i}\n" for i in range(n))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run cmd; return (wall seconds, peak RSS MiB via /usr/bin/time, stdout)."""
    time_bin = "/usr/bin/time"
    full = [time_bin, "-f", "%M", *cmd] if os.path.exists(time_bin) else cmd
    started = time.perf_counter()
    proc = subprocess.run(
        full, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-500:]}")
    rss = 0.0
    if full is not cmd:
        rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return elapsed, rss, proc.stdout


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
