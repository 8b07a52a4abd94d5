"""Time to decode one gzip body: crawler's ``_Decoder`` against aiohttp's own decoder.

    python benchmarks/decode_cost.py [--sizes 512,20000,200000] [--chunk 16384] [--instructions]

Issue #12 moved gzip/deflate decoding from aiohttp (``auto_decompress``: a
``DeflateBuffer`` feeding the response's ``StreamReader``) into the fetcher (``_Decoder``,
which also sees a stream cut short). This times both on the same compressed bytes, fed in
``--chunk``-byte reads, plus bare ``zlib`` as the floor: the best of many rounds, in
microseconds per body. The body is HTML-like text of the given decoded size (level 6, about
4:1 like real pages). Timed, this moves with the machine's load; ``--instructions`` counts
instead (valgrind, as instructions_per_url.py: each decoder run at two numbers of rounds in
a process of its own, the difference divided), which no load can move.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import sys
import time
import zlib
from collections.abc import Callable

from aiohttp.http_parser import DeflateBuffer
from aiohttp.streams import StreamReader

from crawler.body import _Decoder
from crawler.response import Response

WORDS = ("the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "as", "by", "page")


def html(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts: list[str] = ["<html><body>"]
    length = 12
    while length < size:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        link = f'<a href="/p/{rng.randint(0, 10**6)}">{words}</a>'
        part = f'<p class="c{rng.randint(0, 99)}">{link}</p>\n'
        parts.append(part)
        length += len(part)
    return "".join(parts).encode()[:size]


class _Protocol:
    """What StreamReader asks of its protocol."""

    _reading_paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False


def ours(chunks: list[bytes]) -> int:
    response = Response(200, "http://x/", "text/html", 0, [])
    decoder = _Decoder("gzip")
    total = 0
    for chunk in chunks:
        for piece in decoder.feed(chunk, response):
            total += len(piece)
    decoder.finish(response)
    return total


def theirs(loop: asyncio.AbstractEventLoop) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        out = StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        buf = DeflateBuffer(out, "gzip")
        total = 0
        for chunk in chunks:
            buf.feed_data(chunk, len(chunk))
            while piece := out.read_nowait():  # the reader keeps up, as in a fetch
                total += len(piece)
        buf.feed_eof()
        while piece := out.read_nowait():
            total += len(piece)
        return total

    return run


def bare(chunks: list[bytes]) -> int:
    d = zlib.decompressobj(31)
    return sum(len(d.decompress(chunk)) for chunk in chunks)


def best(fn: Callable[[list[bytes]], int], chunks: list[bytes], want: int) -> float:
    assert fn(chunks) == want, fn
    rounds = max(20, 2_000_000 // max(want, 1))
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(rounds):
            fn(chunks)
        times.append((time.perf_counter() - start) / rounds)
    return min(times) * 1e6


def counted(name: str, size: int, chunk: int) -> float:
    """Instructions per body for decoder ``name`` (valgrind, two round counts)."""
    from instructions_per_url import instructions

    r1 = max(4, 200_000 // size)
    r2 = r1 * 6
    cmd = [sys.executable, __file__, "--_run", name, "--sizes", str(size), "--chunk", str(chunk)]
    counts = [instructions([*cmd, "--_rounds", str(r)]) for r in (r1, r2)]
    return (counts[1] - counts[0]) / (r2 - r1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="512,20000,200000")
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--instructions", action="store_true", help="count (valgrind), not time")
    ap.add_argument("--_run", help=argparse.SUPPRESS)
    ap.add_argument("--_rounds", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    loop = asyncio.new_event_loop()
    decoders = {"zlib": bare, "aiohttp": theirs(loop), "_Decoder": ours}
    if args._run:  # one decoder, --_rounds times, under valgrind
        body = html(int(args.sizes))
        packed = gzip.compress(body, 6)
        chunks = [packed[i : i + args.chunk] for i in range(0, len(packed), args.chunk)]
        for _ in range(args._rounds):
            decoders[args._run](chunks)
        return
    unit = "instr" if args.instructions else "µs"
    print(f"{'decoded B':>10} {'gzip B':>8}", *(f"{f'{n} {unit}':>16}" for n in decoders))
    for size in (int(s) for s in args.sizes.split(",")):
        body = html(size)
        packed = gzip.compress(body, 6)
        chunks = [packed[i : i + args.chunk] for i in range(0, len(packed), args.chunk)]
        if args.instructions:
            row = [counted(name, size, args.chunk) for name in decoders]
        else:
            row = [best(f, chunks, len(body)) for f in decoders.values()]
        print(f"{size:>10} {len(packed):>8}", *(f"{v:>16,.1f}" for v in row), flush=True)
    loop.close()


if __name__ == "__main__":
    main()
