"""`crawler crawl` against Scrapy following links, on the embedded server's synthetic site.

    python benchmarks/crawl_peers.py --pages 5000 -c 100 --rounds 3

Both crawl PREFIX/site/0?size=PAGES (every page links to ten children, home and its
parent; PAGES distinct pages), breadth-first, deduplicated, same concurrency, no per-host
limit, robots.txt off for Scrapy (the embedded server has none: crawler's one request for
it is a 404), output discarded. Interleaved rounds, medians; wall time of the whole
process (start-up included) and peak RSS via /usr/bin/time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import median, run_main, timed
from peers import peer_python

from crawler.bench.runner import embedded_server
from crawler.bench.server import ServeOptions

HERE = Path(__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=5000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    python = peer_python()
    results: dict[str, list[tuple[float, float]]] = {"crawler crawl": [], "scrapy": []}
    with embedded_server(ServeOptions(port=0, workers=1)) as prefix:
        start = f"{prefix}/site/0?size={args.pages}"
        commands = {
            "crawler crawl": [
                sys.executable,
                "-m",
                "crawler",
                "crawl",
                start,
                "-c",
                str(args.c),
                "--per-host",
                "0",
                "-o",
                "/dev/null",
                "-q",
            ],
        }
        if python:
            commands["scrapy"] = [python, str(HERE / "peers" / "scrapy_crawl.py"), start,
                                  "-c", str(args.c)]  # fmt: skip
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                wall, rss, out = timed(cmd)
                if name == "scrapy":
                    pages = json.loads(out.strip().splitlines()[-1])["pages"]
                    assert pages == args.pages, f"scrapy crawled {pages} pages"
                results[name].append((wall, rss))
                print(f"{name:>14}: {args.pages / wall:8,.0f} pages/s  {rss:6.1f} MiB", flush=True)
    summary = {
        name: {
            "pages_per_s": round(args.pages / median([w for w, _ in runs]), 1),
            "peak_rss_mib": round(median([r for _, r in runs]), 1),
        }
        for name, runs in results.items()
        if runs
    }
    if "scrapy" in summary:
        ratio = summary["crawler crawl"]["pages_per_s"] / summary["scrapy"]["pages_per_s"]
        summary["crawler crawl"]["ratio_to_scrapy"] = round(ratio, 2)
    print(json.dumps({"pages": args.pages, "c": args.c, "rounds": args.rounds, **summary},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    run_main(main)
