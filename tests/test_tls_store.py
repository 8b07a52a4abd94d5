"""The system's CA store is read once, by a run's first TLS connection, and never by a run
of plain-HTTP URLs (crawler.tls): aiohttp's import-time contexts are made without it, and
the store the user points at (SSL_CERT_FILE) is the one a run verifies with."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from crawler.tls import unloaded_context
from tests.test_cli import CRAWLER, ENV

ROOT = Path(__file__).resolve().parent.parent
SEEN: list[str] = []

# Runs the entry point as the console script does, with every read of a default store
# (``set_default_verify_paths``: aiohttp's contexts and ``load_default_certs``) logged
# with the file OpenSSL would read then: the store, or os.devnull.
_PROBE = """
import os, ssl, sys
reads = []
real = ssl.SSLContext.set_default_verify_paths
def logged(self):
    reads.append(os.environ.get("SSL_CERT_FILE"))
    return real(self)
ssl.SSLContext.set_default_verify_paths = logged
sys.argv = ["crawler", *sys.argv[1:]]
from crawler.__main__ import main
try:
    main()
except SystemExit:
    pass
print("READS", sum(r != os.devnull for r in reads), file=sys.stderr)
"""


@pytest.fixture
async def https_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """An https server on 127.0.0.1 (its paths seen in ``SEEN``), and the PEM file of the CA
    that signed its certificate."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))

    async def hello(request: web.Request) -> web.Response:
        SEEN.append(request.path)
        return web.Response(text="secret")

    SEEN.clear()
    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.1:{port}/", pem
    finally:
        await runner.cleanup()


async def test_the_run_verifies_with_the_users_default_store(
    https_server: tuple[str, Path],
) -> None:
    """SSL_CERT_FILE names the store: the certificate is trusted through it (the
    environment is the user's again after aiohttp's import), and refused without it."""
    url, pem = https_server
    env = {**ENV, "SSL_CERT_FILE": str(pem)}
    out, _ = await _crawler(*CRAWLER, "fetch", url, "-q", "--retries", "0", env=env)
    assert b'"status":200' in out and b'"ok":true' in out
    env = {k: v for k, v in ENV.items() if k != "SSL_CERT_FILE"}
    out, _ = await _crawler(*CRAWLER, "fetch", url, "-q", "--retries", "0", env=env)
    assert b'"kind":"tls"' in out


async def _crawler(*argv: str, env: dict[str, str]) -> tuple[bytes, bytes]:
    """Run ARGV to its end (exit status 0): its stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 0, err
    return out, err


async def _reads_of_the_store(*argv: str, env: dict[str, str] = ENV) -> int:
    """Reads of a default CA store by ``crawler ARGV`` (see _PROBE)."""
    _, err = await _crawler(sys.executable, "-c", _PROBE, *argv, env=env)
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("READS "), err
    return int(last.split()[1])


async def test_the_store_is_read_once_and_only_for_tls(https_server: tuple[str, Path]) -> None:
    """A plain-HTTP run reads no CA store (port 9 refuses: the run is a whole one); an
    https run reads it once, whatever its number of requests."""
    plain = ("fetch", "http://127.0.0.1:9/", "-q", "--retries", "0")
    assert await _reads_of_the_store(*plain) == 0
    url, pem = https_server
    env = {**ENV, "SSL_CERT_FILE": str(pem)}
    urls = [url, url + "?2", url + "?3"]
    assert await _reads_of_the_store("fetch", *urls, "-q", "--retries", "0", env=env) == 1


def test_the_unloaded_context_is_the_default_one_without_certificates() -> None:
    """ssl.create_default_context()'s settings, on this Python, and no certificate."""
    ours, default = unloaded_context(), ssl.create_default_context()
    for name in (
        "options",
        "verify_flags",
        "verify_mode",
        "check_hostname",
        "minimum_version",
        "maximum_version",
        "protocol",
    ):
        assert getattr(ours, name) == getattr(default, name), name
    assert ours.cert_store_stats()["x509"] == 0 < default.cert_store_stats()["x509"]


async def test_bench_baseline_verifies_an_https_target(https_server: tuple[str, Path]) -> None:
    """``bench --compare``'s bare aiohttp loop verifies with the CA store, whichever way
    aiohttp was loaded: its requests reach an https --target as the run's do."""
    url, pem = https_server
    env = {**ENV, "SSL_CERT_FILE": str(pem)}
    argv = ("bench", "--json", "-n", "20", "-c", "4", "--rounds", "1", "--compare")
    await _crawler(*CRAWLER, *argv, "--target", url.rstrip("/"), env=env)
    assert sum(path.startswith("/page/") for path in SEEN) == 2 * 20  # the run, the loop
