"""Python bytecodes executed per URL: a measure of CPU per URL that noise cannot move.

    python benchmarks/opcodes_per_url.py --n 3000 [--target http://127.0.0.1:8080]
        [--functions-of aiohttp] [--lines plain|json|post] [--fetch include_headers=1 ...]

On a shared 2-core machine a timed run varies by 10-20% from one minute to the next, so
small changes to the hot path cannot be seen in URLs/s. The number of bytecodes each URL
costs can: it is counted exactly (``sys.settrace`` with opcode events, so the run is
slow, but the count does not depend on timing). Three clients against the same server,
each on uvloop, whose loop is C: what is counted is the Python each URL costs, the part
that sets how far behind the bare loop crawler is there.

- bare:     the baseline loop of ``crawler bench --compare`` and run_core.py
            (``session.get(str)``, ``resp.read()``);
- fetcher:  the same loop calling crawler's ``Fetcher.fetch`` on pre-parsed URLs;
- crawler:  the whole ``crawler fetch`` pipeline (``Engine``, a URL file, output to
            /dev/null): reader, dedup, frontier, workers, breaker, records, sink.

Prints opcodes per URL by package and the top functions of crawler's own code.
``--lines json`` writes the crawler run's input as JSON request lines (``{"url": ...,
"meta": i}``), ``--lines post`` as POSTs with a body: the cost of a request line.
``--fetch NAME=VALUE`` sets a FetchConfig field of the crawler run (``include_headers=1``,
``include_body=1``, ``proxies=http://127.0.0.1:8899``): the cost of an option.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop
from cpu_per_url import loop_of

from crawler.bench.runner import bare_aiohttp, embedded_server
from crawler.bench.server import ServeOptions
from crawler.config import FetchConfig, LimitConfig, RunConfig, SinkConfig, field_defaults
from crawler.engine import Engine
from crawler.inputs import LineSource

Counts = collections.Counter[tuple[str, str]]


def where(filename: str) -> str:
    """'…/site-packages/aiohttp/streams.py' -> 'aiohttp/streams.py'; crawler's own files
    -> 'crawler/…'; the standard library -> 'stdlib/…'."""
    path = filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/crawler/" in path:
        return "crawler/" + path.rsplit("/crawler/", 1)[1]
    if "/lib/python" in path:
        return "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return path


def counted(main: Callable[[], Coroutine[Any, Any, object]]) -> Counts:
    counts: Counts = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
        return tracer

    async def traced() -> None:
        sys.settrace(tracer)
        try:
            await main()
        finally:
            sys.settrace(None)

    uvloop.run(traced())
    return counts


async def crawler_fetch(urls: Path, n: int, c: int, fetch: dict[str, Any]) -> None:
    config = RunConfig(
        limits=LimitConfig(concurrency=c, per_host=c),
        sink=SinkConfig(output=os.devnull),
        fetch=FetchConfig(**fetch),
    )
    engine = Engine(config, LineSource(str(urls)), install_signal_handlers=False)
    snap = (await engine.run()).snapshot
    assert snap.ok == n, snap.by_error


def input_line(url: str, i: int, kind: str) -> str:
    """One line of the crawler run's input (see ``--lines``)."""
    if kind == "json":
        return f'{{"url": "{url}", "meta": {i}}}\n'
    if kind == "post":
        return f'{{"url": "{url}", "method": "POST", "body": "row {i}", "meta": {i}}}\n'
    return f"{url}\n"


def report(name: str, counts: Counts, n: int, top: int, package: str = "crawler") -> None:
    total = sum(counts.values())
    by_package: collections.Counter[str] = collections.Counter()
    for (filename, _), count in counts.items():
        by_package[where(filename).split("/")[0]] += count
    print(f"\n{name}: {total / n:,.0f} opcodes per URL")
    for pkg, count in by_package.most_common(8):
        print(f"  {count / n:8.1f}  {pkg}")
    own = [
        (count, f"{where(f)}:{fn}")
        for (f, fn), count in counts.items()
        if where(f).startswith(f"{package}/")
    ]
    if own:
        print(f"  {package}'s own code, top {top} functions:")
        for count, label in sorted(own, reverse=True)[:top]:
            print(f"  {count / n:8.1f}  {label}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("-c", type=int, default=100)
    ap.add_argument("--target", help="URL prefix of a running server (default: embedded)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--functions-of", default="crawler", help="package whose functions to list")
    ap.add_argument("--lines", choices=("plain", "json", "post"), default="plain")
    ap.add_argument("--fetch", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    fetch: dict[str, Any] = {}
    for item in args.fetch:
        name, _, value = item.partition("=")
        kind = type(field_defaults(FetchConfig)[name])
        fetch[name] = (value,) if kind is tuple else (value == "1" if kind is bool else value)
    server = (
        contextlib.nullcontext(args.target)
        if args.target
        else embedded_server(ServeOptions(port=0, workers=1))
    )
    with server as prefix, tempfile.TemporaryDirectory() as tmp:
        urls = Path(tmp) / "urls.txt"
        urls.write_text(
            "".join(input_line(f"{prefix}/page/{i}", i, args.lines) for i in range(args.n))
        )
        runs = {
            "bare": lambda: bare_aiohttp(prefix, args.n, args.c),
            "fetcher": lambda: loop_of(prefix, args.n, args.c, True),
            "crawler": lambda: crawler_fetch(urls, args.n, args.c, fetch),
        }
        for name, run in runs.items():
            report(name, counted(run), args.n, args.top, args.functions_of)


if __name__ == "__main__":
    main()
