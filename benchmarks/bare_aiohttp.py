"""The baseline every crawler figure is compared with: one aiohttp session, a queue of
URLs, C worker tasks, ``resp.read()``. Prints one JSON line: URLs/s and peak RSS.

    python benchmarks/bare_aiohttp.py URLS.txt -c 100 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import aiohttp


def load(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f]


async def main(urls: list[str], concurrency: int) -> dict[str, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    n = queue.qsize()
    errors = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            url = queue.get_nowait()
            try:
                async with session.get(url) as resp:
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                errors += 1

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "urls": n,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "urls_per_s": round(n / elapsed, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("-c", type=int, default=100)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        result = uvloop.run(main(load(args.urls), args.c))
    else:
        result = asyncio.run(main(load(args.urls), args.c))
    print(json.dumps(result))
