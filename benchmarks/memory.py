"""Peak RSS of `crawler fetch` against input length, with and without dedup.

    python benchmarks/memory.py --lines 100000 10000000

Every URL is distinct and points at a closed port on 127.0.0.1 with `--retries 0
--breaker-threshold 1`, so after the first failure each URL gets a `circuit_open` record
at once: every line still goes through the reader, dedup, the frontier, a worker, the
breaker and the sink, without waiting on a network, so 10^7 lines take minutes, not hours.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, nargs="+", default=[100_000, 10_000_000])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lines:
            urls = Path(tmp) / f"urls-{n}.txt"
            with urls.open("w") as f:
                f.writelines(f"http://127.0.0.1:9/item/{i}\n" for i in range(n))
            for dedup in (True, False):
                stats = Path(tmp) / "stats.json"
                cmd = [
                    sys.executable, "-m", "crawler", "fetch", str(urls), "--retries", "0",
                    "--breaker-threshold", "1", "-o", "/dev/null", "-q",
                    "--stats-json", str(stats),
                ]  # fmt: skip
                if not dedup:
                    cmd.append("--no-dedup")
                secs, rss, _ = timed(cmd)
                done = json.loads(stats.read_text())["urls_done"]
                rows.append(
                    {"lines": n, "dedup": dedup, "records": done, "seconds": round(secs, 1),
                     "urls_per_s": round(n / secs), "peak_rss_mib": round(rss, 1),
                     "input_mib": round(urls.stat().st_size / 2**20, 1)}
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
            urls.unlink()
    print(f"{'lines':>10} {'dedup':>5} {'records':>10} {'s':>7} {'URLs/s':>8} {'RSS MiB':>8}")
    for r in rows:
        print(
            f"{r['lines']:>10} {r['dedup']!s:>5} {r['records']:>10} {r['seconds']:>7}"
            f" {r['urls_per_s']:>8} {r['peak_rss_mib']:>8}"
        )


if __name__ == "__main__":
    main()
