"""``crawler bench``: the fetch pipeline against a local server, optionally beside a bare
aiohttp loop on the same server, interleaved round by round.

The server runs in its own process(es) so it never competes with the client's event loop
for the GIL. Both clients run in this process, on the same kind of event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import aiohttp
from msgspec import Struct
from msgspec.structs import replace

from crawler.bench.server import ServeOptions, child_command
from crawler.config import RunConfig, SinkConfig
from crawler.errors import UsageError
from crawler.inputs import Uncounted
from crawler.runner import Runner
from crawler.stats import Snapshot, peak_rss_mib


class GeneratedSource(Uncounted):
    """N distinct URLs under a prefix, generated lazily in batches (no input file)."""

    def __init__(self, prefix: str, n: int, batch: int = 2048, path: str = "page") -> None:
        self._prefix = f"{prefix.rstrip('/')}/{path}"
        self._n = n
        self._batch = batch
        self.lines_total: int | None = n
        self.lines_read = 0
        self.eof = False

    async def batches(self) -> AsyncIterator[list[str]]:
        prefix = self._prefix
        for start in range(0, self._n, self._batch):
            stop = min(self._n, start + self._batch)
            self.lines_read = stop
            yield [f"{prefix}/{i}" for i in range(start, stop)]
            await asyncio.sleep(0)
        self.eof = True


async def bare_aiohttp(prefix: str, n: int, concurrency: int) -> float:
    """The baseline: one session, a queue, C workers, ``resp.read()``. Returns URLs/s."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(f"{prefix.rstrip('/')}/page/{i}")
    # Verified with a context that has the CA store, whichever way aiohttp was loaded
    # (crawler.tls.load_aiohttp makes aiohttp's own default one without it).
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl.create_default_context())

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                async with session.get(url) as resp:
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker(session))
    return n / (time.perf_counter() - started)


class BenchRound(Struct, frozen=True):
    crawler: Snapshot
    baseline_urls_per_s: float | None


@contextlib.contextmanager
def embedded_server(opts: ServeOptions) -> Iterator[str]:
    """Start ``crawler serve`` in a subprocess on a free port; yield its URL prefix."""
    cmd = child_command(replace(opts, workers=1), 0)
    cmd[cmd.index("--workers") + 1] = str(opts.workers)
    cmd.remove("--reuse-port")
    # If bench dies without its finally (SIGTERM, SIGKILL), the server stops by itself.
    cmd += ["--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None  # noqa: S101
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise UsageError(f"the embedded server did not start: {err.strip()[-300:]}")
        yield line.split(",")[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_rounds(
    config: RunConfig, prefix: str, n: int, rounds: int, compare: bool, path: str = "page"
) -> list[BenchRound]:
    config = replace(config, sink=SinkConfig(output="/dev/null"))
    results = []
    for _ in range(rounds):
        source = GeneratedSource(prefix, n, path=path)
        snap = (await Runner(config, source).run()).snapshot
        base = None
        if compare:
            base = await bare_aiohttp(prefix, n, config.limits.concurrency)
        results.append(BenchRound(snap, base))
    return results


def summarize(rounds: list[BenchRound], *, n: int, config: RunConfig, loop: str) -> dict[str, Any]:
    med = statistics.median
    snaps = [r.crawler for r in rounds]
    report: dict[str, Any] = {
        "n": n,
        "rounds": len(rounds),
        "concurrency": config.limits.concurrency,
        "per_host": config.limits.per_host,
        "event_loop": loop,
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "urls_per_s": round(med(s.urls_per_s for s in snaps), 1),
        "urls_per_s_runs": [s.urls_per_s for s in snaps],
        "latency_ms": {
            q: round(med(s.latency_ms[q] for s in snaps), 2) for q in ("p50", "p95", "p99")
        },
        "loop_lag_ms": {
            q: round(med(s.loop_lag_ms[q] for s in snaps), 2) for q in ("p50", "p99", "max")
        },
        "ok": sum(s.ok for s in snaps),
        "errors": _merge(s.by_error for s in snaps),
        "retries": sum(s.retries for s in snaps),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    bases = [r.baseline_urls_per_s for r in rounds if r.baseline_urls_per_s is not None]
    if bases:
        report["baseline_urls_per_s"] = round(med(bases), 1)
        report["baseline_urls_per_s_runs"] = [round(b, 1) for b in bases]
        report["ratio_to_baseline"] = round(report["urls_per_s"] / report["baseline_urls_per_s"], 3)
    return report


# What ``--error-rate`` makes the embedded server do: 503s, which end as ``http`` records
# after their retries and may open the host's breaker (``circuit_open``).
INJECTED_KINDS: Final = frozenset(("http", "circuit_open"))


def unexpected_errors(report: dict[str, Any], *, injected: bool) -> dict[str, int]:
    """The errors of a bench run that nobody asked for (all of them against a
    ``--target``, or without ``--error-rate``): a run that has them measured something
    else than the pipeline fetching pages (a wrong port, a server that fell over)."""
    return {
        kind: count
        for kind, count in report["errors"].items()
        if not (injected and kind in INJECTED_KINDS)
    }


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out
