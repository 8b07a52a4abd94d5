"""One worker process of ``--workers N`` (``python -m crawler.shardworker``, started by
``crawler.coordinator``): the same pipeline as a run on its own, on the hosts the
coordinator routes to it.

    stdin  --LINES, ANSWER, STOP, END-->  PipeSource --> Reader --claims--> RemoteSeen
                                          Frontier --> Workers --> PipeSink
    stdout <--CLAIM, RECORDS, STATS, DONE--
    crawl:  --SCOPE (seeds), LINKS, FINISH-->  ShardQueue  <--FORWARD (links), IDLE--

What differs from a run on its own is behind the engine's seams: the lines come from
the coordinator (``PipeSource``), dedup is the coordinator's (``RemoteSeen``: one round
trip per batch), records go back to it encoded, in batches (``PipeSink``: it is the only
writer of the output and the only owner of ``--state``), and the ledger is a stand-in
that says whether the run is durable. The worker takes no signal from the terminal: it
stops when the coordinator says so, and when the coordinator is gone (its standard input
ends without END) it stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

from crawler import shards
from crawler.config import RunConfig, SinkConfig
from crawler.crawling import Crawling
from crawler.engine import Engine
from crawler.errors import InvalidURL
from crawler.linkqueue import Link
from crawler.records import Record, encode
from crawler.recordsink import SinkHooks
from crawler.request import parse_request_line
from crawler.stores import FRESH, Ledger, MemoryQueue, Stores
from crawler.urls import parse_target

PARENT_ENV: Final = "CRAWLER_COORDINATOR_PID"  # set by crawler.shardproc.start
_STATS_INTERVAL: Final = 0.25  # seconds between the worker's statistics reports
_HIGH_WATER: Final = 1 << 20  # bytes waiting in the pipe to the coordinator: producers wait


class Channel:
    """The worker's two pipes: frames in (standard input), frames out (standard output)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.gone = False  # the coordinator went away: nothing more can be sent

    def send(self, data: bytes) -> None:
        if not self.gone:
            self.writer.write(data)

    @property
    def behind(self) -> bool:
        return not self.gone and self.writer.transport.get_write_buffer_size() > _HIGH_WATER

    async def drain(self) -> None:
        if self.gone:
            return
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.gone = True


class PipeSource:
    """The lines the coordinator sends, batch by batch; ``current`` names the batch the
    reader is working on (its claim goes with that id)."""

    lines_total: int | None = None
    eof = False

    def __init__(self) -> None:
        self.lines_read = 0
        self.received = 0  # lines the coordinator sent
        self.current = 0
        self._batches: asyncio.Queue[tuple[int, list[str]] | None] = asyncio.Queue()

    def put(self, batch: int, lines: list[str]) -> None:
        self.received += len(lines)
        self._batches.put_nowait((batch, lines))

    def end(self) -> None:
        self._batches.put_nowait(None)

    async def batches(self) -> AsyncIterator[list[str]]:
        while (item := await self._batches.get()) is not None:
            self.current, lines = item
            self.lines_read += len(lines)
            yield lines
        self.eof = True

    def start_count(self) -> None:
        pass

    async def counted(self) -> None:
        pass

    def stop_count(self) -> None:
        pass


class RemoteSeen:
    """Dedup is the coordinator's (it may be the --state file): one claim per batch, with
    the batch's id, so the coordinator knows which of its lines now wait for a record."""

    def __init__(self, channel: Channel, source: PipeSource) -> None:
        self._channel = channel
        self._source = source
        self._waiting: dict[int, asyncio.Future[list[int]]] = {}

    async def claim(self, fps: list[int], *, remember_done: bool = False) -> list[int]:
        if remember_done:  # a page's links: the coordinator claims them when forwarded
            return [FRESH] * len(fps)
        batch = self._source.current
        answer: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting[batch] = answer
        self._channel.send(shards.ids_frame(shards.CLAIM, batch, shards.fingerprints(fps)))
        try:
            return await answer
        finally:
            del self._waiting[batch]

    def answered(self, batch: int, answers: bytes | memoryview) -> None:
        future = self._waiting.get(batch)
        if future is not None and not future.done():
            future.set_result(list(answers))


class ShardQueue:
    """Crawl mode: the links this worker finds go to the coordinator (``push``), which
    claims them and hands each to the worker that owns its host; those handed here wait
    in ``take``'s queue. Forwarded in a batch per loop turn, always before the records
    that follow (``flush``): a page's record never reaches the coordinator before its
    links."""

    spilled = 0

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._links: deque[Link] = deque()
        self._out: list[tuple[str, int, str | None, int]] = []
        self.received = 0  # links handed to this worker

    def __len__(self) -> int:
        return len(self._links)

    def push(self, link: Link) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(tuple(link))  # type: ignore[arg-type]

    def flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._channel.send(shards.pickled(shards.FORWARD, out))

    def deliver(self, links: list[tuple[str, int, str | None, int]]) -> None:
        self._links.extend(Link(*link) for link in links)
        self.received += len(links)

    async def take(self, n: int) -> list[Link]:
        links = self._links
        return [links.popleft() for _ in range(min(n, len(links)))]

    async def carried_over(self) -> AsyncIterator[list[Link]]:
        return  # an earlier run's waiting links are the coordinator's
        yield

    def close(self) -> None:
        pass


class StandInLedger:
    """The coordinator commits; the worker only needs to know whether the run is durable
    (with --state a URL cut off by a stop gets no ``cancelled`` record)."""

    resumed = False
    committed_offset = 0
    done_before = 0

    def __init__(self, durable: bool) -> None:
        self.durable = durable

    async def open(self) -> None:
        pass

    async def commit(
        self, fps: list[int], offset: int, sync_fd: int | None, links: Sequence[Link] = ()
    ) -> None:
        pass

    async def aclose(self) -> None:
        pass


class PipeSink:
    """Records to the coordinator: encoded here (the CPU spent where the URL was
    fetched), sent in batches with their fingerprints (0: none, a ``cancelled`` record)."""

    broken = False
    lost = 0

    def __init__(
        self, config: SinkConfig, channel: Channel, before: Callable[[], None] | None = None
    ) -> None:
        self._channel = channel
        self._before = before  # what must reach the coordinator first (a page's links)
        self._batch_records = config.batch_records
        self._batch_bytes = config.batch_bytes
        self._interval = min(config.flush_interval, 0.05)
        self._buf = bytearray()
        self._fps: list[int] = []
        self._kick = asyncio.Event()
        self._closing = False

    async def open(self) -> None:
        pass

    def put_nowait(
        self, record: Record, fp: int | None = None, links: list[Link] | None = None
    ) -> None:
        self._buf += encode(record)
        self._fps.append(fp or 0)
        n = len(self._fps)
        if n == 1 or n >= self._batch_records or len(self._buf) >= self._batch_bytes:
            self._kick.set()

    @property
    def behind(self) -> bool:
        return self._channel.behind

    async def backpressure(self) -> None:
        await self._channel.drain()

    def _send(self) -> None:
        if self._before is not None:
            self._before()
        if self._fps:
            data, self._buf = self._buf, bytearray()
            fps, self._fps = self._fps, []
            self._channel.send(shards.records_frame(fps, data))

    async def run(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if not self._closing and len(self._fps) < self._batch_records:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._kick.wait()
                self._kick.clear()
            self._send()
            await self._channel.drain()
            if self._closing:
                return

    def close(self) -> None:
        self._closing = True
        self._kick.set()

    def abandon(self) -> None:
        pass

    def send_now(self) -> None:
        self._send()

    async def aclose(self) -> None:
        self._send()
        await self._channel.drain()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Run the pipeline on what the coordinator sends; the exit status."""
    from crawler.runner import Runner

    kind, payload = await shards.read_frame(reader)
    if kind != shards.CONFIG:
        return 2
    setup: dict[str, Any] = pickle.loads(payload)  # noqa: S301 - our own parent's frame
    config: RunConfig = setup["config"]
    channel = Channel(reader, writer)
    source = PipeSource()
    seen = RemoteSeen(channel, source)
    links = ShardQueue(channel)
    crawling = config.crawl is not None
    sink = PipeSink(config.sink, channel, links.flush if crawling else None)
    queue = links if crawling else MemoryQueue(config.limits.queue_size)
    stores = Stores(seen, StandInLedger(setup["durable"]), queue)
    scope: list[str] = []  # seeds of other workers, until the crawl exists
    finished = False  # crawl: the coordinator said every worker is idle
    told = -1  # links received when this worker last said it was idle
    ready = False  # the run's parts exist
    engine: Engine  # made below, with make_sink

    def may_end() -> bool:
        """Idle here: say so (once per batch of links received); end if told to."""
        nonlocal told
        if not finished and told != links.received:
            told = links.received
            sink.send_now()
            channel.send(shards.count_frame(shards.IDLE, told))
        return finished

    def make_sink(cfg: SinkConfig, ledger: Ledger, hooks: SinkHooks) -> PipeSink:
        nonlocal ready
        ready = True
        pages = engine.parts.pages
        if pages.crawl is not None:
            pages.crawl.may_end = may_end
            _seed(pages, scope)
        return sink

    runner = Runner(config, source, stores=stores, sink=make_sink)
    made = runner.engine
    assert isinstance(made, Engine)  # noqa: S101 - a worker's config has workers=1
    engine = made

    def wake() -> None:
        crawl = engine.parts.pages.crawl if ready else None
        if crawl is not None:
            crawl.wake.set()

    async def listen() -> None:
        nonlocal finished
        try:
            while True:
                kind, payload = await shards.read_frame(reader)
                if kind == shards.LINES:
                    source.put(*shards.read_lines(payload))
                elif kind == shards.ANSWER:
                    seen.answered(*shards.read_ids(payload))
                elif kind == shards.LINKS:
                    links.deliver(pickle.loads(payload))  # noqa: S301 - our parent's
                    wake()
                elif kind == shards.SCOPE:
                    lines = shards.read_lines(payload)[1]
                    if ready:
                        _seed(engine.parts.pages, lines)
                    else:
                        scope.extend(lines)
                elif kind == shards.FINISH:
                    finished = True
                    wake()
                elif kind == shards.STOP:
                    engine.request_stop()
                elif kind == shards.END:
                    source.end()
        except (asyncio.IncompleteReadError, ConnectionError):
            # The coordinator is gone (killed): nobody takes our records, stop now.
            channel.gone = True
            source.end()
            engine.request_stop()
            engine.request_stop()

    async def report() -> None:
        while True:
            await asyncio.sleep(_STATS_INTERVAL)
            if ready:
                channel.send(shards.pickled(shards.STATS, _tally(engine)))

    listener = asyncio.ensure_future(listen())
    reporter = asyncio.ensure_future(report())
    try:
        result = await runner.run()
    finally:
        reporter.cancel()
    channel.send(
        shards.pickled(
            shards.DONE,
            {
                "tally": _tally(engine),
                "interrupted": result.interrupted,
                "timed_out": result.timed_out,
                # Sent to us, never dealt with (a stop): the input the run did not read.
                "unread": source.received - engine.lines_taken,
            },
        )
    )
    await channel.drain()
    listener.cancel()
    return 0


def _seed(pages: Crawling, lines: list[str]) -> None:
    """Other workers' seeds: their sites are in this crawl's scope too."""
    for line in lines:
        try:
            text = parse_request_line(line)[0] if line[:1] == "{" else line
            url, _, host = parse_target(text)
        except InvalidURL:
            continue
        pages.seed(url, host)


def _tally(engine: Engine) -> dict[str, Any]:
    gauges = engine.stats.gauges
    return shards.tally(engine.stats, gauges.in_flight(), gauges.queued())


async def _main() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, out)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    # Nothing else may write to our standard output: it carries frames.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return await serve(reader, writer)


def main() -> None:
    from crawler.lifeline import die_with_parent

    # The coordinator starts us from its event loop's thread: PR_SET_PDEATHSIG holds.
    die_with_parent(int(os.environ.get(PARENT_ENV, os.getppid())), pdeathsig=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    use_uvloop = os.environ.get("CRAWLER_NO_UVLOOP") != "1"
    factory = None
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            factory = uvloop.new_event_loop
    if factory is None:
        from crawler.session import small_tls_reads

        small_tls_reads()
    from crawler.errors import UsageError

    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            sys.exit(runner.run(_main()))
        except UsageError as exc:  # e.g. a --cacert it cannot read: one line, as the CLI
            sys.stderr.write(f"crawler: error: {exc}\n")
            sys.exit(2)


if __name__ == "__main__":
    main()
