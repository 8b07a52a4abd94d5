"""What issue 15's options cost in URLs/s and CPU per URL, against a plain fetch in the same rounds.

    python benchmarks/options_cost.py --n 20000 -c 100 --rounds 5 [--server auto|nginx|aiohttp]

One server (server.py: nginx when installed) and one local HTTP proxy (``pproxy -l
http://127.0.0.1:PORT`` from this venv, on asyncio's loop; stopped at the end) are started
once. Each round runs every client once, as a fresh process, in an order rotated per round:

    plain:            python -m crawler fetch URLS -c C --per-host C -o /dev/null -q
                      --stats-json TMP
    include-headers:  the same with --include-headers
    include-body:     the same with --include-body
    proxy:            the same with --proxy http://127.0.0.1:PORT (every request through pproxy)
    json-lines:       the same on LINES, where line i is {"url": PREFIX/page/i, "meta": i}

"URLs/s" is N over the client's wall time (start-up included); "CPU" the client's own user +
system seconds (start-up included), which time lost to neighbours does not inflate; "proxy
CPU" the pproxy process's user + system seconds during that run (from /proc), reported apart:
it runs on the same cores. Each round's ratio to the plain run of the same round is taken,
and the table gives their medians. Every run must end with N ok records, or the script stops.
Raw runs are saved as JSON under benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import local_server, machine, median, run_main, stop_group, timed_cpu, write_urls
from server import free_port

HERE = Path(__file__).parent
OUT = HERE / "out"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system seconds of a running process (its own threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# pproxy's main() installs uvloop if it can, then calls asyncio.get_event_loop(), which
# uvloop refuses outside a running loop: run it on asyncio's own loop (as the tests do).
PPROXY = (
    "import sys; sys.modules['uvloop'] = None; "
    "sys.argv = ['pproxy', '-l', sys.argv[1]]; "
    "from pproxy.server import main; main()"
)


def start_proxy(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PPROXY, f"http://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # a pipe nobody reads could fill and stall the proxy
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pproxy exited ({proc.returncode}) before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    stop_group(proc)
    raise RuntimeError("pproxy did not listen within 30 s")


def clients(urls: Path, lines: Path, c: int, stats: Path, port: int) -> dict[str, list[str]]:
    def fetch(src: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "crawler", "fetch", str(src), "-c", str(c),
            "--per-host", str(c), "-o", "/dev/null", "-q", "--stats-json", str(stats), *extra,
        ]  # fmt: skip

    return {
        "plain": fetch(urls),
        "include-headers": fetch(urls, "--include-headers"),
        "include-body": fetch(urls, "--include-body"),
        "proxy": fetch(urls, "--proxy", f"http://127.0.0.1:{port}"),
        "json-lines": fetch(lines),
    }


def run_once(name: str, cmd: list[str], n: int, stats: Path, proxy_pid: int) -> dict[str, float]:
    stats.unlink(missing_ok=True)
    proxy_before = proc_cpu(proxy_pid)
    secs, _rss, _stdout, cpu = timed_cpu(cmd)
    proxy_cpu = proc_cpu(proxy_pid) - proxy_before
    rep = json.loads(stats.read_text())
    if rep["urls_done"] != n or rep["ok"] != n:
        raise RuntimeError(f"{name}: {rep['ok']} ok of {rep['urls_done']} records, {n} URLs")
    return {
        "wall_s": round(secs, 3),
        "urls_per_s": round(n / secs, 1),
        "inproc_urls_per_s": rep["urls_per_s"],
        "peak_rss_mib": rep["peak_rss_mib"],
        "cpu_s": round(cpu, 3),
        "proxy_cpu_s": round(proxy_cpu, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="distinct URLs per run")
    ap.add_argument("-c", type=int, default=100, help="concurrency (and --per-host)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp", "embedded"])
    ap.add_argument("--proxy-port", type=int, default=0, help="default: a free port")
    args = ap.parse_args()
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        os.environ.pop(var, None)
        os.environ.pop(var.upper(), None)
    runs: dict[str, list[dict[str, float]]] = {}
    args.proxy_port = args.proxy_port or free_port()
    proxy = start_proxy(args.proxy_port)
    try:
        with local_server(args.server) as (prefix, desc), tempfile.TemporaryDirectory() as tmp:
            urls, lines = Path(tmp) / "urls.txt", Path(tmp) / "lines.jsonl"
            stats = Path(tmp) / "stats.json"
            write_urls(urls, prefix, args.n)
            with lines.open("w") as f:
                f.writelines(
                    json.dumps({"url": f"{prefix}/page/{i}", "meta": i}) + "\n"
                    for i in range(args.n)
                )
            todo = list(clients(urls, lines, args.c, stats, args.proxy_port).items())
            for r in range(args.rounds):
                shift = r % len(todo)
                for name, cmd in todo[shift:] + todo[:shift]:
                    run = run_once(name, cmd, args.n, stats, proxy.pid)
                    runs.setdefault(name, []).append(run)
                    print(f"round {r + 1} {name}: {run}", file=sys.stderr, flush=True)
    finally:
        stop_group(proxy)
    rows: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        pairs = list(zip(rs, runs["plain"], strict=True))
        rows[name] = {
            "urls_per_s": round(median([x["urls_per_s"] for x in rs]), 1),
            "inproc_urls_per_s": round(median([x["inproc_urls_per_s"] for x in rs]), 1),
            "cpu_us_per_url": round(median([x["cpu_s"] for x in rs]) / args.n * 1e6, 1),
            "proxy_cpu_us_per_url": round(median([x["proxy_cpu_s"] for x in rs]) / args.n * 1e6, 1),
            "round_ratios": [round(a["urls_per_s"] / b["urls_per_s"], 3) for a, b in pairs],
            "cpu_ratios": [round(a["cpu_s"] / b["cpu_s"], 3) for a, b in pairs],
        }
        rows[name]["round_ratio"] = round(median(rows[name]["round_ratios"]), 3)
        rows[name]["cpu_ratio"] = round(median(rows[name]["cpu_ratios"]), 3)
    report = {
        "machine": machine(), "server": desc, "n": args.n, "concurrency": args.c,
        "rounds": args.rounds, "clients": rows, "raw": runs,
    }  # fmt: skip
    OUT.mkdir(exist_ok=True)
    (OUT / f"options_cost-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report))
    print(f"server: {desc}; N={args.n}, c={args.c}; medians of {args.rounds} rounds")
    print(
        f"{'client':16} {'URLs/s':>7} {'in-proc':>7} {'vs plain':>8} {'CPU us':>7}"
        f" {'vs plain':>8} {'proxy us':>8}  per-round URLs/s ratios | CPU ratios"
    )
    for name, row in rows.items():
        print(
            f"{name:16} {row['urls_per_s']:7.0f} {row['inproc_urls_per_s']:7.0f}"
            f" {row['round_ratio']:8.3f} {row['cpu_us_per_url']:7.1f} {row['cpu_ratio']:8.3f}"
            f" {row['proxy_cpu_us_per_url']:8.1f}  {row['round_ratios']} | {row['cpu_ratios']}"
        )
    print(
        "vs plain: median of each round's ratio to the plain run of the same round (URLs/s:"
        " option/plain; CPU: option/plain, crawler's own); proxy us: pproxy's CPU per URL"
    )


if __name__ == "__main__":
    run_main(main)
