"""The Python API's run options (``state=``, ``handle_signals=``), and the one place a run
is built (``crawler.runner``): the CLI, the API and bench all go through it."""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from pathlib import Path

import pytest

import crawler
from crawler.errors import UsageError
from tests.conftest import Server, until
from tests.site import serve_site

ROOT = Path(__file__).resolve().parent.parent


async def _urls(run: crawler.api.Run, stop_after: int | None = None) -> list[str]:
    """The URLs of the run's records, in order; leaving the run after ``stop_after``."""
    seen = []
    async with run as records:
        async for rec in records:
            seen.append(rec.url)
            if stop_after is not None and len(seen) >= stop_after:
                break
    return seen


# -- state= ----------------------------------------------------------------------------------
async def test_state_resumes_a_run_left_early(server: Server, tmp_path: Path) -> None:
    urls = [server.url(f"/ok/{i}") for i in range(60)]
    state = tmp_path / "run.state"
    first = await _urls(crawler.fetch(urls, concurrency=4, state=state), stop_after=7)
    assert len(first) == 7
    # Only the URLs whose record the caller took are done: the ones fetched but still in
    # the channel, and the ones never started, come again; nothing taken comes twice.
    second = await _urls(crawler.fetch(urls, concurrency=4, state=str(state)))
    assert sorted(second) == sorted(set(urls) - set(first))
    assert len(second) == len(set(second))
    # Run to its end: every URL is done, a third run has nothing to fetch.
    hits = sum(server.rec.hits.values())
    assert await _urls(crawler.fetch(urls, state=state)) == []
    assert sum(server.rec.hits.values()) == hits


async def test_state_resumes_a_crawl_with_its_links(tmp_path: Path) -> None:
    async with serve_site(gen_size=40) as site:
        seed = site.url("/gen/0")
        state = tmp_path / "crawl.state"
        options = {"ignore_robots": True, "concurrency": 2, "state": state}
        first = await _urls(crawler.crawl([seed], **options), stop_after=5)  # type: ignore[arg-type]
        second = await _urls(crawler.crawl([seed], **options))  # type: ignore[arg-type]
        pages = await _urls(crawler.crawl([seed], ignore_robots=True))
    assert len(pages) > 40
    # Every page once, over the two runs: the links found by run 1's pages were kept.
    assert sorted(first + second) == sorted(pages)


async def test_records_taken_after_the_fetching_are_done_too(
    server: Server, tmp_path: Path
) -> None:
    """The run waits for the caller to take its last records before it commits them: a
    caller slower than the fetching loses no done mark."""
    urls = [server.url(f"/ok/late{i}") for i in range(30)]
    state = tmp_path / "run.state"
    run = crawler.fetch(urls, state=state)
    async with run as records:
        channel, task = run._channel, run._task
        assert channel is not None and task is not None
        await until(lambda: channel.records == len(urls))
        # Time for a run that did not wait for the caller to end (and commit without them).
        await asyncio.wait([task], timeout=0.3)
        assert not task.done()
        taken = [rec.url async for rec in records]
    assert sorted(taken) == sorted(urls)
    assert await _urls(crawler.fetch(urls, state=state)) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "is a directory"), ("missing/run.state", "no such directory")],
)
def test_a_bad_state_path_is_a_config_error(tmp_path: Path, name: str, reason: str) -> None:
    path = str(tmp_path / name) if name else str(tmp_path)
    with pytest.raises(crawler.ConfigError, match=reason) as caught:
        crawler.fetch(["http://127.0.0.1:9/"], state=path)
    assert path in str(caught.value)
    assert not isinstance(caught.value, UsageError)


def test_state_is_checked_like_the_options() -> None:
    with pytest.raises(crawler.ConfigError, match="state must be a path"):
        crawler.fetch([], state=3)  # type: ignore[typeddict-item]
    with pytest.raises(crawler.ConfigError, match="no_dedup"):
        crawler.fetch([], state="s.state", no_dedup=True)
    with pytest.raises(crawler.ConfigError, match="handle_signals must be bool"):
        crawler.fetch([], handle_signals="yes")  # type: ignore[typeddict-item]


async def test_a_state_file_not_ours_is_refused_by_async_with(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n" * 20)
    run = crawler.fetch(["http://127.0.0.1:9/"], state=path)
    with pytest.raises(crawler.ConfigError, match="not a crawler state file") as caught:
        async with run as records:
            async for _ in records:
                pass
    assert str(path) in str(caught.value)
    assert path.read_text() == "my notes\n" * 20


async def test_a_state_file_in_use_is_refused(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "run.state"
    hang = [server.url(f"/hang/{i}") for i in range(3)]
    async with crawler.fetch(hang, state=state) as records:
        other = crawler.fetch([server.url("/ok/x")], state=state)
        with pytest.raises(crawler.ConfigError, match="in use by another run") as caught:
            async with other:
                pass
        assert str(state) in str(caught.value)
        assert records
    assert server.rec.hits["/ok/x"] == 0


# -- handle_signals= -------------------------------------------------------------------------
async def test_no_signal_handler_unless_asked(server: Server) -> None:
    before = signal.getsignal(signal.SIGINT)
    urls = [server.url(f"/ok/{i}") for i in range(20)]
    async with crawler.fetch(urls, concurrency=2, handle_signals=False) as records:
        during = [signal.getsignal(signal.SIGINT) async for _ in records]
    assert len(during) == 20
    assert all(handler is before for handler in during)


async def test_handle_signals_installs_and_restores(server: Server) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    urls = [server.url("/ok/first"), *(server.url(f"/hang/{i}") for i in range(4))]
    seen = []
    run = crawler.fetch(urls, concurrency=1, grace=0.2, handle_signals=True)
    async with run as records:
        async for rec in records:
            seen.append(rec)
            assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
            assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
            if len(seen) == 1:
                # The run's handler, not KeyboardInterrupt: the run stops as the CLI's does.
                os.kill(os.getpid(), signal.SIGINT)
    assert seen[0].ok
    assert {rec.error.kind for rec in seen[1:] if rec.error} <= {"cancelled"}
    assert len(seen) == len(urls)
    assert {sig: signal.getsignal(sig) for sig in before} == before


# -- one construction path -------------------------------------------------------------------
def test_an_engine_is_made_in_one_place() -> None:
    """The CLI, the API and bench build their run through ``crawler.runner``."""
    made = []
    for path in sorted((ROOT / "crawler").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "Engine":
                    made.append(path.relative_to(ROOT).as_posix())
    assert made == ["crawler/runner.py"]
