"""Where crawler's CPU per URL goes, against a bare aiohttp loop (issue #4's gap).

    python benchmarks/cpu_per_url.py --n 20000 -c 100 --rounds 4
        [--target PREFIX] [--loop uvloop|asyncio] [--only bare fetcher crawler pipeline]

CPU time of this process (user + system, getrusage) per URL, on uvloop (or --loop),
against the embedded server in 2 processes (or a running one at --target), interleaved
rounds, medians:

- bare:     one session, a queue of pre-parsed URLs, C workers, the same request options
            as crawler (allow_redirects=False, a per-request ClientTimeout), readany();
- fetcher:  the same loop calling crawler's own ``Fetcher.fetch``;
- crawler:  the whole fetch pipeline (``Engine``, output to /dev/null);
- pipeline: the whole pipeline with a stub fetcher that returns at once (no network):
            what reader, dedup, frontier, workers, breaker, records and sink cost alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import statistics
from typing import Any

import uvloop
from aiohttp import ClientTimeout
from msgspec.structs import replace
from yarl import URL

from crawler.bench.runner import GeneratedSource, embedded_server
from crawler.bench.server import ServeOptions
from crawler.config import FetchConfig, LimitConfig, RunConfig, SinkConfig
from crawler.engine import Engine
from crawler.fetcher import Fetcher
from crawler.response import Response
from crawler.session import make_session


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def loop_of(prefix: str, n: int, c: int, own_fetcher: bool) -> None:
    queue: asyncio.Queue[URL] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(URL(f"{prefix}/page/{i}"))
    config = FetchConfig()
    session = make_session(config)
    fetcher = Fetcher(session, config)
    timeout = ClientTimeout(total=30, sock_connect=10, ceil_threshold=1e9)

    async def worker() -> None:
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if own_fetcher:
                await fetcher.fetch(url, 30.0)
                continue
            async with session.request("GET", url, allow_redirects=False, timeout=timeout) as r:
                while await r.content.readany():
                    pass

    async with session, asyncio.TaskGroup() as tg:
        for _ in range(c):
            tg.create_task(worker())


async def engine_run(config: RunConfig, prefix: str, n: int) -> None:
    engine = Engine(config, GeneratedSource(prefix, n), install_signal_handlers=False)
    snap = (await engine.run()).snapshot
    assert snap.ok == n, snap.by_error


async def stub_fetch(self: Fetcher, url: URL, budget: float, *args: Any) -> Response:
    await asyncio.sleep(0)
    return Response(status=200, final_url=str(url), content_type="text/html", nbytes=512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--target", help="URL prefix of a running server (default: embedded)")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--only", nargs="+", choices=("bare", "fetcher", "crawler", "pipeline"))
    args = ap.parse_args()
    run = uvloop.run if args.loop == "uvloop" else asyncio.run
    config = RunConfig(
        limits=LimitConfig(concurrency=args.c, per_host=0), sink=SinkConfig(output="/dev/null")
    )
    real_fetch = Fetcher.fetch
    names = args.only or ("bare", "fetcher", "crawler", "pipeline")
    results: dict[str, list[float]] = {k: [] for k in names}
    gc.freeze()
    server = (
        contextlib.nullcontext(args.target)
        if args.target
        else embedded_server(ServeOptions(port=0, workers=2))
    )
    with server as prefix:
        for _ in range(args.rounds):
            for name in results:
                Fetcher.fetch = stub_fetch if name == "pipeline" else real_fetch  # type: ignore[method-assign]
                started = cpu()
                if name in ("bare", "fetcher"):
                    run(loop_of(prefix, args.n, args.c, name == "fetcher"))
                else:
                    run(engine_run(replace(config), prefix, args.n))
                results[name].append((cpu() - started) / args.n * 1e6)
                print(f"{name:>9}: {results[name][-1]:6.1f} µs CPU/URL", flush=True)
    Fetcher.fetch = real_fetch  # type: ignore[method-assign]
    print("medians, µs of CPU per URL:")
    for name, runs in results.items():
        print(f"{name:>9}: {statistics.median(runs):6.1f}   runs {[round(r) for r in runs]}")


if __name__ == "__main__":
    main()
