"""1,000,000 URLs over 10,000 host names, all resolved to one local server: memory must
stay flat because per-host state (limits, pacer, breaker) is dropped when a host is idle.

    python benchmarks/many_hosts.py --urls 1000000 --hosts 10000 -c 200

With ``--addresses N``: one URL on each of N loopback addresses (127.1.0.0 onwards, a
real host each: one connection each), against nginx listening on every address (it binds
the port on 0.0.0.0 for the run), and the same list fetched by ``crawler fetch`` on
uvloop and on asyncio's loop, bare aiohttp (benchmarks/bare_aiohttp.py) on both, and
``curl --parallel``, in interleaved rounds; ``--tls`` makes them https:// (a self-signed
certificate, not verified by any client); ``--baseline DIR`` adds the ``crawler`` package
found in DIR (another commit's, for before/after in the same rounds). Reports per client
the medians of peak RSS, URLs/s (whole process, startup included) and CPU µs per URL:

    python benchmarks/many_hosts.py --addresses 10000 -c 200 --rounds 3
    python benchmarks/many_hosts.py --addresses 5000 -c 200 --rounds 3 --tls
    python benchmarks/many_hosts.py --addresses 10000 -c 200 --rounds 3 --workers 2

Host names h0.test … h9999.test are mapped to 127.0.0.1 with `--resolve '*:127.0.0.1'`,
so nothing leaves the machine. URLs are interleaved across hosts (host = i % hosts). RSS
is sampled from /proc every second; the report gives the peak and the RSS at 25/50/75/100%
of the run, which is what "flat" means here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import local_server, machine, median, run_main, timed_cpu
from server import body, free_port, stop_process, wait_port


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 65536;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    keepalive_timeout 60s;
    client_body_temp_path {tmp};
    proxy_temp_path {tmp};
    fastcgi_temp_path {tmp};
    uwsgi_temp_path {tmp};
    scgi_temp_path {tmp};
    server {{
        listen {port} backlog=8192 {ssl};
        {certs}
        location / {{ default_type text/html; return 200 '{body}'; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_on_every_address(tls: bool) -> Iterator[int]:
    """nginx answering 200 with a 512-byte page on every address (port on 0.0.0.0)."""
    nginx = shutil.which("nginx")
    if nginx is None:
        raise SystemExit("--addresses needs nginx")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="crawler-many-") as tmp:
        certs = ""
        if tls:
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=many-hosts", "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"],
                check=True, capture_output=True,
            )  # fmt: skip
            certs = f"ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;"
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp, port=port, ssl="ssl" if tls else "", certs=certs, body=body().decode()
            )
        )
        proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", tmp, "-g", "daemon off;"], stdin=subprocess.DEVNULL
        )
        try:
            wait_port(port, proc=proc)
            yield port
        finally:
            stop_process(proc)


def address(i: int) -> str:
    return f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"


def by_address(args: argparse.Namespace) -> None:
    """One URL on each of ``--addresses`` loopback addresses, every client (see above)."""
    scheme = "https" if args.tls else "http"
    bench = Path(__file__).parent
    with nginx_on_every_address(args.tls) as port, tempfile.TemporaryDirectory() as tmp:
        urls, curl_cfg = Path(tmp) / "urls.txt", Path(tmp) / "curl.cfg"
        lines = [f"{scheme}://{address(i)}:{port}/p/{i}" for i in range(args.addresses)]
        urls.write_text("".join(f"{u}\n" for u in lines))
        curl_cfg.write_text("".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in lines))
        insecure = ["-k"] if args.tls else []
        crawler = [sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(args.c),
                   "-o", "/dev/null", "-q", "--retries", "0", *insecure]  # fmt: skip
        # bare_aiohttp.py verifies TLS: for the run its connector is made with ssl=False.
        bare = [sys.executable, "-c",
                f"import sys, functools, aiohttp; sys.path.insert(0, {str(bench)!r}); "
                "aiohttp.TCPConnector = functools.partial(aiohttp.TCPConnector, ssl=False); "
                "import bare_aiohttp; sys.argv[0] = 'bare'; bare_aiohttp.cli()",
                str(urls), "-c", str(args.c)]  # fmt: skip
        # --baseline DIR: the crawler package found in DIR (another commit's), same flags.
        before = [sys.executable, "-c",
                  f"import sys, runpy; sys.path.insert(0, {args.baseline!r}); "
                  "sys.argv[0] = 'crawler'; runpy.run_module('crawler', run_name='__main__')",
                  *crawler[3:]]  # fmt: skip
        clients = {
            "crawler fetch (uvloop)": crawler,
            "crawler fetch (asyncio)": [*crawler, "--no-uvloop"],
            **(
                {
                    "baseline crawler fetch (uvloop)": before,
                    "baseline crawler fetch (asyncio)": [*before, "--no-uvloop"],
                }
                if args.baseline
                else {}
            ),
            "bare aiohttp (uvloop)": [*bare, "--uvloop"],
            "bare aiohttp (asyncio)": bare,
            **{
                f"crawler fetch --workers {n} (uvloop)": [
                    *crawler,
                    "--workers",
                    str(n),
                    "--stats-json",
                    str(Path(tmp) / f"w{n}.json"),
                ]
                for n in args.workers
            },
            "curl --parallel": [
                "curl",
                "-s",
                "-Z",
                "--parallel-max",
                str(min(args.c, 300)),
                *(["-k"] if args.tls else []),
                "-K",
                str(curl_cfg),
            ],
        }
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, cmd in clients.items():
                elapsed, rss, _, cpu = timed_cpu(cmd)
                if "--workers" in cmd:  # a process tree: the sum of its processes' peaks
                    stats = Path(cmd[cmd.index("--stats-json") + 1])
                    rss = json.loads(stats.read_text())["peak_rss_mib"]
                runs[name].append((rss, args.addresses / elapsed, cpu / args.addresses * 1e6))
                print(f"{name}: {runs[name][-1]}", file=sys.stderr)
    report = {
        "addresses": args.addresses,
        "scheme": scheme,
        "concurrency": args.c,
        "rounds": args.rounds,
        "machine": machine(),
        "clients": {
            name: {
                "peak_rss_mib": round(median([r[0] for r in rs]), 1),
                "urls_per_s": round(median([r[1] for r in rs])),
                "cpu_us_per_url": round(median([r[2] for r in rs])),
                "runs": [[round(x, 1) for x in r] for r in rs],
            }
            for name, rs in runs.items()
        },
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("-c", type=int, default=200)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp", "embedded"])
    ap.add_argument("--addresses", type=int, default=0, help="one URL on each of N addresses")
    ap.add_argument("--tls", action="store_true", help="with --addresses: https://")
    ap.add_argument("--rounds", type=int, default=1, help="with --addresses: interleaved")
    ap.add_argument(
        "--workers", type=int, nargs="*", default=[],
        help="with --addresses: also crawler fetch --workers N (peak RSS: its processes' sum)",
    )  # fmt: skip
    ap.add_argument(
        "--baseline", default="",
        help="with --addresses: also the crawler package in this directory (e.g. `git archive "
             "BASE crawler | tar -x -C DIR`), on both loops, in the same rounds",
    )  # fmt: skip
    args = ap.parse_args()
    if args.addresses:
        by_address(args)
        return
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
