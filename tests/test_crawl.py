"""Crawl mode end to end, in-process, against the test site in tests/site.py."""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from crawler.config import CrawlConfig, StoreConfig
from crawler.engine import Engine, RunResult
from crawler.inputs import SeedSource
from tests.conftest import make_config, read_records
from tests.site import EXPECTED_PATHS, A, B, Site, serve_site


async def run_crawl(
    tmp_path: Path, seeds: list[str], **kw: Any
) -> tuple[RunResult, list[dict[str, Any]]]:
    crawl = {k: kw.pop(k) for k in list(kw) if k in CrawlConfig.__struct_fields__}
    store = {k: kw.pop(k) for k in list(kw) if k in StoreConfig.__struct_fields__}
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = make_config(tmp_path, crawl=CrawlConfig(**crawl), store=StoreConfig(**store), **kw)
    engine = Engine(config, SeedSource(seeds, []), install_signal_handlers=False)
    result = await engine.run()
    return result, read_records(tmp_path / "out.jsonl")


def paths(site: Site, records: list[dict[str, Any]]) -> list[str]:
    prefix = site.url("")
    assert all(r["url"].startswith(prefix) for r in records), "a record left the scope"
    return [r["url"][len(prefix) :] for r in records]


async def test_crawl_finds_exactly_the_site_and_obeys_robots(tmp_path: Path) -> None:
    async with serve_site() as site:
        started = time.monotonic()
        result, records = await run_crawl(tmp_path, [site.url("/")], concurrency=4)
    found = paths(site, records)
    assert sorted(found) == sorted(EXPECTED_PATHS)  # each exactly once
    by = dict(zip(found, records, strict=True))
    assert by["/private/secret"]["error"]["kind"] == "robots"
    assert by["/private/secret"]["attempts"] == 0
    assert by["/missing"]["error"]["kind"] == "http" and by["/missing"]["status"] == 404
    assert by["/redir-in"]["final_url"] == site.url("/c")
    assert by["/redir-out"]["status"] == 302 and by["/redir-out"]["ok"] is True
    assert by["/"]["depth"] == 0 and by["/"]["parent"] is None
    assert by["/a"]["depth"] == 1 and by["/a"]["parent"] == site.url("/")
    assert by["/a/deep"]["depth"] == 2 and by["/a/deep"]["parent"] == site.url("/a")
    assert by["/page2"]["depth"] == 4  # / -> /a -> /a/deep -> /base/... -> link rel=next
    # Never requested: another host, robots-disallowed, nofollow'd, sitemaps (not asked).
    assert site.hosts_hit() == {A}
    for path in ("/private/secret", "/nofollow-target", "/never", "/sitemap_index.xml"):
        assert site.hits[f"{A}{path}"] == 0, path
    assert site.hits[f"{A}/robots.txt"] == 1  # once, though 4 workers asked at once
    assert result.snapshot.crawl is not None and result.snapshot.crawl["robots_fetched"] == 1
    # Crawl-delay 0.2 s, on the server's own clock. The pacer gives the k-th page request a
    # slot >= the crawl's start + k * 0.2 s and no request reaches the server before its
    # slot, so the k-th arrival is never earlier than that: a loaded machine only delays
    # arrivals (gaps between neighbours would not do: one late arrival bunches with the
    # next), while unpaced requests come all at once. (A redirect hop belongs to its URL's
    # request: /c is not paced apart from /redir-in.)
    starts = sorted(t for t, _, p in site.times if p not in ("/robots.txt", "/c"))
    assert len(starts) == 10
    for k, t in enumerate(starts):
        assert t >= started + k * 0.2 - 0.02, (k, t - started)


async def test_ignore_robots_follows_everything_in_scope(tmp_path: Path) -> None:
    async with serve_site(crawl_delay=5.0) as site:
        _, records = await run_crawl(tmp_path, [site.url("/")], obey_robots=False)
    found = set(paths(site, records))
    assert found == EXPECTED_PATHS | {"/nofollow-target", "/never"}
    assert next(r for r in records if r["url"].endswith("/private/secret"))["ok"] is True
    assert site.hits[f"{A}/robots.txt"] == 0


async def test_sitemaps_from_robots_become_seeds(tmp_path: Path) -> None:
    async with serve_site(crawl_delay=0.01) as site:
        _, records = await run_crawl(tmp_path, [site.url("/")], sitemaps=True)
    found = paths(site, records)
    assert sorted(found) == sorted(EXPECTED_PATHS | {"/from-sitemap"})
    rec = next(r for r in records if r["url"].endswith("/from-sitemap"))
    assert rec["parent"] == site.url("/sitemap1.xml.gz") and rec["depth"] == 0
    assert site.hits[f"{A}/sitemap_index.xml"] == 1 and site.hits[f"{A}/sitemap1.xml.gz"] == 1
    assert site.hosts_hit() == {A}  # the sitemap's URL on host B is out of scope


async def test_explicit_sitemap_without_robots(tmp_path: Path) -> None:
    async with serve_site() as site:
        _, records = await run_crawl(
            tmp_path,
            [],
            sitemap_urls=(site.url("/sitemap_index.xml"),),
            sitemaps=True,
            obey_robots=False,
            scope="domain",
        )
    # No seed: the sitemap's own host is the scope.
    assert paths(site, records) == ["/from-sitemap"]
    assert site.hosts_hit() == {A}


async def test_depth_and_max_pages(tmp_path: Path) -> None:
    async with serve_site(crawl_delay=0.01) as site:
        _, records = await run_crawl(tmp_path / "d", [site.url("/")], max_depth=1)
        _, limited = await run_crawl(tmp_path / "m", [site.url("/")], max_pages=3)
    assert {r["depth"] for r in records} == {0, 1}
    assert "/a/deep" not in paths(site, records) and "/a" in paths(site, records)
    assert len(limited) == 3


async def test_include_exclude(tmp_path: Path) -> None:
    async with serve_site(crawl_delay=0.01) as site:
        _, records = await run_crawl(
            tmp_path, [site.url("/")], exclude=(r"/b$", r"redir"), include=(r"/(a|b)?",)
        )
    found = set(paths(site, records))
    assert "/b" not in found and "/redir-in" not in found and "/a" in found


async def test_frontier_spills_and_never_deadlocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue of 1 and 2 workers, pages with more links than that: workers never wait on
    the frontier they feed; overflow goes to disk and comes back; the run ends."""
    # The spill file goes to the temporary directory: this test's own, not the machine's
    # (where another run's spill file may be, rightly, at this moment).
    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    async with serve_site(gen_size=3000) as site:
        result, records = await run_crawl(
            tmp_path, [site.url("/gen/0")], obey_robots=False, queue_size=1, concurrency=2
        )
    found = paths(site, records)
    expected = {f"/gen/{i}" for i in range(3000)} | {f"/gen/{i}?again" for i in range(3000)}
    assert sorted(found) == sorted(expected)  # each exactly once
    assert result.snapshot.crawl is not None and result.snapshot.crawl["links_spilled"] > 0
    # Breadth-first: depths never go down along the output (one worker per level at most
    # a page or two out of order, as two workers finish in either order).
    depths = [r["depth"] for r in records]
    assert sum(1 for a, b in itertools.pairwise(depths) if b < a) <= 20
    assert not list(spill.glob("crawler-frontier-*"))  # removed


async def test_save_dir_and_warc(tmp_path: Path) -> None:
    bodies, warc = tmp_path / "bodies", tmp_path / "out.warc.gz"
    async with serve_site(crawl_delay=0.01) as site:
        _, records = await run_crawl(
            tmp_path, [site.url("/")], save_dir=str(bodies), warc=str(warc), warc_max_size=1500
        )
    fetched = [r for r in records if r["status"] is not None]
    assert fetched
    for rec in fetched:
        if rec["url"].endswith("/meta-nofollow"):
            continue  # nofollow only; its body is stored like any other
        data = Path(rec["body_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == rec["sha256"] and len(data) == rec["bytes"]
    files = sorted(tmp_path.glob("out*.warc.gz"))
    assert len(files) > 1  # rotated by --warc-max-size
    responses: dict[str, bytes] = {}
    requests = 0
    for path in files:
        with path.open("rb") as fh:
            for record in ArchiveIterator(fh):
                assert record.rec_headers.protocol == "WARC/1.1"
                uri = record.rec_headers.get_header("WARC-Target-URI")
                if record.rec_type == "response":
                    responses[uri] = record.content_stream().read()
                elif record.rec_type == "request":
                    requests += 1
    assert set(responses) == {r["final_url"] for r in fetched}
    assert requests == len(responses)
    home = next(r for r in fetched if r["url"] == site.url("/"))
    assert hashlib.sha256(responses[home["final_url"]]).hexdigest() == home["sha256"]


def test_warcio_check_accepts_our_files(tmp_path: Path) -> None:
    import asyncio
    import subprocess
    import sys

    async def crawl() -> None:
        async with serve_site(crawl_delay=0.01) as site:
            await run_crawl(tmp_path, [site.url("/")], warc=str(tmp_path / "x.warc.gz"))

    asyncio.run(crawl())
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from warcio.cli import main; sys.exit(main())",
            "check",
            "-v",
            str(tmp_path / "x.warc.gz"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("digest pass") >= 20 and "fail" not in proc.stdout


async def test_noindex_page_is_not_stored(tmp_path: Path) -> None:
    from aiohttp import web

    from tests.conftest import HOSTS

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text='<html><head><meta name="robots" content="noindex"></head>'
            '<a href="/next">n</a></html>',
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/", page)

    async def nxt(request: web.Request) -> web.Response:
        return web.Response(text="<p>hi</p>", content_type="text/html")

    app.router.add_get("/next", nxt)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, HOSTS[0], 0)
    await tcp.start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        _, records = await run_crawl(
            tmp_path, [f"http://{HOSTS[0]}:{port}/"], save_dir=str(tmp_path / "b")
        )
    finally:
        await runner.cleanup()
    by = {r["url"].rsplit("/", 1)[1]: r for r in records}
    assert by[""]["body_path"] is None  # noindex: not stored, links still followed
    assert by["next"]["body_path"] is not None


async def test_a_seed_that_redirects_brings_its_target_into_scope(tmp_path: Path) -> None:
    """http -> https, example.com -> www.example.com: a seed's redirect is followed
    wherever it goes, and the site it lands on is crawled (a found link's redirect out
    of scope is not: see /redir-out in the first test)."""
    async with serve_site(crawl_delay=0.01) as site:
        _, records = await run_crawl(tmp_path, [site.url("/to-b")], obey_robots=False, max_depth=1)
    seed = records[0]
    assert seed["url"] == site.url("/to-b") and seed["final_url"] == site.url("/", host=B)
    assert seed["redirects"] == []  # one hop: no intermediate URL
    found = {r["url"] for r in records}
    assert site.url("/a", host=B) in found and site.url("/b", host=B) in found  # B in scope
