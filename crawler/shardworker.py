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
from typing import Any, Final

from crawler import shards
from crawler.config import RunConfig, SinkConfig
from crawler.crawling import Crawling
from crawler.engine import Engine
from crawler.errors import InvalidURL
from crawler.recordsink import SinkHooks
from crawler.shardio import Channel, PipeSink, PipeSource, RemoteSeen, ShardQueue, StandInLedger
from crawler.stores import Ledger, MemoryQueue, Stores

PARENT_ENV: Final = "CRAWLER_COORDINATOR_PID"  # set by crawler.shardproc.start
_STATS_INTERVAL: Final = 0.25  # seconds between the worker's statistics reports


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
    stores = Stores(seen, StandInLedger(setup["durable"], setup["resumed"]), queue)
    scope: list[str] = []  # seeds of other workers, until the crawl exists
    finished = False  # crawl: the coordinator said every worker is idle
    told = -1  # links received when this worker last said it was idle
    ready = False  # the run's parts exist
    engine: Engine  # made below, with make_sink

    def may_end() -> bool:
        """Idle here: say so (once per batch of links received, after the records still
        here: if they must wait for their bodies, the sink wakes us when they are sent);
        end if told to."""
        nonlocal told
        if not finished and told != links.received and sink.send_now():
            told = links.received
            channel.send(shards.count_frame(shards.IDLE, told))
        return finished

    def make_sink(cfg: SinkConfig, ledger: Ledger, hooks: SinkHooks) -> PipeSink:
        nonlocal ready
        ready = True
        sink.hooks(hooks, ledger.durable, wake)
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
            url, host = shards.target_of(line)
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
