"""The baseline every crawler figure is compared with: one aiohttp ClientSession, an
asyncio.Queue of N URLs, C worker tasks each doing ``async with session.get(url) as r:
await r.read()``. Prints one JSON line: URLs/s, errors and its own peak RSS.

    python benchmarks/bare_aiohttp.py --prefix http://127.0.0.1:8080 --n 20000 -c 100 [--uvloop]
    python benchmarks/bare_aiohttp.py URLS.txt -c 100 [--uvloop]

With --prefix the URLs are PREFIX/page/0 … PREFIX/page/N-1 (distinct); with a file, one
URL per line (--n then keeps only the first N). The timing covers the fetches only, not
the interpreter's start; callers that time the whole process see both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import aiohttp


def load(path: str, n: int | None) -> list[str]:
    urls = []
    with open(path) as f:
        for line in f:
            url = line.strip()
            if url:
                urls.append(url)
                if n is not None and len(urls) >= n:
                    break
    return urls


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM from /proc (ru_maxrss survives execve, so it can
    report a big parent's peak), else ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(urls: list[str], concurrency: int) -> dict[str, object]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for url in urls:
        queue.put_nowait(url)
    n = queue.qsize()
    errors = 0
    not_ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, not_ok
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        not_ok += 1
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
        "http_errors": not_ok,
        "seconds": round(elapsed, 3),
        "urls_per_s": round(n / elapsed, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description="bare aiohttp fetch loop (the baseline)")
    parser.add_argument("urls", nargs="?", help="file of URLs, one a line")
    parser.add_argument("--prefix", help="generate PREFIX/page/i for i < N instead of a file")
    parser.add_argument("--n", type=int, default=None, help="number of URLs")
    parser.add_argument("-c", type=int, default=100, help="worker tasks (and connection limit)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.prefix:
        urls = [f"{args.prefix.rstrip('/')}/page/{i}" for i in range(args.n or 20_000)]
    elif args.urls:
        urls = load(args.urls, args.n)
    else:
        parser.error("give a URL file or --prefix")
    if args.uvloop:
        import uvloop

        result = uvloop.run(main(urls, args.c))
    else:
        result = asyncio.run(main(urls, args.c))
    result["loop"] = "uvloop" if args.uvloop else "asyncio"
    print(json.dumps(result))


if __name__ == "__main__":
    cli()
