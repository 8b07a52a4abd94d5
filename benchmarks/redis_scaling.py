"""Issue 17's scaling figure: 1, 2 and 4 `crawler worker`s on one Redis job, and the local mode.

    python benchmarks/redis_scaling.py [--n 4000] [-c 20] [--hosts 256] [--rounds 3]

Starts its own redis-server (free port, temp dir, no persistence) and `crawler serve
--latency-ms 100 --latency-dist fixed` on --hosts loopback addresses from 127.0.0.1 (a
host's shard is a hash of its name and port and each worker holds an equal share of the
256 shards, so few hosts share out unevenly: the "spread bound" column says what the
spread allows). The URLs go
round the hosts. Each round runs, in an order rotated from round to round:

    local:  crawler fetch URLS -c C --per-host P -o /dev/null -q        (timed as a whole)
    W = 1, 2, 4:
        make the job J (as `crawler enqueue -c C --per-host P` does, with no URL)
        W x crawler worker --redis R --job J -c C --wait                (started first)
        wait until `crawler status --json` shows W live workers holding all 256 shards,
        each its equal share
        crawler enqueue --redis R --job J URLS      <- clock 1 starts (its launch)
        the job's enqueued counter > 0               <- clock 2 starts (first URL in)
        the job's done counter = N                   <- both stop
        SIGTERM the workers; `crawler collect` must give N records, each URL once

Two clocks, both printed (``ratio`` and ``job ratio``): the first includes `crawler
enqueue`'s Python start-up (~0.5 s before its first batch lands); the second is the job's
own window. The counters (the job's ``n`` hash) are polled every POLL s (10 ms). The local
mode has one clock, its whole process (start-up included). From the job's out stream
(entry ids: commit times) and each record's fetched_at - elapsed_ms (its request's
start), the script also says where the window went: the first request after the first
URL landed, the busiest worker's span, slot use and request time, the commit lag, and
the last record -> done = N.

A worker's CPU is read from /proc over the timed window (so start-up and idle waiting are
left out); the local mode's CPU is its whole process (start-up included, ~0.3 s). Redis's
CPU is the server's used_cpu_user + used_cpu_sys delta over the timed window. The whole run
is bounded by --deadline seconds: past it the script stops what it started and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import machine, median, run_main, stop_group, timed_cpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crawler.redisjob import assign, shard_of

HERE = Path(__file__).parent
OUT = HERE / "out"
CRAWLER = [sys.executable, "-m", "crawler"]
SHARDS = 256
TICK = os.sysconf("SC_CLK_TCK")
POLL = 0.01  # seconds between looks at the job's counters
# Per round, W workers: where the time went (see Bench.timeline).
TIMELINE = (
    "ready_s",
    "first_s",
    "enqueue_s",
    "first_req_s",
    "busiest_span_s",
    "busiest_use",
    "busiest_req_ms",
    "busiest_p90_ms",
    "busiest_end_s",
    "last_rec_s",
    "commit_lag_s",
    "last_commit_s",
    "done_seen_s",
)


class DeadlineError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not start")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, redis_url: str, port: int) -> None:
        import redis

        self.args = args
        self.tmp = tmp
        self.url = redis_url
        self.r = redis.Redis.from_url(redis_url)
        self.hosts = [host_name(i) for i in range(args.hosts)]
        self.urls = [f"http://{self.hosts[i % args.hosts]}:{port}/page/{i}" for i in range(args.n)]
        self.file = tmp / "urls.txt"
        self.file.write_text("\n".join(self.urls) + "\n")
        self.end = time.monotonic() + args.deadline
        self.jobs = 0
        self.port = port

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlineError
        return left

    def opts(self) -> list[str]:
        return ["-c", str(self.args.c), "--per-host", str(self.args.per_host)]

    def local(self) -> dict[str, float]:
        self.left()
        cmd = [*CRAWLER, "fetch", str(self.file), *self.opts(), "-o", "/dev/null", "-q"]
        wall, _, _, cpu = timed_cpu(cmd)
        return {"wall": wall, "urls_per_s": self.args.n / wall, "cpu_us": cpu / self.args.n * 1e6}

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [*CRAWLER, *args],
            stdin=subprocess.DEVNULL,  # an empty stdin pipe hangs enqueue: see RESULTS.md
            capture_output=True,
            text=True,
            timeout=min(120, self.left()),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[:1]} exited {done.returncode}: {done.stderr[-400:]}")
        return done.stdout

    def status(self, job: str) -> dict[str, Any]:
        out = self.cli("status", "--redis", self.url, "--job", job, "--json")
        got: dict[str, Any] = json.loads(out)
        return got

    def distributed(self, w: int) -> dict[str, float]:
        n = self.args.n
        self.jobs += 1
        job = f"scale{self.jobs}"
        red = ["--redis", self.url, "--job", job]
        self.create(job)
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-X",
                    "faulthandler",
                    "-m",
                    "crawler",
                    "worker",
                    *red,
                    "-c",
                    str(self.args.c),
                    "--wait",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for _ in range(w)
        ]
        try:
            ready_started = time.monotonic()
            while True:
                st = self.status(job)
                live = [x for x in st["workers"] if x["live"]]
                held = [s for x in live for s in x["shards"]]
                share = -(-SHARDS // w)  # each its share: none holds more (redisjob.assign)
                even = all(len(x["shards"]) <= share for x in live)
                if len(live) == w and even and len(set(held)) == len(held) == SHARDS:
                    break
                if any(p.poll() is not None for p in workers):
                    raise RuntimeError("a worker exited early")
                self.left()
                time.sleep(0.2)
            ready = time.monotonic() - ready_started
            spread = self.spread(live)
            redis_cpu = self.redis_cpu()
            cpu = [cpu_of(p.pid) for p in workers]
            clocks = self.feed(job, red)
            cpu = [cpu_of(p.pid) - c for p, c in zip(workers, cpu, strict=True)]
            redis_cpu = self.redis_cpu() - redis_cpu
        finally:
            for p in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            stuck = []
            for p in workers:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    stuck.append(p)
                    os.kill(p.pid, signal.SIGABRT)  # faulthandler: its stacks on stderr
                    stop_group(p, 2)  # type: ignore[arg-type]
            for p in workers:
                err = p.stderr.read().decode() if p.stderr else ""
                if p in stuck or p.returncode not in (0, 130):
                    print(f"worker {p.pid} exited {p.returncode}:\n{err[-4000:]}", file=sys.stderr)
        codes = [p.returncode for p in workers]
        if stuck or any(c not in (0, 130) for c in codes):
            raise RuntimeError(f"worker exit codes {codes}")
        where = self.timeline(job, live, clocks)  # before collect takes the records
        out = self.tmp / f"{job}.jsonl"
        self.cli("collect", *red, "-o", str(out))
        counted = Counter(json.loads(line)["url"] for line in out.read_text().splitlines())
        if set(counted) != set(self.urls) or max(counted.values()) != 1:
            raise RuntimeError(
                f"collect: {len(counted)} URLs, most common {counted.most_common(2)}"
            )
        self.r.flushall()
        wall, job_wall = clocks["wall"], clocks["job_wall"]
        return {
            "wall": wall,
            "urls_per_s": n / wall,
            "job_wall": job_wall,
            "job_urls_per_s": n / job_wall,
            "first_s": clocks["first"],
            "enqueue_s": clocks["enqueued"],
            "ready_s": ready,
            **where,
            "cpu_us": sum(cpu) / n * 1e6,
            "redis_cpu_us": redis_cpu / n * 1e6,
            "spread": spread,
        }

    def feed(self, job: str, red: list[str]) -> dict[str, float]:
        """Run `crawler enqueue URLS` and time the job two ways: from the command's launch
        (``wall``) and from the first URL in the job (``job_wall``), both until the done
        counter is N; the counters are polled every POLL s. Times on the wall clock
        (``*_at``, time.time(): records and stream ids use it too) for the timeline."""
        n, key = self.args.n, f"crawler:{{{job}}}:n"
        enq = subprocess.Popen(
            [*CRAWLER, "enqueue", *red, str(self.file)],
            stdin=subprocess.DEVNULL,  # an empty stdin pipe hangs enqueue: see RESULTS.md
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        started, started_at = time.perf_counter(), time.time()
        first = first_at = fed = None
        try:
            while True:
                enqueued, done = (int(x or 0) for x in self.r.hmget(key, ["enqueued", "done"]))
                now = time.perf_counter()
                if first is None and enqueued:
                    first, first_at = now, time.time()
                if fed is None and enq.poll() is not None:
                    fed = now
                if done >= n:
                    break
                self.left()
                time.sleep(POLL)
            end_at = time.time()
            enq.wait(timeout=min(30, self.left()))
            fed = now if fed is None else fed
        finally:
            if enq.returncode is None:
                stop_group(enq, 2)  # type: ignore[arg-type]
        err = enq.stderr.read().decode() if enq.stderr else ""
        if enq.returncode != 0:
            raise RuntimeError(f"enqueue exited {enq.returncode}: {err[-400:]}")
        assert first is not None and first_at is not None  # done >= n > 0
        return {
            "wall": now - started,
            "job_wall": now - first,
            "first": first - started,  # launch -> the first URL in the job
            "enqueued": fed - started,  # launch -> enqueue exited
            "started_at": started_at,
            "first_at": first_at,
            "end_at": end_at,
        }

    def timeline(
        self, job: str, live: list[dict[str, Any]], clocks: dict[str, float]
    ) -> dict[str, float]:
        """Where the job window goes, from the records in the job's out stream (its entry
        ids: Redis's commit times, ms) and each record's fetched_at - elapsed_ms (the
        request's start): the first request after the first URL landed; per worker (the
        owner of the record's shard) its first start, its last record and its slots' use
        (request seconds over its span x -c); the last record -> the done counter at N."""
        from datetime import datetime

        owner = {s: x["id"] for x in live for s in x["shards"]}
        spans: dict[str, list[float]] = {}
        lags: list[float] = []
        took: dict[str, list[float]] = {}  # per worker: each request's time
        last_commit = 0.0
        for eid, fields in self.r.xrange(f"crawler:{{{job}}}:out"):  # type: ignore[union-attr]
            rec = json.loads(fields[b"r"])
            end = datetime.fromisoformat(rec["fetched_at"].replace("Z", "+00:00")).timestamp()
            begin = end - rec["elapsed_ms"] / 1000
            committed = int(eid.split(b"-")[0]) / 1000
            lags.append(committed - end)
            last_commit = max(last_commit, committed)
            host = rec["url"].split("/")[2]
            w = owner[shard_of(host, SHARDS)]
            span = spans.setdefault(w, [begin, end, 0.0, 0.0])
            span[0], span[1] = min(span[0], begin), max(span[1], end)
            span[2] += end - begin
            span[3] += 1
            took.setdefault(w, []).append(end - begin)
        most = max(spans, key=lambda w: spans[w][3])
        busiest = spans[most]
        times = sorted(took[most])
        first_req = min(v[0] for v in spans.values())
        last_rec = max(v[1] for v in spans.values())
        return {
            "first_req_s": first_req - clocks["first_at"],
            "busiest_span_s": busiest[1] - busiest[0],
            "busiest_use": busiest[2] / ((busiest[1] - busiest[0]) * self.args.c),
            "busiest_req_ms": busiest[2] / busiest[3] * 1000,
            "busiest_p90_ms": times[int(0.9 * (len(times) - 1))] * 1000,
            "busiest_end_s": busiest[1] - clocks["first_at"],
            "last_rec_s": last_rec - clocks["first_at"],
            "commit_lag_s": median(lags),
            "last_commit_s": last_commit - last_rec,
            "done_seen_s": clocks["end_at"] - last_rec,
        }

    def create(self, job: str) -> None:
        """Make the job with no URL, as `crawler enqueue -c C --per-host P` would (that
        command hangs on an empty input: see RESULTS.md)."""
        import asyncio

        from crawler.redisjob import Job, connect

        async def go() -> None:
            shared = Job(await connect(self.url), job)
            try:
                opts = {"concurrency": self.args.c, "per_host": self.args.per_host}
                await shared.create("fetch", opts)
            finally:
                await shared.redis.aclose()

        asyncio.run(go())

    def spread(self, live: list[dict[str, Any]]) -> float:
        """The speed-up the shard spread allows: N / the URLs of the busiest worker."""
        owner = {s: x["id"] for x in live for s in x["shards"]}
        per: Counter[str] = Counter()
        for i in range(self.args.n):
            per[owner[shard_of(f"{self.hosts[i % self.args.hosts]}:{self.port}", SHARDS)]] += 1
        return self.args.n / max(per.values())

    def redis_cpu(self) -> float:
        info: dict[str, Any] = self.r.info("cpu")  # type: ignore[assignment]
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def host_name(i: int) -> str:
    return f"127.0.{i // 254}.{1 + i % 254}"


def expected_spread(hosts: int, w: int, trials: int = 200) -> float:
    """The median speed-up random worker ids' shard shares allow (for the table)."""
    import random

    names = [f"{host_name(i)}:8080" for i in range(hosts)]
    shards = [shard_of(h, SHARDS) for h in names]
    got = []
    rnd = random.Random(17)
    for _ in range(trials):
        ids = [f"w{rnd.getrandbits(32):08x}" for _ in range(w)]
        owner = assign(SHARDS, ids)
        per = Counter(owner[s] for s in shards)
        got.append(hosts / max(per.values()))
    return median(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("-c", type=int, default=20, help="-c of the local run and of each worker")
    ap.add_argument("--per-host", type=int, default=4)
    ap.add_argument("--hosts", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--deadline", type=float, default=600, help="seconds for the whole run")
    args = ap.parse_args()
    ws = [int(x) for x in args.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="crawler-rscale-"))
    port = free_port()
    rport = free_port()
    redis_proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(tmp), "--protected-mode", "no"),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    serve = [*CRAWLER, "serve", "--port", str(port), "--latency-ms", "100"]
    serve += ["--latency-dist", "fixed"]
    for i in range(args.hosts):
        serve += ["--host", host_name(i)]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, start_new_session=True)
    loads = [os.getloadavg()[0]]
    rounds: list[dict[str, dict[str, Any]]] = []
    names = ["local", *(f"W={w}" for w in ws)]
    try:
        wait_port("127.0.0.1", rport, redis_proc)
        wait_port(host_name(args.hosts - 1), port, server)
        bench = Bench(args, tmp, f"redis://127.0.0.1:{rport}/0", port)
        server_cpu = cpu_of(server.pid)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            got: dict[str, dict[str, Any]] = {}
            for name in order:
                got[name] = bench.local() if name == "local" else bench.distributed(int(name[2:]))
            got = {name: got[name] for name in names}
            rounds.append(got)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1} (load {loads[-1]:.1f}):", flush=True)
            for name, v in got.items():
                keys = ("ready_s", "first_s", "enqueue_s", "spread")
                extra = "".join(f", {k} {v[k]:.2f}" for k in keys if k in v)
                redis_us = f", Redis {v['redis_cpu_us']:.0f} µs" if "redis_cpu_us" in v else ""
                job = f" (job {v['job_wall']:6.2f} s)" if "job_wall" in v else " " * 15
                print(
                    f"  {name:6} {v['wall']:6.2f} s{job} {v['urls_per_s']:6.0f}/s "
                    f"CPU {v['cpu_us']:5.0f} µs/URL{redis_us}{extra}",
                    flush=True,
                )
                if "first_req_s" in v:
                    print(
                        "         " + ", ".join(f"{k} {v[k]:.3f}" for k in TIMELINE if k in v),
                        flush=True,
                    )
        server_cpu = cpu_of(server.pid) - server_cpu
    except DeadlineError:
        print(f"deadline of {args.deadline:.0f} s passed: stopped", file=sys.stderr)
        sys.exit(1)
    finally:
        stop_group(server, 5)  # type: ignore[arg-type]
        stop_group(redis_proc, 5)  # type: ignore[arg-type]
    print(f"\n{args.n} URLs over {args.hosts} hosts, -c {args.c} --per-host {args.per_host};")
    print(f"load average (1 min) during the run: {min(loads):.1f}-{max(loads):.1f}")
    print(
        f"{'':6} {'URLs/s':>7} {'ratio':>11} {'job URLs/s':>10} {'job ratio':>9}"
        f" {'spread':>6} {'CPU µs/URL':>10} {'Redis µs':>8}"
    )
    table: dict[str, Any] = {}
    for name in names:
        ups = median([rd[name]["urls_per_s"] for rd in rounds])
        base = "local" if name == "W=1" else "W=1"
        ratio = median([rd[name]["urls_per_s"] / rd[base]["urls_per_s"] for rd in rounds])
        row: dict[str, Any] = {"urls_per_s": ups, "ratio": ratio, "ratio_to": base}
        if name not in ("local", "W=1"):  # the local run has no job clock
            row["job_ratio"] = median(
                [rd[name]["job_urls_per_s"] / rd["W=1"]["job_urls_per_s"] for rd in rounds]
            )
        for k in ("cpu_us", "redis_cpu_us", "spread", "job_urls_per_s", *TIMELINE):
            if k in rounds[0][name]:
                row[k] = median([rd[name][k] for rd in rounds])
        if name != "local":
            row["expected_spread"] = expected_spread(args.hosts, int(name[2:]))
        table[name] = row
        nan = float("nan")
        print(
            f"{name:6} {ups:7.0f} {ratio:5.2f}x"
            + (f" ({base:5})" if name != "local" else " " * 8)
            + f" {row.get('job_urls_per_s', nan):10.0f} {row.get('job_ratio', nan):8.2f}x"
            + f" {row.get('spread', nan):6.2f}"
            + f" {row['cpu_us']:10.0f} {row.get('redis_cpu_us', nan):8.0f}"
        )
    served = len(rounds) * args.n * len(names)
    print(f"server (crawler serve) CPU: {server_cpu / served * 1e6:.0f} µs/URL")
    OUT.mkdir(exist_ok=True)
    (OUT / "redis_scaling.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "args": vars(args),
                "loads": loads,
                "rounds": rounds,
                "table": table,
            }
        )
    )


if __name__ == "__main__":
    run_main(main)
