"""Peer: httpx.AsyncClient, one client, a queue, C workers. Runs in its own virtualenv.

python httpx_client.py URLS.txt -c 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx


def load(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f]


async def main(urls: list[str], c: int) -> dict[str, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    errors = 0
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            url = queue.get_nowait()
            try:
                resp = await client.get(url)
                await resp.aread()
            except httpx.HTTPError:
                errors += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(c)))
    secs = time.perf_counter() - started
    return {"urls": len(urls), "errors": errors, "urls_per_s": round(len(urls) / secs, 1)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("urls")
    ap.add_argument("-c", type=int, default=100)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(load(a.urls), a.c))))
