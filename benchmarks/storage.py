"""What --save-dir and --warc cost: the fetch pipeline with and without them, interleaved
round by round against the embedded server, every URL with its own body (/unique/<i>).

    python benchmarks/storage.py --n 20000 -c 100 --rounds 5 --body-bytes 8192

Prints URLs/s per variant (median of the rounds) and the ratio to the plain run. The body
directory and WARC file are removed before each round, so every body is really written.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

import orjson
import uvloop
from msgspec.structs import replace

from crawler.bench.runner import GeneratedSource, embedded_server
from crawler.bench.server import ServeOptions
from crawler.config import LimitConfig, RunConfig, SinkConfig, StoreConfig
from crawler.engine import Engine


async def one_round(config: RunConfig, prefix: str, n: int) -> float:
    engine = Engine(
        config, GeneratedSource(prefix, n, path="unique"), install_signal_handlers=False
    )
    snap = (await engine.run()).snapshot
    assert snap.ok == n, snap.by_error
    return snap.urls_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("-c", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body-bytes", type=int, default=8192)
    parser.add_argument(
        "--dir",
        default=None,
        help="where bodies and WARC go (default: the temp dir; "
        "/dev/shm takes the disk out of the measurement)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="variants to run")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="server latency (fixed)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="crawler-storage-bench-", dir=args.dir))
    base = RunConfig(
        limits=LimitConfig(concurrency=args.c, per_host=0),
        sink=SinkConfig(output="/dev/null"),
    )
    variants = {
        "plain": StoreConfig(),
        "save-dir": StoreConfig(save_dir=str(work / "bodies")),
        "warc": StoreConfig(warc=str(work / "out.warc.gz")),
        "save-dir+warc": StoreConfig(save_dir=str(work / "bodies"), warc=str(work / "out.warc.gz")),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only or k == "plain"}
    results: dict[str, list[float]] = {name: [] for name in variants}
    try:
        opts = ServeOptions(
            port=0, body_bytes=args.body_bytes, latency_ms=args.latency_ms, latency_dist="fixed"
        )
        with embedded_server(opts) as prefix:
            for _ in range(args.rounds):
                for name, store in variants.items():
                    shutil.rmtree(work / "bodies", ignore_errors=True)
                    (work / "out.warc.gz").unlink(missing_ok=True)
                    config = replace(base, store=store)
                    rate = uvloop.run(one_round(config, prefix, args.n))
                    results[name].append(rate)
                    print(f"{name:>14}: {rate:9,.0f} URLs/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    plain = statistics.median(results["plain"])
    summary = {
        name: {
            "urls_per_s": round(statistics.median(runs), 1),
            "ratio_to_plain": round(statistics.median(runs) / plain, 3),
            "runs": [round(r) for r in runs],
        }
        for name, runs in results.items()
    }
    report = {
        "n": args.n,
        "c": args.c,
        "body_bytes": args.body_bytes,
        "dir": str(work),
        "latency_ms": args.latency_ms,
        "rounds": args.rounds,
        "results": summary,
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
