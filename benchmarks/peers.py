"""Peers side by side on the same local server, interleaved, medians of rounds.

    python benchmarks/peers.py --n 100000 -c 100 --rounds 3

Clients: bare aiohttp (asyncio and uvloop), crawler fetch (asyncio and uvloop),
httpx.AsyncClient, Scrapy (CrawlerProcess) and `curl --parallel`; `wrk` gives the server's
ceiling. httpx and Scrapy run from their own virtualenv (benchmarks/.venvs/peers, created
on first use), never from the project's dependencies. Missing peers are skipped, and said so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import local_server, median, run_main, timed, write_urls

HERE = Path(__file__).parent
VENV = HERE / ".venvs" / "peers"


def peer_python() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "httpx", "scrapy"], check=True
            )
        except (subprocess.CalledProcessError, OSError):
            return None
    return str(python)


def versions(python: str | None) -> dict[str, str]:
    import aiohttp

    out = {"python": sys.version.split()[0], "aiohttp": aiohttp.__version__}
    if python:
        code = "import httpx, scrapy; print(httpx.__version__, scrapy.__version__)"
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            out["httpx"], out["scrapy"] = res.stdout.split()
    if shutil.which("curl"):
        out["curl"] = subprocess.run(
            ["curl", "--version"], capture_output=True, text=True, check=False
        ).stdout.split()[1]
    return out


def clients(urls: Path, curl_cfg: Path, c: int, python: str | None) -> dict[str, list[str]]:
    bare = [sys.executable, str(HERE / "bare_aiohttp.py"), str(urls), "-c", str(c)]
    fetch = [
        sys.executable, "-m", "crawler", "fetch", str(urls), "-c", str(c),
        "--per-host", str(c), "-o", "/dev/null", "-q",
    ]  # fmt: skip
    out = {
        "bare aiohttp (asyncio)": bare,
        "crawler fetch (asyncio)": [*fetch, "--no-uvloop"],
        "bare aiohttp (uvloop)": [*bare, "--uvloop"],
        "crawler fetch (uvloop)": fetch,
    }
    if python:
        out["httpx.AsyncClient"] = [python, str(HERE / "peers" / "httpx_client.py"), str(urls),
                                    "-c", str(c)]  # fmt: skip
        out["scrapy"] = [python, str(HERE / "peers" / "scrapy_client.py"), str(urls),
                         "-c", str(c)]  # fmt: skip
    if shutil.which("curl"):
        out["curl --parallel"] = ["curl", "-s", "-Z", "--parallel-max", str(min(c, 300)),
                                  "-K", str(curl_cfg)]  # fmt: skip
    return out


def wrk_ceiling(prefix: str, c: int) -> float | None:
    if not shutil.which("wrk"):
        return None
    res = subprocess.run(
        ["wrk", "-t1", f"-c{c}", "-d5s", f"{prefix}/page/1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", res.stdout)
    return float(match.group(1)) if match else None


def _responses(stdout: str) -> int | None:
    """How many responses a client says it got, when it says (Scrapy, httpx, bare)."""
    try:
        data = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    if "responses" in data:
        return int(data["responses"])
    if "urls" in data and "errors" in data:
        return int(data["urls"]) - int(data["errors"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default="auto", choices=["auto", "nginx", "aiohttp", "embedded"])
    ap.add_argument("--only", nargs="*", help="run only clients whose name contains these")
    args = ap.parse_args()
    python = peer_python()
    results: dict[str, list[tuple[float, float]]] = {}
    with local_server(args.server) as (prefix, desc), tempfile.TemporaryDirectory() as tmp:
        urls, curl_cfg = Path(tmp) / "urls.txt", Path(tmp) / "curl.cfg"
        write_urls(urls, prefix, args.n)
        with curl_cfg.open("w") as f:
            f.writelines(
                f'url = "{prefix}/page/{i}"\noutput = "/dev/null"\n' for i in range(args.n)
            )
        ceiling = wrk_ceiling(prefix, args.c)
        todo = clients(urls, curl_cfg, args.c, python)
        if args.only:
            todo = {k: v for k, v in todo.items() if any(o in k for o in args.only)}
        for _ in range(args.rounds):
            for name, cmd in todo.items():
                secs, rss, out = timed(cmd, {"PYTHONWARNINGS": "ignore"})
                got = _responses(out)
                if got is not None and got < args.n:
                    print(f"  {name}: only {got} of {args.n} responses", file=sys.stderr)
                results.setdefault(name, []).append((args.n / secs, rss))
                print(f"  {name}: {args.n / secs:.0f} URLs/s, {rss:.0f} MiB", file=sys.stderr)
    base = {
        loop: median([r for r, _ in results.get(f"bare aiohttp ({loop})", [])])
        for loop in ("asyncio", "uvloop")
    }
    table = []
    for name, runs in results.items():
        rate = median([r for r, _ in runs])
        table.append(
            {
                "client": name,
                "urls_per_s": round(rate),
                "vs_bare_asyncio": round(rate / base["asyncio"], 2),
                "vs_bare_uvloop": round(rate / base["uvloop"], 2),
                "peak_rss_mib": round(median([m for _, m in runs]), 1),
                "runs": [round(r) for r, _ in runs],
            }
        )
    report = {"server": desc, "wrk_ceiling_rps": ceiling, "n": args.n, "concurrency": args.c,
              "rounds": args.rounds, "versions": versions(python), "table": table}  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    run_main(main)
