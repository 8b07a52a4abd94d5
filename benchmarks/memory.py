"""Peak RSS of `crawler fetch` on a long input, with and without dedup.

    python benchmarks/memory.py                       # 1,000,000 lines
    python benchmarks/memory.py --lines 100000 1000000 10000000
    python benchmarks/memory.py --lines 200000 --target server   # real fetches, slower
    python benchmarks/memory.py --lines 10000000 --workers 1 2 --hosts 8 --dedup-only

The input (generated into a temp dir) holds distinct URLs, one a line.

--target closed (default): every URL is http://127.0.0.1:9/item/<i>, a closed port, run with
``--retries 0 --breaker-threshold 1``: the first URL fails with `connect`, which opens the
host's breaker, and every later URL gets a `circuit_open` record at once (in a run longer
than the 30 s cool-down, each half-open probe adds one more `connect`). Every line still
goes through reader, dedup, frontier, a worker, the breaker and the sink, without waiting
on a network, so 10^6 lines take seconds, not minutes.

--target server: the URLs point at the local benchmark server (server.py) and are really
fetched (c = 100, --per-host 100).

Each run is `crawler fetch URLS -o /dev/null -q --stats-json TMP [...] [--no-dedup]
[--workers N]`; peak RSS is the crawler's own --stats-json peak_rss_mib (VmHWM; with
--workers the sum over the coordinator and its workers, each at its own peak: an upper
bound of the process tree's), cross-checked with /usr/bin/time -f %M (the largest single
process). ``--hosts H`` spreads the URLs over 127.0.0.1 .. 127.0.0.H (closed target: port 9
on each), so --workers has hosts to share out. Raw rows are saved as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import local_server, machine, run_main, timed

OUT = Path(__file__).parent / "out"


@contextlib.contextmanager
def target(kind: str, server: str) -> Iterator[tuple[str, list[str], str]]:
    """Yield (URL prefix, extra crawler options, description); the prefix's host is
    127.0.0.1 (see --hosts)."""
    if kind == "closed":
        yield (
            "http://127.0.0.1:9/item",
            ["--retries", "0", "--breaker-threshold", "1"],
            "closed port 127.0.0.1:9 (connect refused, then circuit_open)",
        )
        return
    with local_server(server) as (prefix, desc):
        yield f"{prefix}/page", ["-c", "100", "--per-host", "100"], desc


def main() -> None:
    ap = argparse.ArgumentParser(description="peak RSS of crawler fetch on a long input")
    ap.add_argument("--lines", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--target", default="closed", choices=["closed", "server"])
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp"])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON only")
    ap.add_argument("--workers", type=int, nargs="+", default=[1])
    ap.add_argument("--hosts", type=int, default=1)
    ap.add_argument("--dedup-only", action="store_true", help="no --no-dedup runs")
    args = ap.parse_args()
    rows = []
    with target(args.target, args.server) as (prefix, extra, desc), \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        for n in args.lines:
            urls = Path(tmp) / f"urls-{n}.txt"
            hosts = [prefix.replace("127.0.0.1", f"127.0.0.{h + 1}") for h in range(args.hosts)]
            with urls.open("w") as f:
                f.writelines(f"{hosts[i % args.hosts]}/{i}\n" for i in range(n))
            runs = [
                (d, w) for w in args.workers for d in (True, False)[: 1 if args.dedup_only else 2]
            ]
            for dedup, workers in runs:
                stats = Path(tmp) / "stats.json"
                stats.unlink(missing_ok=True)
                cmd = [
                    sys.executable, "-m", "crawler", "fetch", str(urls), *extra,
                    "-o", "/dev/null", "-q", "--stats-json", str(stats), "--workers", str(workers),
                ]  # fmt: skip
                if not dedup:
                    cmd.append("--no-dedup")
                secs, time_rss, _ = timed(cmd)
                rep = json.loads(stats.read_text())
                if rep["urls_done"] != n:
                    raise RuntimeError(f"{rep['urls_done']} records for {n} lines: {rep}")
                rows.append(
                    {"lines": n, "dedup": dedup, "workers": workers, "records": rep["urls_done"],
                     "by_error": rep["by_error"], "ok": rep["ok"],
                     "seconds": round(secs, 1), "urls_per_s": round(n / secs),
                     "peak_rss_mib": rep["peak_rss_mib"],
                     "time_maxrss_mib": round(time_rss, 1),
                     "input_mib": round(urls.stat().st_size / 2**20, 1)}
                )  # fmt: skip
                if not args.json:
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            urls.unlink()
    OUT.mkdir(exist_ok=True)
    report = {"machine": machine(), "target": desc, "rows": rows}
    (OUT / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report))
    if args.json:
        print(json.dumps(report))
        return
    print(f"target: {desc}")
    print(
        f"{'lines':>10} {'input MiB':>9} {'dedup':>5} {'workers':>7} {'records':>10} {'s':>7}"
        f" {'URLs/s':>8}"
        f" {'RSS MiB':>8} {'time %M':>8}"
    )
    for r in rows:
        print(
            f"{r['lines']:>10} {r['input_mib']:>9} {r['dedup']!s:>5} {r['workers']:>7}"
            f" {r['records']:>10} {r['seconds']:>7} {r['urls_per_s']:>8} {r['peak_rss_mib']:>8}"
            f" {r['time_maxrss_mib']:>8}"
        )


if __name__ == "__main__":
    run_main(main)
