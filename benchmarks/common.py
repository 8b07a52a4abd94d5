"""Shared helpers for the benchmark scripts: a local server (see server.py: nginx if
installed, else an aiohttp.web app in its own processes), URL files, timing subprocesses,
medians."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from server import running


@contextlib.contextmanager
def local_server(kind: str = "auto", workers: int = 1, hosts: int = 1) -> Iterator[tuple[str, str]]:
    """Yield (URL prefix, description) of a local server in its own process(es):
    nginx when installed and kind is auto/nginx, else the aiohttp.web server of server.py
    (``hosts``: nginx answers on 127.0.0.1 .. 127.0.0.{hosts})."""
    with running(kind, workers, hosts=hosts) as served:
        yield served


def write_urls(path: Path, prefix: str, n: int, route: str = "page") -> None:
    with path.open("w") as f:
        f.writelines(f"{prefix}/{route}/{i}\n" for i in range(n))


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run cmd; return (wall seconds, peak RSS MiB via /usr/bin/time -f %M, stdout)."""
    elapsed, rss, stdout, _ = timed_cpu(cmd, env)
    return elapsed, rss, stdout


def timed_cpu(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str, float]:
    """``timed`` and the CPU seconds (user + system) the command used.

    The client runs in a process group of its own; if this script is interrupted, the
    whole group (``/usr/bin/time`` and the client under it) is stopped before unwinding."""
    cpu_before = _children_cpu()
    time_bin = "/usr/bin/time"
    full = [time_bin, "-f", "%M", *cmd] if os.path.exists(time_bin) else cmd
    started = time.perf_counter()
    proc = subprocess.Popen(
        full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        stop_group(proc)
        raise
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}): {stderr[-500:]}")
    rss = 0.0
    if full is not cmd:
        rss = int(stderr.strip().splitlines()[-1]) / 1024
    return elapsed, rss, stdout, _children_cpu() - cpu_before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_group(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the process group led by proc, then SIGKILL it after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            # the leader is gone; make sure nothing it started is left in the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import aiohttp

    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = "no"
    return {
        "nproc": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "uvloop": uv,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main so that Ctrl-C and SIGTERM unwind it: the context managers and
    ``subprocess.run`` then stop the servers and clients it started. Exit 130 / 143."""

    def on_term(_sig: int, _frame: object) -> None:
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
