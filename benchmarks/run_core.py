"""crawler fetch against a bare aiohttp loop, interleaved on the same local server.

    python benchmarks/run_core.py --n 20000 -c 100 --rounds 3 [--server auto|nginx|aiohttp]
        [--other-python OTHER_VENV/bin/python]

One server (server.py: nginx when installed, else aiohttp.web in its own processes) is
started once and shared by every run. Each round runs every client once, as a fresh
process, in an order rotated from round to round:

    bare aiohttp (asyncio|uvloop):  python benchmarks/bare_aiohttp.py URLS -c C [--uvloop]
    crawler fetch (asyncio|uvloop): python -m crawler fetch URLS -c C --per-host C
                                    -o /dev/null -q --stats-json TMP [--no-uvloop]

With ``--other-python PY`` each round also runs ``PY -P -m crawler fetch ...`` (named
"crawler fetch (LOOP) [other]"): PY is another venv's python with another tree installed
editable (-P: that tree, not the one in the current directory), so two trees are timed in
the same rounds; "vs other" is then the median of each round's ratio this/other.

URLS holds N distinct URLs PREFIX/page/i. "URLs/s" is N over the wall time of the whole
process (interpreter start included); "in-proc" is the client's own figure (bare: time of
the fetch loop; crawler: --stats-json urls_per_s), which leaves start-up out. Peak RSS is
what each client reports about itself (bare: VmHWM; crawler: --stats-json peak_rss_mib).
Every run must end with N ok responses, or the script says so and stops.
The table gives medians over rounds and the ratio crawler/bare on the same event loop;
"rounds" is the median of each round's own ratio (both clients ran within the same
minute), and "CPU" the client's user + system seconds per URL (start-up included) with
the ratio bare/crawler: time the VM loses to its neighbours does not count there.
Raw runs are saved as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import local_server, machine, median, run_main, timed_cpu, write_urls

HERE = Path(__file__).parent
OUT = HERE / "out"


def clients(
    urls: Path, c: int, stats: Path, loops: list[str], other: str | None = None
) -> dict[str, list[str]]:
    bare = [sys.executable, str(HERE / "bare_aiohttp.py"), str(urls), "-c", str(c)]
    args = [
        "-m", "crawler", "fetch", str(urls), "-c", str(c),
        "--per-host", str(c), "-o", "/dev/null", "-q", "--stats-json", str(stats),
    ]  # fmt: skip
    fetches = {"": [sys.executable, *args]}
    if other:
        fetches[" [other]"] = [other, "-P", *args]
    out = {}
    for loop in loops:
        out[f"bare aiohttp ({loop})"] = [*bare, "--uvloop"] if loop == "uvloop" else bare
        for tag, fetch in fetches.items():
            name = f"crawler fetch ({loop}){tag}"
            out[name] = [*fetch, "--no-uvloop"] if loop == "asyncio" else fetch
    return out


def run_once(name: str, cmd: list[str], n: int, stats: Path) -> dict[str, float]:
    stats.unlink(missing_ok=True)
    secs, time_rss, stdout, cpu = timed_cpu(cmd)
    if name.startswith("bare"):
        rep = json.loads(stdout.strip().splitlines()[-1])
        ok = rep["urls"] - rep["errors"] - rep["http_errors"]
        inproc, rss = rep["urls_per_s"], rep["peak_rss_mib"]
    else:
        rep = json.loads(stats.read_text())
        ok = rep["ok"]
        inproc, rss = rep["urls_per_s"], rep["peak_rss_mib"]
        if rep["urls_done"] != n:
            raise RuntimeError(f"{name}: {rep['urls_done']} records for {n} URLs: {rep}")
    if ok != n:
        raise RuntimeError(f"{name}: only {ok} of {n} URLs ok: {rep}")
    return {
        "wall_s": round(secs, 3),
        "urls_per_s": round(n / secs, 1),
        "inproc_urls_per_s": inproc,
        "peak_rss_mib": rss,
        "time_maxrss_mib": round(time_rss, 1),
        "cpu_s": round(cpu, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="crawler fetch vs a bare aiohttp loop")
    ap.add_argument("--n", type=int, default=20_000, help="distinct URLs per run")
    ap.add_argument("-c", type=int, default=100, help="concurrency of every client")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp", "embedded"])
    ap.add_argument("--server-workers", type=int, default=1)
    ap.add_argument(
        "--loops", nargs="+", default=["asyncio", "uvloop"], choices=["asyncio", "uvloop"]
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--other-python", metavar="PY", help="also time PY -P -m crawler (a tree)")
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    with local_server(args.server, args.server_workers) as (prefix, desc), \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        urls = Path(tmp) / "urls.txt"
        stats = Path(tmp) / "stats.json"
        write_urls(urls, prefix, args.n)
        todo = list(clients(urls, args.c, stats, args.loops, args.other_python).items())
        for r in range(args.rounds):
            shift = r % len(todo)
            for name, cmd in todo[shift:] + todo[:shift]:
                runs.setdefault(name, []).append(run_once(name, cmd, args.n, stats))
                if not args.json:
                    print(f"round {r + 1} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        rows[name] = {
            "urls_per_s": round(median([x["urls_per_s"] for x in rs]), 1),
            "inproc_urls_per_s": round(median([x["inproc_urls_per_s"] for x in rs]), 1),
            "peak_rss_mib": round(median([x["peak_rss_mib"] for x in rs]), 1),
            "cpu_us_per_url": round(median([x["cpu_s"] for x in rs]) / args.n * 1e6, 1),
            "runs": [round(x["urls_per_s"]) for x in rs],
        }
    for loop in args.loops:
        bare = f"bare aiohttp ({loop})"
        base = rows[bare]
        for name in (n for n in rows if f"({loop})" in n):
            row = rows[name]
            row["ratio"] = round(row["urls_per_s"] / base["urls_per_s"], 3)
            row["inproc_ratio"] = round(row["inproc_urls_per_s"] / base["inproc_urls_per_s"], 3)
            # Steadier on a noisy machine: each round's own ratio (same minute), and the
            # ratio of CPU time, which time stolen by neighbours does not inflate.
            pairs = list(zip(runs[name], runs[bare], strict=True))
            speed = [a["urls_per_s"] / b["urls_per_s"] for a, b in pairs]
            row["round_ratio"] = round(median(speed), 3)
            row["cpu_ratio"] = round(median([b["cpu_s"] / a["cpu_s"] for a, b in pairs]), 3)
        other = f"crawler fetch ({loop}) [other]"
        if other in runs:
            pairs = list(zip(runs[f"crawler fetch ({loop})"], runs[other], strict=True))
            rows[other]["vs_other"] = {
                "urls_per_s": [round(a["urls_per_s"] / b["urls_per_s"], 3) for a, b in pairs],
                "cpu_s": [round(a["cpu_s"] / b["cpu_s"], 3) for a, b in pairs],
            }
    report = {
        "machine": machine(), "server": desc, "n": args.n, "concurrency": args.c,
        "rounds": args.rounds, "clients": rows, "raw": runs,
    }  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / f"run_core-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report))
    if args.json:
        print(json.dumps(report))
        return
    print(f"server: {desc}; N={args.n}, c={args.c}; medians of {args.rounds} rounds")
    print(
        f"{'client':24} {'URLs/s':>8} {'ratio':>6} {'in-proc':>8} {'ratio':>6} {'rounds':>6}"
        f" {'CPU us':>7} {'ratio':>6} {'RSS MiB':>8}  runs (URLs/s, wall)"
    )
    for name, row in rows.items():
        print(
            f"{name:24} {row['urls_per_s']:8.0f} {row['ratio']:6.2f}"
            f" {row['inproc_urls_per_s']:8.0f} {row['inproc_ratio']:6.2f}"
            f" {row['round_ratio']:6.2f} {row['cpu_us_per_url']:7.1f} {row['cpu_ratio']:6.2f}"
            f" {row['peak_rss_mib']:8.1f}  {row['runs']}"
        )
    for name, row in rows.items():
        if "vs_other" in row:
            vs = row["vs_other"]
            print(
                f"this / other ({name}): URLs/s median {median(vs['urls_per_s']):.3f}"
                f" rounds {vs['urls_per_s']}; CPU s median {median(vs['cpu_s']):.3f}"
                f" rounds {vs['cpu_s']}"
            )
    print(
        "ratio: crawler / bare on the same loop (medians; 'rounds': median of each round's"
        " own ratio; CPU: user+sys per URL, ratio bare / crawler)"
    )


if __name__ == "__main__":
    run_main(main)
