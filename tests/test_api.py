"""The Python API: ``crawler.fetch`` / ``crawl`` / ``fetch_all``, against real local servers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.resources
import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

import crawler
from crawler import api
from crawler.records import encode
from crawler.recordsink import CHANNEL_SIZE, ChannelSink
from tests.conftest import Server, until
from tests.site import A, B, serve_site

ROOT = Path(__file__).resolve().parent.parent


def _others() -> set[asyncio.Task[Any]]:
    """Tasks other than the test's own and its servers' (aiohttp.web, on the same loop)."""
    return {
        task
        for task in asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]
        if not task.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    }


async def _settled() -> None:
    """Garbage that would warn (an unclosed session, an async generator never closed) warns
    now, inside the test, where warnings are errors."""
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()


# -- the public surface ---------------------------------------------------------------------
def test_public_names_are_few_and_pinned() -> None:
    assert sorted(crawler.__all__) == [
        "ConfigError",
        "CrawlerError",
        "Error",
        "ErrorKind",
        "Record",
        "__version__",
        "crawl",
        "fetch",
        "fetch_all",
    ]
    for name in crawler.__all__:
        assert getattr(crawler, name) is not None
    assert issubclass(crawler.ConfigError, crawler.CrawlerError)
    assert issubclass(crawler.ConfigError, ValueError)
    assert crawler.ErrorKind("dns") is crawler.ErrorKind.DNS


def test_crawl_names_the_function_and_no_submodule_shadows_it() -> None:
    import crawler.following  # the engine imports it for a crawl

    assert crawler.crawl is api.crawl
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("crawler.crawl")


def test_every_fetch_error_kind_is_an_error_kind() -> None:
    from crawler import errors

    def leaves(cls: type[errors.FetchError]) -> Iterator[type[errors.FetchError]]:
        for sub in cls.__subclasses__():
            yield sub
            yield from leaves(sub)

    kinds = {cls.kind for cls in leaves(errors.FetchError)}
    assert kinds == {kind.value for kind in crawler.ErrorKind}


def test_py_typed_ships() -> None:
    assert importlib.resources.files("crawler").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["crawler"]


def test_import_crawler_stays_light() -> None:
    """Nothing heavy comes with the package: the CLI defers stop signals first (__main__)."""
    heavy = "('orjson', 'aiohttp', 'crawler.engine', 'crawler.api')"
    code = f"import sys, crawler; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": "8"},
        {"per_host": -1},
        {"per_host_rps": float("nan")},
        {"timeout": True},
        {"retries": 1.5},
        {"method": "BAD METHOD"},
        {"header": ["X-A value"]},
        {"header": {"X-A": "a\r\nInjected: 1"}},
        {"header": {"Content-Length": "1"}},
        {"user_agent": "a\nb"},
        {"resolve": ["nonsense"]},
        {"breaker_cooldown": 0},
    ],
)
def test_a_bad_option_value_raises_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(crawler.ConfigError):
        crawler.fetch([], **options)
    with pytest.raises(crawler.ConfigError):
        crawler.fetch_all([], **options)


def test_crawl_option_values_are_checked_too() -> None:
    for options in ({"depth": -1}, {"scope": "planet"}, {"include": ["("]}, {"max_pages": 0}):
        with pytest.raises(crawler.ConfigError):
            crawler.crawl([], **options)  # type: ignore[arg-type]


def test_an_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="depth"):
        crawler.fetch([], depth=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="output"):
        crawler.crawl([], output="x.jsonl")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        crawler.fetch("https://example.org/")  # one string is not a list of URLs


def test_options_map_onto_the_config_slices() -> None:
    config = api.run_config(
        {
            "per_host_rps": 2,
            "insecure": True,
            "no_dedup": True,
            "header": {"X-A": " b "},
            "grace": 1,
        },
        crawl=False,
    )
    assert config.limits.per_host_rps == 2.0 and config.limits.concurrency == 64
    assert config.fetch.verify_tls is False and config.input.dedup is False
    assert config.fetch.headers == (("X-A", "b"),) and config.grace == 1.0
    crawl = api.run_config(
        {"depth": 2, "ignore_robots": True, "sitemap": ["http://a/s"]}, crawl=True
    )
    assert crawl.crawl is not None
    assert crawl.crawl.max_depth == 2 and crawl.crawl.obey_robots is False
    assert crawl.crawl.sitemaps is True


# -- fetching --------------------------------------------------------------------------------
async def test_fetch_gives_one_typed_record_per_distinct_url(server: Server) -> None:
    ok = [server.url(f"/ok/{i}") for i in range(20)]
    urls = [*ok, ok[0], server.url("/status/404"), "not a url", "  ", "# a comment"]
    async with crawler.fetch(urls, concurrency=8, per_host=4, timeout=10) as records:
        got = [rec async for rec in records]
    assert all(isinstance(rec, crawler.Record) for rec in got)
    by_url = {rec.url: rec for rec in got}
    assert len(got) == len(by_url) == 22
    assert by_url[ok[3]].ok and by_url[ok[3]].status == 200 and by_url[ok[3]].error is None
    missing = by_url[server.url("/status/404")]
    assert missing.error is not None and missing.error.kind is crawler.ErrorKind.HTTP
    assert isinstance(missing.error, crawler.Error) and missing.status == 404
    invalid = by_url["not a url"].error
    assert invalid is not None and invalid.kind == "invalid_url"
    assert sum(server.rec.hits.values()) == 21
    assert not _others()


async def test_to_json_is_the_cli_line(server: Server, tmp_path: Path) -> None:
    urls = [server.url("/ok/1"), server.url("/status/404"), "not a url"]
    async with crawler.fetch(urls) as records:
        got = {rec.url: rec for rec in [r async for r in records]}
    for rec in got.values():
        assert (rec.to_json() + "\n").encode() == encode(rec)  # what the CLI's sink writes
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crawler", "fetch", str(src), "-q", stdout=subprocess.PIPE
    )
    out, _ = await cli.communicate()
    lines = {orjson.loads(line)["url"]: line for line in out.splitlines()}
    assert set(lines) == set(got)
    for url, line in lines.items():
        mine = got[url].to_json()
        # The same record, down to the key order and the error's shape; only the times differ.
        timeless = re.compile(rb'"(elapsed_ms|fetched_at)":[^,]*,')
        assert timeless.sub(b"", line) == timeless.sub(b"", mine.encode())


async def test_urls_from_an_async_generator_lazily(server: Server) -> None:
    pulled = 0
    closed = asyncio.Event()

    async def urls() -> AsyncIterator[str]:
        nonlocal pulled
        try:
            for i in range(10_000):
                pulled += 1
                yield server.url(f"/ok/{i}")
        finally:
            closed.set()

    async with crawler.fetch(urls(), concurrency=2, queue_size=10) as records:
        async for _ in records:
            break
    # Read as the frontier had room, not all at once; closed by the run that read it.
    assert pulled < 1000
    assert closed.is_set()
    await _settled()
    assert not _others()


async def test_a_sync_generator_is_read_lazily(server: Server) -> None:
    pulled = 0

    def urls() -> Iterator[str]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield server.url(f"/ok/{i}")

    async with crawler.fetch(urls(), concurrency=2, queue_size=10) as records:
        async for _ in records:
            break
    assert pulled < 5000


async def test_no_signal_handler_is_installed(server: Server) -> None:
    from crawler.signals import STOP_SIGNALS

    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    async with crawler.fetch([server.url("/ok/1"), server.url("/ok/2")]) as records:
        async for _ in records:
            assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


# -- leaving early ---------------------------------------------------------------------------
async def test_break_stops_the_run_and_leaves_nothing_behind(server: Server) -> None:
    urls = [server.url("/ok/first")] + [server.url(f"/hang/{i}") for i in range(50)]
    async with crawler.fetch(urls, concurrency=8) as records:
        async for rec in records:
            assert rec.url == urls[0]
            await until(lambda: sum(server.rec.hits.values()) >= 5)  # requests in flight
            break
    assert not _others()
    await _settled()
    assert not _others()


async def test_an_exception_in_the_block_goes_through_and_stops_the_run(server: Server) -> None:
    urls = [server.url("/ok/first")] + [server.url(f"/hang/{i}") for i in range(50)]
    with pytest.raises(KeyError, match="mine"):
        async with crawler.fetch(urls, concurrency=8) as records:
            async for _ in records:
                await until(lambda: sum(server.rec.hits.values()) >= 5)
                raise KeyError("mine")
    assert not _others()
    await _settled()


async def test_cancelling_the_consumer_stops_the_run(server: Server) -> None:
    urls = [server.url(f"/hang/{i}") for i in range(20)]
    waiting = asyncio.Event()

    async def consume() -> None:
        async with crawler.fetch(urls, concurrency=4) as records:
            waiting.set()
            async for _ in records:
                pass

    task = asyncio.create_task(consume())
    await waiting.wait()
    await until(lambda: sum(server.rec.hits.values()) >= 4)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _others()
    await _settled()


async def test_leaving_before_the_run_started(server: Server) -> None:
    async with crawler.fetch([server.url("/ok/1")]):
        pass  # not a single await inside: the run's task never ran
    assert not _others()
    assert not server.rec.hits


async def test_a_failing_input_iterable_raises_its_own_error(server: Server) -> None:
    def urls() -> Iterator[str]:
        yield server.url("/ok/1")
        raise OSError("input went away")

    with pytest.raises(OSError, match="input went away"):
        async with crawler.fetch(urls()) as records:
            async for _ in records:
                pass
    assert not _others()
    with pytest.raises(TypeError, match="must be strings"):
        async with crawler.fetch([server.url("/ok/2"), b"http://127.0.0.1/"]) as records:  # type: ignore[list-item]
            async for _ in records:
                pass


# -- backpressure ----------------------------------------------------------------------------
async def test_a_slow_consumer_holds_the_run_back() -> None:
    """Records wait in a bounded channel: while the consumer does not read, the engine
    stops fetching (at most one record more per worker than the channel holds)."""
    hits = 0

    async def ok(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    total, workers = 1500, 4
    try:
        run = crawler.fetch(
            (f"http://127.0.0.1:{port}/{i}" for i in range(total)), concurrency=workers
        )
        async with run as records:
            first = await anext(records)
            channel = run._channel
            assert isinstance(channel, ChannelSink) and run._runner is not None
            engine = run._runner.engine
            await until(
                lambda: len(channel._items) >= CHANNEL_SIZE and engine.stats.gauges.in_flight() == 0
            )
            assert hits == 1 + len(channel._items) <= 1 + CHANNEL_SIZE + workers
            rest = [rec async for rec in records]
        assert len({first.url, *(rec.url for rec in rest)}) == total == hits
    finally:
        await runner.cleanup()


# -- crawling --------------------------------------------------------------------------------
async def test_crawl_follows_links_in_scope_to_the_depth_asked() -> None:
    async with serve_site(crawl_delay=0.01) as site:
        async with crawler.crawl([site.url("/")], depth=1) as pages:
            got = [rec async for rec in pages]
        depths = {rec.url: rec.depth for rec in got}
        assert depths[site.url("/")] == 0
        assert depths[site.url("/a")] == 1 and site.url("/a/deep") not in depths
        assert max(depths.values()) == 1
        assert site.hosts_hit() == {A}  # B is out of scope
        robots = [
            r for r in got if r.error is not None and r.error.kind is crawler.ErrorKind.ROBOTS
        ]
        assert [r.url for r in robots] == [site.url("/private/secret")]
    assert crawler.crawl is api.crawl
    await _settled()
    assert not _others()
    assert B  # the other host exists, and was not touched


async def test_leaving_a_crawl_early() -> None:
    async with serve_site(gen_size=100_000) as site:
        async with crawler.crawl([site.url("/gen/0")], ignore_robots=True) as pages:
            async for rec in pages:
                if rec.depth >= 3:
                    break
        assert not _others()
    await _settled()


# -- fetch_all and the README ----------------------------------------------------------------
@contextlib.contextmanager
def _threaded(make: Callable[[], contextlib.AbstractAsyncContextManager[Any]]) -> Iterator[Any]:
    """An async server context run on an event loop of its own, in a thread: for code
    that blocks the caller's loop (``fetch_all``) or runs in another process."""
    ready: list[Any] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        async with make() as served:
            ready.append(served)
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    try:
        assert started.wait(30)
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


@contextlib.asynccontextmanager
async def _plain_server() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        if request.path.startswith("/missing"):
            return web.Response(status=404, text="no")
        return web.Response(text="<html>ok</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def test_fetch_all_in_a_script() -> None:
    with _threaded(_plain_server) as base:
        recs = crawler.fetch_all([f"{base}/a", f"{base}/missing"], retries=0)
    assert sorted((r.url.removeprefix(base), r.status, r.ok) for r in recs) == [
        ("/a", 200, True),
        ("/missing", 404, False),
    ]


def test_fetch_all_where_a_loop_already_runs() -> None:
    """A notebook: the cell's code runs inside a running event loop."""
    with _threaded(_plain_server) as base:

        async def cell() -> list[crawler.Record]:
            return crawler.fetch_all([f"{base}/a"])

        recs = asyncio.run(cell())
    assert [r.status for r in recs] == [200]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_readme_example_runs() -> None:
    code = _readme_example()
    assert "crawler.fetch(urls, concurrency=200, per_host=4, timeout=10)" in code
    assert 'crawler.crawl(["https://docs.example.org/"], depth=2)' in code
    assert "crawler.fetch_all(urls, retries=0)" in code
    with _threaded(_plain_server) as base, _threaded(serve_site) as site:
        code = code.replace("https://docs.example.org", site.url("").rstrip("/"))
        code = code.replace("https://example.org", base)
        env = {**os.environ, "PYTHONWARNINGS": "error"}
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    assert not out.stderr
    lines = out.stdout.splitlines()
    assert f"{base}/ None False invalid_url".replace(f"{base}/ ", "not a url ") in lines
    assert f"{base}/ 200 True None" in lines
    assert f"{base}/missing 404 False http" in lines
    assert f"0 {site.url('/')} 200" in lines
    assert f"1 {site.url('/a')} 200" in lines
    assert f"2 {site.url('/a/deep')} 200" in lines
    assert not any(line.startswith("3 http") for line in lines)  # depth 2 at most
    count, first = lines[-1].split(" ", 1)
    assert count == "3" and orjson.loads(first)["url"] in (
        f"{base}/",
        f"{base}/missing",
        "not a url",
    )
