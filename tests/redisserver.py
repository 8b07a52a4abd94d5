"""A test's own ``redis-server``: on a free port, in the test's temp dir, no persistence,
stopped when the test ends. Two suites never share one.

Without ``redis-server`` on PATH the Redis tests skip, except under ``CI=true``, where a
missing server fails them: CI installs it (``.ci/run``), so a skip there would hide a
broken set-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crawler.redisjob import Job, connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a redis-server; its process and URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (CI must install it: see .ci/run)")
        pytest.skip("redis-server is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # a free port can be taken by another process before we bind it
        port = _free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if _ping(port):
                return proc, f"redis://127.0.0.1:{port}/0"
            time.sleep(0.02)  # polling with a bound: the server is starting
        proc.kill()
        proc.wait()
    pytest.fail("could not start redis-server")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    proc, url = start_redis(tmp_path / "redis")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def fetch_job(url: str, name: str, shards: int) -> AsyncIterator[Job]:
    """A fetch job NAME of SHARDS shards, made on the Redis at URL; its client closed after."""
    redis = await connect(url)
    try:
        job = Job(redis, name)
        await job.create("fetch", {}, shards=shards)
        yield job
    finally:
        await redis.aclose()
