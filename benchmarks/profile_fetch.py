"""Sample `crawler fetch` with py-spy and say where its time goes.

    pip install py-spy        # a dev tool: not a project dependency
    python benchmarks/profile_fetch.py --n 20000 -c 100 [--rate 500] [--native] [--no-uvloop]

Starts the local server (server.py), writes N distinct URLs and runs

    py-spy record --format raw --rate R [--native] -o benchmarks/out/profile-….txt --
        python -m crawler fetch URLS -c C --per-host C -o /dev/null -q --stats-json …

Then it reads the collapsed stacks (one ``frame;frame;… count`` a line; idle samples,
threads waiting in epoll, are not recorded) and prints: self time (the leaf frame of a
sample) grouped by package (crawler, aiohttp, yarl, asyncio, …) and by the deepest
crawler/ frame that led there, the top functions by self time overall and in crawler/,
and the top crawler/ functions by total time (on the stack). Without --native, time in C
(uvloop, orjson, the socket calls) is charged to the Python frame that called it.
The raw stacks stay in benchmarks/out/ (open them with speedscope or flamegraph.pl).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import local_server, run_main, stop_group, write_urls

OUT = Path(__file__).parent / "out"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def split_frame(frame: str) -> tuple[str, str]:
    """py-spy frame 'func (path/file.py:123)' -> ('func', 'path/file.py')."""
    m = FRAME.match(frame.strip())
    if not m:
        return frame.strip(), ""
    return m["func"], m["file"]


def package(file: str) -> str:
    """py-spy shortens paths to the package part: 'aiohttp/client.py' -> 'aiohttp',
    'dataclasses.py' -> 'dataclasses', '<frozen runpy>' stays as it is."""
    if not file:
        return "?"
    if file.startswith("<"):
        return "<frozen>" if file.startswith("<frozen") else file
    head = file.replace("\\", "/").split("/")[0]
    return head.removesuffix(".py")


def analyse(raw: Path, top: int) -> dict[str, object]:
    self_time: Counter[str] = Counter()
    total_crawler: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    via: Counter[str] = Counter()  # (deepest crawler/ frame, package of the leaf)
    in_loop = 0
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        samples += count
        frames = [split_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        func, file = frames[-1]
        self_time[f"{func} ({file})"] += count
        by_pkg[package(file)] += count
        if any(f == "Runner.run" and package(p) == "asyncio" for f, p in frames):
            in_loop += count
        owner = next(
            (f"{f} ({p})" for f, p in reversed(frames) if package(p) == "crawler"), "(none)"
        )
        via[f"{owner} -> {package(file)}"] += count
        seen = set()
        for func, file in frames:
            key = f"{func} ({file})"
            if package(file) == "crawler" and key not in seen:
                seen.add(key)
                total_crawler[key] += count

    def pct(counter: Counter[str], keep: int, only_crawler: bool = False) -> list[list[object]]:
        items = [
            (k, v) for k, v in counter.most_common()
            if not only_crawler or package(k.rsplit("(", 1)[-1].rstrip(")")) == "crawler"
        ][:keep]  # fmt: skip
        return [[k, v, round(100 * v / max(samples, 1), 1)] for k, v in items]

    return {
        "samples": samples,
        "in_event_loop_pct": round(100 * in_loop / max(samples, 1), 1),
        "self_top": pct(self_time, top),
        "self_top_crawler": pct(self_time, top, only_crawler=True),
        "total_top_crawler": pct(total_crawler, top),
        "self_by_package": pct(by_pkg, 30),
        "self_by_crawler_caller": pct(via, top),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="py-spy profile of crawler fetch")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames too, ~100x slower"
    )
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp"])
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--analyse", type=Path, help="only analyse an existing raw file")
    args = ap.parse_args()
    if args.analyse:
        report = analyse(args.analyse, args.top)
        print_report(report)
        return
    pyspy = shutil.which("py-spy")
    if not pyspy:
        sys.exit("py-spy is not installed: pip install py-spy")
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = OUT / f"profile-{stamp}.txt"
    with local_server(args.server) as (prefix, desc), tempfile.TemporaryDirectory() as tmp:
        urls = Path(tmp) / "urls.txt"
        stats = Path(tmp) / "stats.json"
        write_urls(urls, prefix, args.n)
        cmd = [
            pyspy, "record", "--format", "raw", "--rate", str(args.rate), "-o", str(raw),
            *(["--native"] if args.native else []), "--",
            sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(args.c),
            "--per-host", str(args.c), "-o", "/dev/null", "-q", "--stats-json", str(stats),
            *(["--no-uvloop"] if args.no_uvloop else []),
        ]  # fmt: skip
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            _, err = proc.communicate()
        except BaseException:
            stop_group(proc)  # py-spy and the crawler it runs
            raise
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not raw.exists():
            sys.exit(f"py-spy failed ({proc.returncode}): {err[-1000:]}")
        run = json.loads(stats.read_text())
    report = analyse(raw, args.top)
    report |= {
        "server": desc, "n": args.n, "c": args.c, "rate": args.rate, "native": args.native,
        "loop": "asyncio" if args.no_uvloop else "uvloop", "wall_s": round(wall, 2),
        "crawler_urls_per_s": run["urls_per_s"], "ok": run["ok"], "raw": str(raw),
        "command": " ".join(cmd),
    }  # fmt: skip
    (OUT / f"profile-{stamp}.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(report: dict[str, object]) -> None:
    for key in ("command", "server", "loop", "wall_s", "crawler_urls_per_s", "ok", "raw"):
        if key in report:
            print(f"{key}: {report[key]}")
    print(f"samples (non-idle): {report['samples']}")
    print(f"inside the event loop (asyncio Runner.run): {report['in_event_loop_pct']}%")
    titles = {
        "self_by_package": "self time by package",
        "self_by_crawler_caller": "self time by (deepest crawler/ frame -> leaf package)",
        "self_top": "top functions by self time",
        "self_top_crawler": "crawler/ functions by self time",
        "total_top_crawler": "crawler/ functions by total time (on the stack)",
    }
    for key, title in titles.items():
        print(f"\n{title}:")
        for name, count, share in report[key]:  # type: ignore[attr-defined]
            print(f"  {share:5.1f}%  {count:6}  {name}")


if __name__ == "__main__":
    run_main(main)
