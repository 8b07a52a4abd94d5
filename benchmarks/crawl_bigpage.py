"""Does a big page stall the event loop? Crawl mode parses pages over 64 KiB in a child
process; this measures loop lag while 5 MB pages are parsed, against parsing them inline.

    python benchmarks/crawl_bigpage.py --pages 10 --mb 5 --rounds 3

A local server (python -m http.server, its own process) serves PAGES copies of a
MB-megabyte HTML page with ~20 links per KiB. The crawl fetches them (depth 1, links
excluded by --exclude, so every page is parsed and nothing more is fetched) alongside a
steady stream of small pages; the event loop's lag is sampled every 100 ms by the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from msgspec.structs import replace

sys.path.insert(0, str(Path(__file__).parent))
from server import free_port, wait_port

from crawler.config import CrawlConfig, LimitConfig, RunConfig, SinkConfig
from crawler.engine import Engine
from crawler.inputs import SeedSource


def make_site(root: Path, pages: int, mb: float) -> None:
    link = '<p>Some text of a paragraph, then <a href="/x/{i}.html">link {i}</a>.</p>\n'
    body = "".join(link.format(i=i) for i in range(int(mb * 1024 * 1024 / 60)))
    html = f"<!doctype html><html><body>{body}</body></html>"
    for p in range(pages):
        (root / f"big{p}.html").write_text(html)
    for p in range(2000):
        (root / f"small{p}.html").write_text(f"<html><body><p>small {p}</p></body></html>")


async def crawl(config: RunConfig, seeds: list[str]) -> dict[str, float]:
    engine = Engine(config, SeedSource(seeds, []), install_signal_handlers=False)
    snap = (await engine.run()).snapshot
    assert snap.ok == len(seeds), snap.by_error
    return {"lag_p99_ms": snap.loop_lag_ms["p99"], "lag_max_ms": snap.loop_lag_ms["max"],
            "elapsed_s": snap.elapsed_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_site(root, args.pages, args.mb)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(port, proc=server)
            base = f"http://127.0.0.1:{port}"
            seeds = []
            for p in range(args.pages):  # big pages spread among small ones
                seeds.append(f"{base}/big{p}.html")
                seeds.extend(f"{base}/small{p * 200 + i}.html" for i in range(200))
            crawl_config = CrawlConfig(max_depth=1, exclude=(r"/x/",), obey_robots=False)
            base_config = RunConfig(
                limits=LimitConfig(concurrency=8, per_host=8),
                sink=SinkConfig(output="/dev/null"),
                crawl=crawl_config,
            )
            variants = {
                "child process (default, > 64 KiB)": base_config,
                "inline (in the event loop)": replace(
                    base_config, crawl=replace(crawl_config, parse_inline_bytes=1 << 40)
                ),
            }
            results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, config in variants.items():
                    results[name].append(asyncio.run(crawl(config, seeds)))
                    print(name, results[name][-1], flush=True)
        finally:
            server.terminate()
            server.wait()
    summary = {
        name: {key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]}
        for name, runs in results.items()
    }
    print(orjson.dumps({"pages": args.pages, "mb": args.mb, "rounds": args.rounds,
                        "median": summary}, option=orjson.OPT_INDENT_2).decode())  # fmt: skip


if __name__ == "__main__":
    main()
