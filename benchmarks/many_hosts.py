"""1,000,000 URLs over 10,000 host names, all resolved to one local server: memory must
stay flat because per-host state (limits, pacer, breaker) is dropped when a host is idle.

    python benchmarks/many_hosts.py --urls 1000000 --hosts 10000 -c 200

Host names h0.test … h9999.test are mapped to 127.0.0.1 with `--resolve '*:127.0.0.1'`,
so nothing leaves the machine. URLs are interleaved across hosts (host = i % hosts). RSS
is sampled from /proc every second; the report gives the peak and the RSS at 25/50/75/100%
of the run, which is what "flat" means here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import local_server, run_main


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("-c", type=int, default=200)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp", "embedded"])
    args = ap.parse_args()
    with local_server(args.server) as (prefix, desc), tempfile.TemporaryDirectory() as tmp:
        port = prefix.rsplit(":", 1)[1]
        urls = Path(tmp) / "urls.txt"
        with urls.open("w") as f:
            f.writelines(f"http://h{i % args.hosts}.test:{port}/p/{i}\n" for i in range(args.urls))
        stats = Path(tmp) / "stats.json"
        cmd = [
            sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(args.c),
            "--per-host", "4", "--resolve", "*:127.0.0.1", "-o", "/dev/null", "-q",
            "--stats-json", str(stats),
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(cmd)
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            samples.append((time.monotonic() - started, rss_mib(proc.pid)))
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        result = json.loads(stats.read_text())
    marks = {}
    for frac in (0.25, 0.5, 0.75, 1.0):
        t = elapsed * frac
        marks[f"{int(frac * 100)}%"] = round(min(samples, key=lambda s: abs(s[0] - t))[1], 1)
    report = {
        "server": desc,
        "urls": args.urls,
        "hosts": args.hosts,
        "concurrency": args.c,
        "seconds": round(elapsed, 1),
        "urls_per_s": round(args.urls / elapsed),
        "ok": result["ok"],
        "errors": result["by_error"],
        "peak_rss_mib": result["peak_rss_mib"],
        "rss_mib_over_time": marks,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_main(main)
