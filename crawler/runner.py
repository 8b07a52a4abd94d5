"""One run of the engine, whoever asked for it: the command line (``crawler.cli.run``),
the Python API (``crawler.api``) and ``crawler bench`` all build it here, from a RunConfig
and a Source: the state store (``--state`` / ``state=``), where the records go (the
output's bytes, or the API's channel) and the engine: the one place an Engine is made.

What is the caller's stays with it: the command line's path checks, progress console,
summary and exit status; the API's lifetime (``async with``) and its records.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from crawler.config import ConfigError
from crawler.paths import Named, Place, check_distinct, check_places, session_places, state_places

if TYPE_CHECKING:
    from rich.console import Console

    from crawler.attempts import Fetches
    from crawler.config import RunConfig, SinkConfig
    from crawler.engine import RunResult
    from crawler.fetcher import Fetcher
    from crawler.inputs import Source
    from crawler.recordsink import ChannelSink, RecordSink, SinkFactory, SinkHooks
    from crawler.state import StateStore
    from crawler.stores import Ledger, Stores


def check_run_paths(config: RunConfig, state: str | None) -> None:
    """The checks the command line gives the files a run writes (``crawler.paths``), for
    a run whose records are no file (the Python API's): ``state`` (a directory, a missing
    directory), ``warc``, ``save_dir``, ``cookie_jar`` and ``etags`` each writable where
    it is and no two of them one file; each problem a ``UsageError`` naming the path. The
    files' own checks (ours? this run's? in use?) are made when the run opens them."""
    named, places = state_places(state) if state is not None else ([], [])
    if config.store.warc is not None:
        places.append(Place("write --warc", config.store.warc))
    if config.store.save_dir is not None:
        places.append(Place("use --save-dir", config.store.save_dir, directory=True))
    for option, path in (
        ("--cookie-jar", config.fetch.cookie_jar),
        ("--etags", config.fetch.etags),
    ):
        if path is not None:
            named.append(Named(option, path))
            places += session_places(option, path)
    check_distinct([], named, warc=config.store.warc, save_dir=config.store.save_dir)
    check_places(places)


class Runner:
    """The engine of one run and what it is built with.

    ``identity``: what identifies the input for ``state`` (a resumed run must have the
    same); the mode, the output and the method are added here. ``channel``: the records
    go to a ``ChannelSink`` (``self.channel``), not to ``config.sink``'s output.
    ``handle_signals``: the engine handles SIGINT/SIGTERM (a first one stops intake, a
    second ends the run) and puts the handlers it replaced back at the end.
    """

    def __init__(
        self,
        config: RunConfig,
        source: Source,
        *,
        state: str | None = None,
        identity: Mapping[str, Any] | None = None,
        channel: bool = False,
        handle_signals: bool = False,
        progress: Console | None = None,
        progress_interval: float = 5.0,
        notice: Callable[[], None] | None = None,
        stores: Stores | None = None,
        sink: SinkFactory | None = None,
        gate: Callable[[Fetcher], Fetches] | None = None,
    ) -> None:
        from crawler.engine import Engine  # imported late: keeps `crawler --help` fast

        self.store: StateStore | None = None
        if state is not None:
            from crawler.state import StateStore

            output = config.sink.output
            mode = "fetch" if config.crawl is None else "crawl"
            self.store = StateStore(
                state,
                {
                    **({"mode": "crawl"} if config.crawl is not None else {}),
                    **(identity or {}),
                    "output": os.path.abspath(output) if output is not None else None,
                    "method": config.fetch.method,
                },
                owner=f"crawler {mode}",
            )
        # None: the engine's, in memory (a worker of --workers N brings its own)
        if self.store is not None:
            from crawler.state import resumable

            stores = resumable(self.store, queue_memory=config.limits.queue_size)
        self._to_channel = channel
        # Made by the engine once its ledger is open (a state file refused fails before).
        self.channel: ChannelSink | None = None
        self.opened = False  # the engine has its sink: it can be told to stop
        self.made = asyncio.Event()
        if config.workers > 1:
            from crawler.coordinator import Coordinator
            from crawler.stores import memory

            if channel:
                raise ConfigError("workers > 1 writes to an output, not to a channel yet")
            dedup = config.input.dedup
            self.engine: Engine | Coordinator = Coordinator(
                config,
                source,
                stores or memory(dedup=dedup, queue_memory=config.limits.queue_size),
                handle_signals=handle_signals,
                progress=progress,
                progress_interval=progress_interval,
            )
            return
        self.engine = Engine(
            config,
            source,
            progress=progress,
            progress_interval=progress_interval,
            install_signal_handlers=handle_signals,
            stores=stores,
            notice=notice,
            sink=sink or self._sink,
            gate=gate,
        )

    def _sink(self, config: SinkConfig, ledger: Ledger, hooks: SinkHooks) -> RecordSink:
        self.opened = True
        self.made.set()
        if self._to_channel:
            from crawler.recordsink import ChannelSink

            self.channel = ChannelSink(ledger, hooks, config.checkpoint_interval)
            return self.channel
        from crawler.sink import Sink

        return Sink(config, ledger, hooks)

    async def run(self) -> RunResult:
        return await self.engine.run()
