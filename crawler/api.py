"""The Python API: ``crawler.fetch``, ``crawler.crawl`` and ``crawler.fetch_all``.

The same engine as the command line, fed from a Python (async) iterable and handing
``Record`` objects to the caller through a bounded channel (``ChannelSink``) instead of
writing JSON lines. Options have the command line's names (``--per-host-rps`` is
``per_host_rps``) and become a RunConfig through the same function as the command line's
(``crawler.options.run_config``): a bad value raises ``ConfigError`` when the call is
made, before anything runs.

Lifetime. ``async with crawler.fetch(...)`` starts the run in a task of its own; leaving
the block stops it the way a second Ctrl-C stops the CLI (intake stops, requests in
flight are cancelled, nothing waits on the consumer any more) and waits for it to end,
so no task, connection or child process outlives the block. No signal handler is
installed unless ``handle_signals=True``: the program's own Ctrl-C handling is left alone.
The run itself is built by ``crawler.runner``, as the command line's is.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Unpack

from crawler.config import ConfigError, RunConfig
from crawler.errors import UsageError
from crawler.inputs import Uncounted
from crawler.options import CrawlRun, FetchRun, run_config, run_controls
from crawler.records import Record

if TYPE_CHECKING:
    from crawler.recordsink import ChannelSink
    from crawler.runner import Runner

_BATCH: Final = 256  # URLs of a plain iterable handed to the engine's reader at a time
# What a state file of the API's records as its input (see crawler.runner.Runner): a
# Python iterable cannot be identified; a state file of a CLI run is refused.
_IDENTITY: Final = {"input": "(a Python iterable)"}


class InputFailed(Exception):  # noqa: N818 - a carrier, raised again as what it carries
    """The caller's iterable of URLs raised: carried through the engine (which would take
    an OSError for its output's) and raised to the caller as itself."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class IterSource(Uncounted):
    """The engine's ``Source`` for a Python iterable or async iterable of URL strings.

    Each string is one input line, read by the CLI's rules: surrounding whitespace is
    stripped, blank strings and ``#`` comments are skipped (so the lines of an open
    file can be given as they are). Read lazily, as the engine's reader asks: a
    generator of ten million URLs is never held in memory. An async iterable is handed
    on one URL at a time (when it would wait for its next one cannot be known).
    """

    def __init__(self, urls: Iterable[str] | AsyncIterable[str]) -> None:
        if isinstance(urls, str | bytes):
            raise TypeError("urls must be an iterable of URL strings, not a single string")
        if not isinstance(urls, Iterable | AsyncIterable):
            raise TypeError(f"urls must be an iterable of URL strings, got {type(urls).__name__}")
        self._urls = urls
        self.lines_total: int | None = None
        self.lines_read = 0
        self.eof = False

    @staticmethod
    def _lines(items: Iterable[object]) -> list[str]:
        lines = []
        for item in items:
            if not isinstance(item, str):
                raise InputFailed(TypeError(f"urls must be strings, got {item!r}"))
            line = item.strip()
            if line and not line.startswith("#"):
                lines.append(line)
        return lines

    async def batches(self) -> AsyncIterator[list[str]]:
        urls = self._urls
        if isinstance(urls, AsyncIterable):
            iterator = aiter(urls)
            try:
                while True:
                    try:
                        item = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        raise InputFailed(exc) from exc
                    lines = self._lines((item,))
                    if lines:
                        self.lines_read += 1
                        yield lines
            finally:
                # An async generator left unfinished would be closed later by the event
                # loop, in a task of its own: closed here, by the run that used it.
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
        else:
            lines_of = iter(urls)
            while True:
                try:
                    chunk = list(itertools.islice(lines_of, _BATCH))
                except Exception as exc:
                    raise InputFailed(exc) from exc
                if not chunk:
                    break
                lines = self._lines(chunk)
                if lines:
                    self.lines_read += len(lines)
                    yield lines
        self.lines_total = self.lines_read
        self.eof = True


class Records:
    """The records of a run, in the order they finish: ``async for rec in records``."""

    def __init__(self, channel: ChannelSink, run: Run) -> None:
        self._channel = channel
        self._run = run

    def __aiter__(self) -> Records:
        return self

    async def __anext__(self) -> Record:
        record = await self._channel.get()
        if record is None:
            await self._run.wait()  # the run's own failure, if any, is raised here
            raise StopAsyncIteration
        return record


class Run:
    """``async with`` a run of the engine; see ``fetch()`` and ``crawl()``."""

    def __init__(
        self,
        config: RunConfig,
        urls: Iterable[str] | AsyncIterable[str],
        *,
        state: str | None = None,
        handle_signals: bool = False,
    ) -> None:
        self._config = config
        self._source = IterSource(urls)
        self._state = state
        self._handle_signals = handle_signals
        self._runner: Runner | None = None
        self._channel: ChannelSink | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Records:
        if self._task is not None:
            raise RuntimeError("a crawler run can be entered only once")
        if self._handle_signals and threading.current_thread() is not threading.main_thread():
            raise ConfigError("handle_signals=True needs the main thread (signals go there)")
        from crawler.runner import Runner  # imported late: `import crawler` stays light

        runner = self._runner = Runner(
            self._config,
            self._source,
            state=self._state,
            identity=_IDENTITY,
            channel=True,
            handle_signals=self._handle_signals,
        )
        task = self._task = asyncio.create_task(runner.run(), name="crawler-run")
        made = asyncio.ensure_future(runner.made.wait())
        try:
            # The engine made its channel (its state file opened), or the run is over.
            await asyncio.wait([task, made], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait([task])
            raise
        finally:
            made.cancel()
        channel = self._channel = runner.channel
        if channel is None:
            await self._setup_failed()
            # Not raised above: the run was cancelled before it made its channel.
            raise RuntimeError("the run ended before it started")
        task.add_done_callback(lambda _: channel.end())
        if task.done():
            channel.end()
        return Records(channel, self)

    async def _setup_failed(self) -> None:
        """The run ended before it started: a state file refused (in use, another run's,
        not ours) is a ConfigError, raised by ``async with``; any other failure as itself."""
        try:
            await self.wait()
        except UsageError as exc:
            raise ConfigError(str(exc)) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        if exc is None:
            await self.wait()

    async def aclose(self) -> None:
        """Stop the run (if it still runs) and wait for it to end: intake stops, requests
        in flight are cancelled and nothing waits for the consumer any more."""
        task, runner = self._task, self._runner
        if task is None or runner is None or task.done():
            return
        if runner.opened:
            runner.engine.request_stop()  # stop taking URLs...
            runner.engine.request_stop()  # ...and cancel the requests in flight now
        else:
            task.cancel()  # not started yet: nothing to clean up
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            # Cancelled while waiting for the run to end: end it at once (it still gets to
            # close its session and files), then let the cancellation go on.
            task.cancel()
            await asyncio.wait([task])
            raise

    async def wait(self) -> None:
        """Wait for the run to end; raise what ended it, if it failed."""
        task = self._task
        if task is None:
            return
        await asyncio.wait([task])
        if task.cancelled():
            return
        failure = task.exception()
        if failure is None:
            return
        while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
            failure = failure.exceptions[0]  # one failure, raised as itself
        if isinstance(failure, InputFailed):
            raise failure.error
        raise failure


def _run(
    urls: Iterable[str] | AsyncIterable[str], options: Mapping[str, object], *, crawl: bool
) -> Run:
    """A Run of ``options`` (its RunControls apart, see ``crawler.options``): every value
    checked now, the files it writes as the command line's are."""
    from crawler.runner import check_run_paths

    rest, state, handle_signals = run_controls(options)
    config = run_config(rest, crawl=crawl)
    try:
        check_run_paths(config, state)  # the files it writes, as the command line's
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
    return Run(config, urls, state=state, handle_signals=handle_signals)


def fetch(urls: Iterable[str] | AsyncIterable[str], **options: Unpack[FetchRun]) -> Run:
    """Fetch every URL once; ``async with`` it for the records as they finish::

        async with crawler.fetch(urls, concurrency=200, per_host=4, timeout=10) as records:
            async for rec in records:
                ...

    ``urls``: any iterable or async iterable of URL strings (or JSON request lines, as
    the command line reads them), read lazily. ``options``: the
    ``crawler fetch`` options by their Python names; a bad value raises ``ConfigError``
    here. Duplicates are fetched once (unless ``no_dedup=True``); every URL, valid or not,
    gets exactly one record unless the run is left early.

    ``state="PATH"``: ``--state``'s resume file; a URL whose record the caller took is
    done, and the same call run again yields only the others. ``handle_signals=True``:
    SIGINT/SIGTERM stop the run as they stop the CLI (main thread only).
    """
    return _run(urls, options, crawl=False)


def crawl(seeds: Iterable[str] | AsyncIterable[str], **options: Unpack[CrawlRun]) -> Run:
    """Crawl from ``seeds``, following links in scope; like ``fetch()``, one record per
    page. ``options``: the ``crawler crawl`` options by their Python names (``depth=2``,
    ``max_pages=100``, ``scope="domain"``, ``ignore_robots=True``, ...)."""
    return _run(seeds, options, crawl=True)


def fetch_all(urls: Iterable[str], **options: Unpack[FetchRun]) -> list[Record]:
    """``fetch()`` for scripts and notebooks: run to the end, return every record.

    Runs its own event loop; where one already runs in this thread (a notebook), in a
    thread of its own."""
    run = _run(urls, options, crawl=False)

    async def collect() -> list[Record]:
        async with run as records:
            return [record async for record in records]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(collect())
    result: list[list[Record]] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(collect()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=main, name="crawler-fetch-all")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
