"""Attacks on crawl mode's resource bounds (issue 12, second attacker): pages small enough
to be parsed inline that make lexbor's work explode, and the parser child's memory.

Real servers on loopback, the CLI as a subprocess; bounds are generous (the bugs here are
a blocked loop and gigabytes, not milliseconds)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from yarl import URL

from crawler.config import CrawlConfig
from crawler.following import _PARSER_MEMORY, Crawl, _shallow
from crawler.response import Response
from crawler.robots import RobotsCache
from crawler.stats import Stats
from crawler.stores import MemoryQueue, MemorySeen
from tests.conftest import pipe_full


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1, a port of its own; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _rebuilt(n: int) -> bytes:
    """``n`` formatting elements left open (distinct attributes, so the parser keeps them
    all), then ``n`` paragraphs: each one rebuilds every one of them (n*n elements)."""
    return b"<p>" + b"".join(b"<b/%d>" % i for i in range(n)) + b"<p>x" * n


def _alloc(n: int) -> int:
    return len(bytearray(n))


def test_rebuilt_formatting_elements_are_not_parsed_inline() -> None:
    # 2,000 of each: 21 KB, well under the inline size, but 4 million elements (3 s, 1.5 GB).
    assert not _shallow(_rebuilt(2000))
    # Ordinary pages stay inline: many links, some formatting, moderate nesting.
    page = b'<div class="x"><a href="/a">a</a> <b>b</b> <span>s</span></div>\n' * 400
    page += b'<i class="icon">i</i>' * 80
    assert _shallow(page)
    assert _shallow(b"<ul>" + b"<li><a href=/x>x</a></li>" * 2000 + b"</ul>")


async def test_parser_child_memory_is_bounded() -> None:
    crawl = Crawl(
        CrawlConfig(parse_timeout=60.0),
        seen=MemorySeen(),
        queue=MemoryQueue(10),
        stats=Stats(time.monotonic),
    )
    try:
        with pytest.raises(MemoryError):
            await crawl._pages.call(_alloc, _PARSER_MEMORY + (1 << 30))
        # The child is still usable (or replaced) for the next page.
        assert await crawl._pages.call(_alloc, 1 << 20) == 1 << 20
    finally:
        crawl.close()


@pytest.mark.timeout(180)
async def test_crawl_of_rebuilding_pages_keeps_the_crawler_small(tmp_path: Path) -> None:
    n = 1200  # 1.4 million elements a page: ~500 MB in whichever process parses it
    attack = _rebuilt(n)

    async def root(request: web.Request) -> web.Response:
        links = b"".join(b'<a href="/evil/%d">x</a>' % i for i in range(3))
        return web.Response(body=links, content_type="text/html")

    async def evil(request: web.Request) -> web.Response:
        return web.Response(body=attack, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_get("/evil/{n}", evil)
    stats = tmp_path / "stats.json"
    async with serve(app) as base:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crawler",
            "crawl",
            base + "/",
            "--ignore-robots",
            "-q",
            "-o",
            str(tmp_path / "out.jsonl"),
            "--stats-json",
            str(stats),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 0, err
    summary = orjson.loads(stats.read_bytes())
    assert summary["urls_done"] == 4
    # Parsed inline, the crawler itself grew by ~500 MB; in the child it stays small.
    assert summary["peak_rss_mib"] < 300, summary


async def test_robots_check_of_a_long_url_against_many_wildcards_is_bounded() -> None:
    # 500 KiB of wildcard rules and a 60 KB link: protego scans the URL once per '*', which
    # took seconds per URL on the event loop (a --max-time 10 crawl ran 28 s).
    rules = b"".join(b"Disallow: /*%d*z$\n" % i for i in range(40_000))[: 500 * 1024]
    text = b"User-agent: *\n" + rules.rpartition(b"\n")[0] + b"\nDisallow: /private\n"

    async def fetch(url: URL) -> Response:
        return Response(200, str(url), "text/plain", len(text), body=text)

    cache = RobotsCache(fetch, ttl=60.0, clock=lambda: 0.0)
    robots = await cache.rules(URL("http://127.0.0.1:9/"))
    long_url = "http://127.0.0.1:9/" + "a" * 60_000
    # Too costly to check (it was checked, for seconds, and allowed): not fetched.
    assert not robots.allows(long_url, "crawler")
    # Ordinary URLs are still checked against the rules.
    assert robots.allows("http://127.0.0.1:9/page", "crawler")
    assert not robots.allows("http://127.0.0.1:9/private/x", "crawler")


@pytest.mark.timeout(120)
async def test_page_past_the_parser_memory_is_a_parse_error() -> None:
    # 4,000 of each: 16 million elements, ~6 GB. At the child's limit lexbor fails: that
    # page's links are unknown (a parse error), not "none" (it was taken as a page without
    # links, uncounted).
    crawl = Crawl(
        CrawlConfig(parse_timeout=60.0),
        seen=MemorySeen(),
        queue=MemoryQueue(10),
        stats=Stats(time.monotonic),
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the child reports
            await crawl.page_links("http://127.0.0.1:9/", _rebuilt(4000) + b"<a href=/x>x</a>")
        # The next page (in a new child, or the same one) is read.
        found = await crawl.page_links("http://127.0.0.1:9/", b"<a href=/y>y</a>" * 5000)
        assert found.total == 5000
    finally:
        crawl.close()


@pytest.mark.timeout(180)
async def test_max_pages_reached_does_not_wait_for_a_slow_sitemap(tmp_path: Path) -> None:
    # robots.txt names a sitemap that never finishes; --max-pages is reached by the seed
    # alone. The run waited for the sitemap until --timeout (here 600 s), though no URL of
    # it could be admitted any more.
    release = asyncio.Event()

    async def robots(request: web.Request) -> web.Response:
        return web.Response(text=f"Sitemap: {request.url.origin()}/slow.xml\n")

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"<urlset>")
        await release.wait()
        return resp

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="<html>no links</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/slow.xml", slow)
    app.router.add_get("/", root)
    stats = tmp_path / "stats.json"
    async with serve(app) as base:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crawler",
            "crawl",
            base + "/",
            "--sitemaps",
            "--max-pages",
            "1",
            "--timeout",
            "600",
            "-q",
            "-o",
            str(tmp_path / "out.jsonl"),
            "--stats-json",
            str(stats),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 90)
        finally:
            release.set()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err
    assert orjson.loads(stats.read_bytes())["urls_done"] == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT,)])
async def test_stop_with_stdout_and_stderr_in_one_unread_pipe(
    tmp_path: Path, signals: tuple[int, ...]
) -> None:
    # `crawler fetch urls 2>&1 | reader-that-stalls`: stdout shares its open file with stderr,
    # so it stays blocking, and was written from a thread that blocked in write() for ever:
    # no signal (nor --max-time) ended the run, only SIGKILL.
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100)

    app = web.Application()
    app.router.add_get("/{n}", page)
    async with serve(app) as base:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/{n}?{'p' * 300}\n" for n in range(3000)))
        rfd, wfd = os.pipe()
        probe = os.dup(wfd)  # never written: polled for room
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "crawler",
                "fetch",
                str(urls),
                "--grace",
                "1",
                stdin=subprocess.DEVNULL,
                stdout=wfd,
                stderr=wfd,
            )
            os.close(wfd)
            wfd = -1
            try:
                deadline = asyncio.get_running_loop().time() + 60
                while not pipe_full(probe):  # the writer is stuck
                    assert asyncio.get_running_loop().time() < deadline, "pipe never filled"
                    assert proc.returncode is None
                    await asyncio.sleep(0.05)
                for sig in signals:
                    proc.send_signal(sig)
                    await asyncio.sleep(0.1)
                # Grace 1 s, then at most --grace more for the final flush: generous bound.
                assert await asyncio.wait_for(proc.wait(), 60) == 130
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        finally:
            os.close(probe)
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)


@pytest.mark.timeout(180)
async def test_output_fifo_unread_or_unopened_does_not_hang(tmp_path: Path) -> None:
    # `-o FIFO`: opened by a thread, a FIFO nobody opened blocked open() for ever; one
    # nobody reads blocked write() for ever; no signal ended either run.
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x" * 100)

    app = web.Application()
    app.router.add_get("/{n}", page)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    async with serve(app) as base:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"{base}/{n}?{'p' * 300}\n" for n in range(3000)))
        args = [sys.executable, "-m", "crawler", "fetch", str(urls), "--grace", "1"]

        alone = await asyncio.create_subprocess_exec(
            *args, "-o", str(fifo), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(alone.communicate(), 60)
        finally:
            if alone.returncode is None:
                alone.kill()
                await alone.wait()
        assert alone.returncode == 2
        assert b"no process reads" in err

        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
        probe = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # never written: polled for room
        try:
            proc = await asyncio.create_subprocess_exec(
                *args, "-o", str(fifo), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                deadline = asyncio.get_running_loop().time() + 60
                while not pipe_full(probe):  # the writer is stuck
                    assert asyncio.get_running_loop().time() < deadline, "fifo never filled"
                    assert proc.returncode is None
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 60) == 130
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        finally:
            os.close(probe)
            os.close(rfd)


@pytest.mark.timeout(120)
async def test_stats_json_fifo_nobody_opens_does_not_hang(tmp_path: Path) -> None:
    # Path.write_bytes on a FIFO nobody opens waits for ever, after the run.
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{n}", page)
    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    async with serve(app) as base:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{base}/1\n")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "crawler", "fetch", str(urls), "-q"),
            *("-o", str(tmp_path / "out.jsonl"), "--stats-json", str(fifo)),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 2
    assert err.startswith(b"crawler: error: cannot write --stats-json") and err.count(b"\n") == 1
    assert (tmp_path / "out.jsonl").read_bytes().count(b"\n") == 1
