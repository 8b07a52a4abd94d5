"""The floor under a one-URL ``crawler fetch``: the least program with crawler's dependencies.

It imports what a run imports from outside crawler (typer for its command line, aiohttp
with the CA store left unread as ``crawler.tls`` does, uvloop, orjson, msgspec, aiofiles),
fetches one URL, writes one JSON line to a file, and exits; the collector off during
imports and frozen before the loop, as ``crawler.__main__`` and ``run_loop`` do. What
``crawler fetch URL -o FILE`` takes above this, in the same run, is crawler's own cost.

    python benchmarks/startup.py -r 30 "python benchmarks/startup_floor.py URL" \\
        "crawler fetch URL -o /dev/null"
"""

from __future__ import annotations

import gc
import os
import sys

gc.disable()
import typer  # noqa: E402  (the CLI's framework: its import is part of every run)

_saved = {k: os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
os.environ.update(SSL_CERT_FILE=os.devnull, SSL_CERT_DIR=os.devnull)
import aiohttp  # noqa: E402

for _key, _value in _saved.items():
    if _value is None:
        os.environ.pop(_key, None)
    else:
        os.environ[_key] = _value

import aiofiles  # noqa: E402
import msgspec  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402


async def main(url: str, path: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await response.read()
    line = orjson.dumps({"url": url, "status": response.status, "bytes": len(body)})
    async with aiofiles.open(path, "wb") as out:
        await out.write(line + b"\n")


if __name__ == "__main__":
    assert typer and msgspec  # imported for their cost only
    gc.freeze()
    gc.enable()
    uvloop.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.devnull))
