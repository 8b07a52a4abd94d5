"""The CA store is read only by a run that makes a TLS connection.

aiohttp builds two default SSL contexts when it is imported (``aiohttp.connector``), and
each reads the system's CA store: ~40 ms of CPU apiece, a fifth of a one-URL fetch's
start-up. A run uses neither. Its connectors verify with a context of ours
(``crawler.session.tls_context``), made with no certificate (``unloaded_context``); the
connector loads the default store into it once, at its first connection that may be TLS
(``StoreOnFirstUse``), so a run of plain-HTTP URLs never reads it. ``load_aiohttp`` is
the CLI's import of aiohttp, with OpenSSL's default store pointed at nothing for that
moment: aiohttp's two contexts come out empty (its unverified one, --insecure's, needs
none; its verified one is never handed to a connector of ours).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import threading
from typing import Final

# Where OpenSSL's default store is read from, when these are set (set_default_verify_paths).
_STORE_ENV: Final = ("SSL_CERT_FILE", "SSL_CERT_DIR")


def load_aiohttp() -> None:
    """Import aiohttp without its contexts reading the CA store, then put the environment
    back as it was. Only while no other thread runs: the environment is the process's."""
    if "aiohttp" in sys.modules or threading.active_count() > 1:
        return
    saved = {name: os.environ.get(name) for name in _STORE_ENV}
    os.environ.update(dict.fromkeys(_STORE_ENV, os.devnull))
    try:
        import aiohttp  # noqa: F401 - loaded now, for the run that follows
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def unloaded_context() -> ssl.SSLContext:
    """``ssl.create_default_context()``, the same settings on every Python, with no CA
    certificate yet: its one lookup is a directory that holds none (/dev/null)."""
    return ssl.create_default_context(capath=os.devnull)


class StoreOnFirstUse:
    """Loads the system's default CA store into ``context`` once, in a thread (it reads
    and parses a file of ~150 certificates), the first time ``ready()`` is awaited; every
    caller waits for that one load."""

    __slots__ = ("_context", "_loading")

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._loading: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        if self._loading is None:
            load = asyncio.to_thread(self._context.load_default_certs)
            self._loading = asyncio.ensure_future(load)
        # A caller cancelled while it waits leaves the load to the next one.
        await asyncio.shield(self._loading)
