"""crawler fetch against a bare aiohttp loop, interleaved on the same local server.

    python benchmarks/run_core.py --n 20000 -c 100 --rounds 3 [--server embedded|nginx]

Each round runs every client once, in turn, as a separate process; the table shows the
median URLs/s over rounds, the ratio to the bare aiohttp loop on the same event loop,
and the median peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import local_server, median, timed, write_urls

HERE = Path(__file__).parent


def clients(urls: Path, c: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    bare = [sys.executable, str(HERE / "bare_aiohttp.py"), str(urls), "-c", str(c)]
    fetch = [
        sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(c),
        "--per-host", str(c), "-o", "/dev/null", "-q",
    ]  # fmt: skip
    return {
        "bare aiohttp (asyncio)": (bare, {}),
        "crawler fetch (asyncio)": ([*fetch, "--no-uvloop"], {}),
        "bare aiohttp (uvloop)": ([*bare, "--uvloop"], {}),
        "crawler fetch (uvloop)": (fetch, {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "embedded"])
    ap.add_argument("--server-workers", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {}
    with local_server(args.server, args.server_workers) as (prefix, desc), \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        urls = Path(tmp) / "urls.txt"
        write_urls(urls, prefix, args.n)
        for _ in range(args.rounds):
            for name, (cmd, env) in clients(urls, args.c).items():
                secs, rss, _ = timed(cmd, env)
                results.setdefault(name, []).append((args.n / secs, rss))
    rows = {}
    for name, runs in results.items():
        rows[name] = {
            "urls_per_s": round(median([r for r, _ in runs]), 1),
            "runs": [round(r) for r, _ in runs],
            "peak_rss_mib": round(median([m for _, m in runs]), 1),
        }
    for loop in ("asyncio", "uvloop"):
        base = rows[f"bare aiohttp ({loop})"]["urls_per_s"]
        for name in rows:
            if name.endswith(f"({loop})"):
                rows[name]["ratio_to_bare"] = round(rows[name]["urls_per_s"] / base, 3)
    report = {"server": desc, "n": args.n, "concurrency": args.c, "rounds": args.rounds,
              "clients": rows}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return
    print(f"server: {desc}; N={args.n}, c={args.c}, medians of {args.rounds} rounds (wall time)")
    print(f"{'client':28} {'URLs/s':>9} {'ratio':>6} {'RSS MiB':>8}  runs")
    for name, row in rows.items():
        print(
            f"{name:28} {row['urls_per_s']:9.0f} {row['ratio_to_bare']:6.2f}"
            f" {row['peak_rss_mib']:8.1f}  {row['runs']}"
        )


if __name__ == "__main__":
    main()
