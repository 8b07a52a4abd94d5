"""CPU instructions per URL, crawler against the bare aiohttp loop: a figure noise can't move.

    python benchmarks/instructions_per_url.py [--n1 2000 --n2 6000] [-c 100] [--repeat 1]
        [--server auto|nginx|aiohttp] [--loop uvloop|asyncio] [--gzip] [--body-bytes 512]

Timed runs on a shared 2-core machine move 10-20% from one minute to the next, more than
the changes they are meant to judge. Instructions executed do not depend on how busy the
machine is. This runs the very clients of run_core.py (same commands, same local server)
under valgrind's cachegrind, which counts every instruction the process executes (user
space: the kernel's share of a request is the same for both clients). Each client runs at
N1 and N2 URLs; (I(N2) - I(N1)) / (N2 - N1) leaves out start-up and shutdown and is the
cost of one more URL. Valgrind slows a client ~50x, so the client is always the busy side
and the server always has its answer ready: the regime of a benchmark run.

    bare aiohttp:  python benchmarks/bare_aiohttp.py URLS -c C [--uvloop]
    crawler fetch: python -m crawler fetch URLS -c C --per-host C -o /dev/null -q
                   --stats-json TMP [--no-uvloop]

The ratio bare / crawler estimates crawler's URLs/s relative to the bare loop when the
client's CPU is the bottleneck. Needs valgrind (Debian: apt-get install valgrind).

``--gzip`` (nginx only) asks for URLs under /gzip/, which nginx answers gzip-encoded
(level 1, chunked): the cost of a compressed response, decoding included.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine, write_urls
from run_core import clients
from server import BODY_BYTES, running


def instructions(cmd: list[str]) -> int:
    """Instructions the command executed (valgrind --tool=cachegrind, no cache model)."""
    full = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no",
        "--cachegrind-out-file=/dev/null", *cmd,
    ]  # fmt: skip
    done = subprocess.run(full, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{cmd[1:4]} failed under valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=6000)
    ap.add_argument("-c", type=int, default=100, help="concurrency of both clients")
    ap.add_argument("--repeat", type=int, default=1, help="runs per client and N (median)")
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp"])
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--gzip", action="store_true", help="gzip-encoded responses (nginx)")
    ap.add_argument("--body-bytes", type=int, default=BODY_BYTES, help="decoded body size")
    args = ap.parse_args()
    if args.gzip and args.server == "aiohttp":
        sys.exit("--gzip needs nginx (--server auto or nginx)")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (Debian: apt-get install valgrind)")
    if args.n2 <= args.n1:
        sys.exit("--n2 must be larger than --n1")
    per_url: dict[str, float] = {}
    served = running(args.server, body_bytes=args.body_bytes)
    with served as (prefix, server), tempfile.TemporaryDirectory() as tmp:
        route = "gzip" if args.gzip else "page"
        print(f"server: {server}, /{route}/, {args.body_bytes} B; {machine()}", flush=True)
        files = {n: Path(tmp) / f"urls-{n}.txt" for n in (args.n1, args.n2)}
        for n, path in files.items():
            write_urls(path, prefix, n, route)
        stats = Path(tmp) / "stats.json"  # run_core's commands write one; unread here
        commands = {n: clients(path, args.c, stats, [args.loop]) for n, path in files.items()}
        for name in commands[args.n1]:
            runs = {
                n: [instructions(cmds[name]) for _ in range(args.repeat)]
                for n, cmds in commands.items()
            }
            counts = {n: statistics.median(found) for n, found in runs.items()}
            per_url[name] = (counts[args.n2] - counts[args.n1]) / (args.n2 - args.n1)
            # The whole counts too: an outlier (work that scales with wall time, such as
            # once-a-second timers, on a badly overloaded machine) shows in them.
            whole = "; ".join(
                f"N={n}: " + ", ".join(f"{c:,}" for c in found) for n, found in runs.items()
            )
            print(f"{name:>24}: {per_url[name]:10,.0f} instructions per URL ({whole})", flush=True)
    bare, crawler = per_url.values()
    print(f"bare / crawler = {bare / crawler:.3f}  (crawler's expected speed relative to bare)")


if __name__ == "__main__":
    main()
