"""The coordinator of --workers alone: how many URLs/s it can route, claim and write
when its workers answer at once (benchmarks/stub_worker.py stands in for them).

    python benchmarks/coordinator.py --n 1000000 --hosts 1000 --workers 2 --rounds 3

The coordinator runs in this process (crawler.coordinator.Coordinator, as
`crawler fetch --workers N -o /dev/null` builds it, in-memory dedup) on uvloop; its
input is N distinct URLs over --hosts host names. Reported: wall URLs/s, and the
coordinator's own CPU seconds per URL (this process's user + system time), whose inverse
is the rate one core of coordinator sustains: the stubs' CPU is theirs, not its, and
on a 2-core machine they compete with it for the cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from common import median, run_main

HERE = Path(__file__).parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def once(urls: Path, n: int, workers: int) -> tuple[float, float]:
    from crawler.config import SinkConfig
    from crawler.coordinator import Coordinator
    from crawler.inputs import LineSource
    from crawler.options import run_config
    from crawler.stores import memory

    class Stubbed(Coordinator):
        worker_command = (sys.executable, str(HERE / "stub_worker.py"))

    config = run_config({"workers": workers}, crawl=False, sink=SinkConfig(output="/dev/null"))
    coordinator = Stubbed(config, LineSource(str(urls)), memory(), handle_signals=False)
    cpu, started = _cpu(), time.perf_counter()
    result = await coordinator.run()
    wall, used = time.perf_counter() - started, _cpu() - cpu
    if result.snapshot.urls_done != n:
        raise RuntimeError(f"{result.snapshot.urls_done} records for {n} URLs")
    return n / wall, used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import uvloop

    urls = Path(tempfile.mkdtemp(prefix="crawler-coord-")) / "urls.txt"
    with urls.open("w") as f:
        f.writelines(f"http://h{i % args.hosts}.example/page/{i}\n" for i in range(args.n))
    rates, cpus = [], []
    for r in range(args.rounds):
        rate, cpu = uvloop.run(once(urls, args.n, args.workers))
        rates.append(rate)
        cpus.append(cpu)
        print(f"round {r + 1}: {rate:,.0f} URLs/s wall, {cpu * 1e6:.2f} µs CPU/URL "
              f"(one core: {1 / cpu:,.0f} URLs/s)", flush=True)  # fmt: skip
    cpu = median(cpus)
    print(
        f"\n{args.n:,} URLs, {args.hosts} hosts, {args.workers} stub workers: median "
        f"{median(rates):,.0f} URLs/s wall; coordinator CPU {cpu * 1e6:.2f} µs/URL = "
        f"{1 / cpu:,.0f} URLs/s per core"
    )


if __name__ == "__main__":
    run_main(main)
