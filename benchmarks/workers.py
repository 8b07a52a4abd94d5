"""--workers: URLs/s and CPU per URL of 1 and N worker processes, interleaved rounds.

    python benchmarks/workers.py --n 40000 -c 200 --hosts 8 --rounds 5 [--workers 2]

One nginx (server.py) answers on 127.0.0.1 .. 127.0.0.{hosts} (a host belongs to one
worker, so the list needs several hosts to be shared out); the URLs go round the hosts.
Each round runs, as fresh processes, in an order rotated from round to round:

    crawler fetch URLS -c C --per-host C -o /dev/null -q --stats-json T   (--workers 1)
    the same with --workers N
    two crawler fetch processes at once, each on half the hosts (split by hand:
        what the machine allows two processes, the issue's 1.53x)

"URLs/s" is N over the wall time of the whole command (start-up included); "CPU" the
user + system seconds of the whole process tree per URL. Each round's ratio to
--workers 1 of the same round is given, and the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import _children_cpu, local_server, machine, median, run_main

HERE = Path(__file__).parent
OUT = HERE / "out"


def fetch(urls: Path, c: int, workers: int, stats: Path) -> list[str]:
    return [
        sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(c),
        "--per-host", str(c), "-o", "/dev/null", "-q", "--stats-json", str(stats),
        "--workers", str(workers),
    ]  # fmt: skip


def run(cmds: list[list[str]], n: int) -> dict[str, float]:
    """Run ``cmds`` at once; URLs/s over the wall time and CPU µs per URL of them all."""
    cpu = _children_cpu()
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for cmd in cmds]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"a client failed: {codes}")
    return {"urls_per_s": n / wall, "cpu_us": (_children_cpu() - cpu) / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("-c", type=int, default=200)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--server-workers", type=int, default=1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="crawler-workers-"))
    with local_server("nginx", args.server_workers, hosts=args.hosts) as (prefix, desc):
        port = prefix.rsplit(":", 1)[1]
        urls = [f"http://127.0.0.{1 + i % args.hosts}:{port}/page/{i}" for i in range(args.n)]
        every = tmp / "urls.txt"
        every.write_text("\n".join(urls) + "\n")
        halves = [tmp / "a.txt", tmp / "b.txt"]
        for k, half in enumerate(halves):  # by host: even hosts, odd hosts
            half.write_text("\n".join(u for i, u in enumerate(urls) if i % 2 == k) + "\n")
        stats = tmp / "stats.json"
        clients: dict[str, list[list[str]]] = {
            "--workers 1": [fetch(every, args.c, 1, stats)],
            f"--workers {args.workers}": [fetch(every, args.c, args.workers, stats)],
            "2 processes, hosts split by hand": [
                fetch(halves[0], args.c // 2, 1, tmp / "s0.json"),
                fetch(halves[1], args.c // 2, 1, tmp / "s1.json"),
            ],
        }
        names = list(clients)
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            got = {name: run(clients[name], args.n) for name in order}
            rounds.append(got)
            base = got["--workers 1"]["urls_per_s"]
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{name}: {v['urls_per_s']:,.0f}/s ({v['urls_per_s'] / base:.2f}x, "
                    f"{v['cpu_us']:.0f} µs CPU)"
                    for name, v in got.items()
                ),
                flush=True,
            )
    print(f"\nserver: {desc}; {args.n} URLs over {args.hosts} hosts, -c {args.c}")
    print(f"{'client':36} {'URLs/s':>9} {'ratio':>6} {'CPU µs/URL':>11} {'CPU ratio':>9}")
    table: dict[str, Any] = {}
    for name in names:
        ups = median([rd[name]["urls_per_s"] for rd in rounds])
        ratio = median([rd[name]["urls_per_s"] / rd["--workers 1"]["urls_per_s"] for rd in rounds])
        cpu = median([rd[name]["cpu_us"] for rd in rounds])
        cpu_ratio = median([rd[name]["cpu_us"] / rd["--workers 1"]["cpu_us"] for rd in rounds])
        table[name] = {"urls_per_s": ups, "ratio": ratio, "cpu_us": cpu, "cpu_ratio": cpu_ratio}
        print(f"{name:36} {ups:9,.0f} {ratio:6.2f} {cpu:11.1f} {cpu_ratio:9.2f}")
    OUT.mkdir(exist_ok=True)
    (OUT / "workers.json").write_text(
        json.dumps({"machine": machine(), "args": vars(args), "rounds": rounds, "table": table})
    )


if __name__ == "__main__":
    run_main(main)
