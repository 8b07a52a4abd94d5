"""The coordinator's side of one worker process of ``--workers N``: starting it, sending
it lines, and knowing which of them still wait for their record.

A line sent to a worker is settled once its record came back, or its claim said it is a
duplicate (or done by an earlier run). Until then the coordinator keeps it: if the
worker dies, its unsettled lines go to the worker started in its place, and the
fingerprints it had claimed for them are handed to that worker's claims as still new
(``owed``). Nothing is lost, and a record that did come back is never made again.

Per URL this costs one dict insert at the claim and one pop at the record; per batch,
one frame each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from typing import Any

import msgspec.structs
from msgspec import Struct, field

from crawler import shards
from crawler.config import RunConfig
from crawler.errors import UsageError
from crawler.linkqueue import Link
from crawler.paths import not_a_file
from crawler.stores import FRESH, Seen


class Batch(Struct):
    lines: list[str]
    open: int  # lines not settled yet
    fps: list[int] | None = None  # claimed: the lines' fingerprints...
    answers: bytes | None = None  # ...and the claim's answers


class ShardProc(Struct):
    """One worker process and the work it holds."""

    index: int
    proc: asyncio.subprocess.Process
    batches: dict[int, Batch] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)  # fp -> batch, claimed FRESH
    extra: dict[int, list[int]] = field(default_factory=dict)  # a fingerprint twice (--no-dedup)
    outstanding: int = 0  # lines sent and not settled
    links_out: dict[int, Link] = field(default_factory=dict)  # crawl: delivered, no record
    tally: dict[str, Any] | None = None  # the worker's last statistics
    done: dict[str, Any] | None = None  # its final report
    room: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, data: bytes) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    async def drain(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await stdin.drain()  # if it died, its reader sees that and says so

    def send_lines(self, batch_id: int, lines: list[str]) -> None:
        self.batches[batch_id] = Batch(lines, len(lines))
        self.outstanding += len(lines)
        self.send(shards.lines_frame(batch_id, lines))

    def claimed(self, batch_id: int, fps: list[int], answers: list[int]) -> None:
        """A claim's answers: fresh lines now wait for their record, the rest are settled."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return
        batch.fps, batch.answers = fps, bytes(answers)
        waiting, extra = self.waiting, self.extra
        settled = 0
        for fp, answer in zip(fps, answers, strict=True):
            if answer != FRESH:
                settled += 1
            elif fp in waiting:
                extra.setdefault(fp, []).append(batch_id)
            else:
                waiting[fp] = batch_id
        if settled:
            self._settle(batch_id, batch, settled)

    def recorded(self, fps: list[int]) -> None:
        """Records came back: their lines are settled (0: a record with no URL to mark).
        Counted per batch first: one settling per batch a frame touches, not per record."""
        waiting, extra, links_out = self.waiting, self.extra, self.links_out
        touched: dict[int, int] = {}
        for fp in fps:
            if not fp:
                continue
            more = extra.get(fp) if extra else None
            if more:
                batch_id = more.pop()
            else:
                found = waiting.pop(fp, None)
                if found is None:
                    if links_out:
                        links_out.pop(fp, None)
                    continue
                batch_id = found
            touched[batch_id] = touched.get(batch_id, 0) + 1
        batches = self.batches
        for batch_id, n in touched.items():
            batch = batches.get(batch_id)
            if batch is not None:
                self._settle(batch_id, batch, n)

    def _settle(self, batch_id: int, batch: Batch, n: int) -> None:
        batch.open -= n
        if batch.open <= 0:
            del self.batches[batch_id]
        self.outstanding -= n
        self.room.set()

    def unsettled(self) -> tuple[list[str], Counter[int]]:
        """What a dead worker held: its lines without a record, in the order sent, and
        the fingerprints it had claimed for them (its claims stay the job's)."""
        left = Counter(self.waiting.values())  # per batch: fresh lines still open...
        per_fp: Counter[tuple[int, int]] = Counter((fp, b) for fp, b in self.waiting.items())
        for fp, more in self.extra.items():
            for b in more:
                per_fp[fp, b] += 1
                left[b] += 1
        lines: list[str] = []
        owed: Counter[int] = Counter()
        for batch_id in sorted(self.batches):
            batch = self.batches[batch_id]
            if batch.fps is None or batch.answers is None:  # never claimed: as it was
                lines += batch.lines
                continue
            for line, fp, answer in zip(batch.lines, batch.fps, batch.answers, strict=True):
                if answer == FRESH and per_fp[fp, batch_id] > 0:
                    per_fp[fp, batch_id] -= 1
                    lines.append(line)
                    owed[fp] += 1
        return lines, owed

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


async def claim_owed(seen: Seen, owed: Counter[int], fps: list[int]) -> tuple[list[int], list[int]]:
    """``seen``'s answers to a claim of ``fps``, except that a fingerprint a dead worker
    claimed and left unfinished (``owed``) is still new to the worker that took its line
    over: once for each line owed, in order, so another line of the same URL stays the
    repeat it was. Also the positions of the owed lines (a crawl counted them already)."""
    answers = [FRESH] * len(fps)
    repaid: list[int] = []
    asked: list[int] = []
    for at, fp in enumerate(fps):
        n = owed.get(fp, 0)
        if n:
            repaid.append(at)
            if n > 1:
                owed[fp] = n - 1
            else:
                del owed[fp]
        else:
            asked.append(at)
    rest = await seen.claim([fps[at] for at in asked])
    for at, answer in zip(asked, rest, strict=True):
        answers[at] = answer
    return answers, repaid


def worker_config(config: RunConfig, index: int, n: int) -> RunConfig:
    """Worker ``index``'s share: -c and --rps divided (the remainder to the first
    workers), per-host limits as they are (a host is in one worker). Fingerprints are
    always computed: the coordinator settles lines by them, even with --no-dedup."""
    limits, crawl = config.limits, config.crawl
    share = limits.concurrency // n + (1 if index < limits.concurrency % n else 0)
    if crawl is not None:
        # --max-pages is counted here; --sitemap files are read by worker 0 (the others
        # get their sites' scope in a SCOPE frame).
        sitemaps = crawl.sitemap_urls if index == 0 else ()
        crawl = msgspec.structs.replace(crawl, max_pages=None, sitemap_urls=sitemaps)
    store = config.store
    if store.warc is not None:  # one writer per file: the worker's own
        store = msgspec.structs.replace(store, warc=worker_warc(store.warc, index))
    return msgspec.structs.replace(
        config,
        workers=1,
        store=store,
        limits=msgspec.structs.replace(limits, concurrency=max(1, share), rps=limits.rps / n),
        input=msgspec.structs.replace(config.input, dedup=True),
        crawl=crawl,
    )


def worker_warc(path: str, index: int) -> str:
    """Worker ``index``'s WARC file: ``out.warc.gz`` is ``out-w1.warc.gz`` for worker 1
    (rotated: ``out-w1-00001.warc.gz``, ...), so no two processes write one file."""
    for ext in (".warc.gz", ".warc"):
        if path.endswith(ext):
            return f"{path[: -len(ext)]}-w{index}{ext}"
    return f"{path}-w{index}"


def one_writer_each(config: RunConfig) -> None:
    """--warc to a stream (/dev/stdout, a FIFO) would have N writers: refused. So is any
    path in /dev or /proc (/dev/stdout is a regular file when stdout is redirected to
    one), where the workers' own names (``-w0``, ...) would be made."""
    warc = config.store.warc
    if warc is None:
        return
    if not_a_file(warc):
        raise UsageError(
            f"--warc {warc!r} is not a regular file: with --workers each worker writes "
            "its own WARC file (leave --workers at 1 to write a stream)"
        )


WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "crawler.shardworker")


async def start(
    index: int, setup: dict[str, Any], command: tuple[str, ...] = WORKER_COMMAND
) -> ShardProc:
    """Start worker ``index`` (``command``: a stand-in, for benchmarks/coordinator.py)
    and send it its configuration."""
    env = {**os.environ, "CRAWLER_COORDINATOR_PID": str(os.getpid())}  # shardworker's
    if not setup.get("uvloop", True):
        env["CRAWLER_NO_UVLOOP"] = "1"
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        # Not in the terminal's process group: a Ctrl-C reaches the coordinator only,
        # which tells the workers (crawler.signals' rules hold for the whole run).
        start_new_session=True,
    )
    shard = ShardProc(index, proc)
    shard.room.set()
    shard.send(shards.pickled(shards.CONFIG, setup))
    return shard


def how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "its pipe closed"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def say(message: str) -> None:
    """One line on stderr about the workers (a worker died, was replaced)."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"crawler: {message}\n")
        sys.stderr.flush()
