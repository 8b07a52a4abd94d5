"""Start-up cost of whole commands, in interleaved rounds (issue 16).

Each round runs every command once, in turn, so load drifting on a shared machine moves
all of them alike; per command: median CPU (user+sys of the child, from ``wait4``), median
and min wall. Output is discarded, as hyperfine's ``-N`` does.

    python benchmarks/startup.py -r 25 "crawler fetch URL -o /dev/null" \\
        "env PYTHONPATH=/tmp/before crawler fetch URL -o /dev/null"

Wall times on a shared machine move 10-20% from one minute to the next; ``--instructions``
also runs each command once under valgrind's cachegrind and gives the instructions it
executed (user space), a figure load cannot move (see instructions_per_url.py).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import time

from instructions_per_url import instructions


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)}: exit {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="+", help="command lines (shell words)")
    parser.add_argument("-r", "--rounds", type=int, default=25)
    parser.add_argument("-w", "--warmup", type=int, default=2)
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args()
    argvs = [shlex.split(c) for c in args.commands]
    for _ in range(args.warmup):
        for argv in argvs:
            run_once(argv)
    walls: list[list[float]] = [[] for _ in argvs]
    cpus: list[list[float]] = [[] for _ in argvs]
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for i, argv in enumerate(argvs):
            wall, cpu = run_once(argv)
            walls[i].append(wall)
            cpus[i].append(cpu)
    load_after = os.getloadavg()[0]
    print(f"{args.rounds} rounds; load average {load_before:.1f} -> {load_after:.1f}")
    counts = [f"{instructions(argv) / 1e6:,.0f}M" for argv in argvs] if args.instructions else []
    extra = " instructions |" if counts else ""
    print(f"| command | median CPU (ms) | median wall (ms) | min wall (ms) |{extra}")
    print("|---|---|---|---|" + ("---|" if counts else ""))
    for i, (command, wall_s, cpu_s) in enumerate(zip(args.commands, walls, cpus, strict=True)):
        cpu, wall, low = statistics.median(cpu_s), statistics.median(wall_s), min(wall_s)
        row = f"| `{command}` | {cpu * 1e3:.0f} | {wall * 1e3:.0f} | {low * 1e3:.0f} |"
        print(row + (f" {counts[i]} |" if counts else ""))


if __name__ == "__main__":
    main()
