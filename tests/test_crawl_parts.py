"""The pure parts of crawl mode: link extraction, scope, the spilling link queue, robots
cache semantics, sitemap parsing."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import pytest
from yarl import URL

from crawler import errors
from crawler.config import CrawlConfig
from crawler.following import parse_sitemap
from crawler.linkqueue import Link, LinkQueue
from crawler.links import extract
from crawler.response import Response
from crawler.robots import RobotsCache
from crawler.scope import Scope

# -- links ---------------------------------------------------------------------------------


def test_links_resolve_against_base_and_drop_fragments_and_other_schemes() -> None:
    html = b"""<html><head><base href="/docs/"></head><body>
      <a href="a.html#x">a</a> <a href="../up">up</a> <a href="//cdn.example/x">cdn</a>
      <a href="mailto:a@b">m</a> <a href="javascript:x()">j</a> <a href="#top">t</a>
      <a href=" spaced.html ">s</a> <area href="map.html"> <iframe src="frame.html"></iframe>
      <link rel="next" href="/page/2"> <link rel="stylesheet" href="/style.css">
      <img src="/img.png"></body></html>"""
    page = extract(html, "http://h/x/y.html")
    assert page.links == [
        "http://h/docs/a.html",
        "http://h/up",
        "http://cdn.example/x",
        "http://h/docs/spaced.html",
        "http://h/docs/map.html",
        "http://h/docs/frame.html",
        "http://h/page/2",
    ]
    with_assets = extract(html, "http://h/x/y.html", assets=True).links
    assert "http://h/style.css" in with_assets and "http://h/img.png" in with_assets


def test_nofollow_links_and_meta_robots() -> None:
    html = b'<a rel="external nofollow" href="/no">n</a><a href="/yes">y</a>'
    assert extract(html, "http://h/").links == ["http://h/yes"]
    assert extract(html, "http://h/", obey_robots=False).links == ["http://h/no", "http://h/yes"]
    meta = b'<meta name="ROBOTS" content="noindex, NoFollow"><a href="/x">x</a>'
    page = extract(meta, "http://h/")
    assert page.nofollow and page.noindex and page.links == []
    none = extract(b'<meta name="robots" content="none"><a href="/x">x</a>', "http://h/")
    assert none.nofollow and none.noindex
    assert extract(meta, "http://h/", obey_robots=False).links == ["http://h/x"]


def test_links_of_garbage_and_huge_pages() -> None:
    assert extract(b"\x00\xff<<<a href=", "http://h/").links == []
    many = b"".join(b'<a href="/p%d">x</a>' % i for i in range(20_000))
    assert len(extract(many, "http://h/").links) == 10_000  # capped per page


# -- scope ---------------------------------------------------------------------------------


def scope_of(seed: str, **kw: object) -> Scope:
    scope = Scope(CrawlConfig(**kw))  # type: ignore[arg-type]
    scope.add_seed(URL(seed))
    return scope


def allows(scope: Scope, url: str) -> bool:
    return scope.allows(URL(url), url)


def test_scope_host_domain_prefix() -> None:
    host = scope_of("https://www.example.com/docs/index.html")
    assert allows(host, "http://www.example.com:8080/other")
    assert not allows(host, "https://example.com/") and not allows(host, "https://evil.com/")
    domain = scope_of("https://www.example.com/", scope="domain")
    assert allows(domain, "https://example.com/") and allows(domain, "https://a.b.example.com/")
    assert not allows(domain, "https://notexample.com/")
    prefix = scope_of("https://example.com/docs/index.html", scope="prefix")
    assert allows(prefix, "https://example.com/docs/x/y") and allows(
        prefix, "https://example.com/docs/"
    )
    assert not allows(prefix, "https://example.com/docsx") and not allows(
        prefix, "https://example.com/"
    )


def test_scope_include_exclude_and_depth() -> None:
    scope = scope_of("http://h/", include=(r"/blog/",), exclude=(r"\.pdf$",), max_depth=2)
    assert allows(scope, "http://h/blog/post")
    assert not allows(scope, "http://h/about") and not allows(scope, "http://h/blog/x.pdf")
    assert scope.depth_ok(2) and not scope.depth_ok(3)


# -- link queue ----------------------------------------------------------------------------


async def test_link_queue_spills_to_disk_and_keeps_fifo_order(tmp_path: Path) -> None:
    queue = LinkQueue(memory=512, spill_dir=str(tmp_path))
    links = [Link(f"http://h/{i}", i % 7, None, (i * 0x9E3779B97F4A7C15) % (1 << 64))
             for i in range(5000)]  # fmt: skip
    out: list[Link] = []
    for i, link in enumerate(links):
        queue.push(link)
        if i % 3 == 0:  # interleave takes with pushes
            out += await queue.take(1)
    assert queue.spilled > 0
    assert not list(tmp_path.glob("crawler-frontier-*"))  # unlinked at once: no leftovers
    while batch := await queue.take(100):
        out += batch
    assert out == links and len(queue) == 0  # every link once, in order, fps intact
    queue.close()
    assert not list(tmp_path.glob("crawler-frontier-*"))


# -- robots ------------------------------------------------------------------------------


def response(status: int, body: bytes = b"") -> Response:
    return Response(status=status, final_url="", content_type="text/plain", nbytes=len(body),
                    body=body)  # fmt: skip


async def test_robots_single_flight_and_cache() -> None:
    calls: list[str] = []
    gate = asyncio.Event()

    async def fetch(url: URL) -> Response:
        calls.append(str(url))
        await gate.wait()
        return response(200, b"User-agent: *\nDisallow: /private\nCrawl-delay: 2\n")

    cache = RobotsCache(fetch, ttl=60, clock=lambda: 0.0)
    waiters = [asyncio.create_task(cache.rules(URL(f"http://h/{i}"))) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    rules = await asyncio.gather(*waiters)
    assert calls == ["http://h/robots.txt"]  # one request for ten callers
    assert all(r is rules[0] for r in rules)
    assert not rules[0].allows("http://h/private/x", "crawler/1")
    assert rules[0].allows("http://h/public", "crawler/1")
    assert rules[0].crawl_delay("crawler/1") == 2.0
    await cache.rules(URL("http://h/again"))
    assert len(calls) == 1  # cached
    await cache.rules(URL("https://h/"))
    assert len(calls) == 2  # another origin (scheme) is another robots.txt


@pytest.mark.parametrize(
    ("outcome", "allowed"),
    [(404, True), (410, True), (500, False), (503, False), ("connect", True)],
)
async def test_robots_status_semantics(outcome: int | str, allowed: bool) -> None:
    async def fetch(url: URL) -> Response:
        if outcome == "connect":
            raise errors.ConnectError("refused")
        assert isinstance(outcome, int)
        return response(outcome, b"User-agent: *\nDisallow: /\n")

    now = [0.0]
    cache = RobotsCache(fetch, ttl=3600, clock=lambda: now[0])
    rules = await cache.rules(URL("http://h/page"))
    assert rules.allows("http://h/page", "crawler") is allowed
    now[0] = 301.0  # errors are kept 5 minutes, answers for the ttl
    before = cache.fetched
    await cache.rules(URL("http://h/page"))
    assert cache.fetched == before + (1 if outcome in (500, 503, "connect") else 0)


async def test_robots_fetch_cancelled_lets_the_next_caller_retry() -> None:
    started = asyncio.Event()

    async def hang(url: URL) -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    cache = RobotsCache(hang, ttl=60, clock=lambda: 0.0)
    task = asyncio.create_task(cache.rules(URL("http://h/")))
    await started.wait()
    waiter = asyncio.create_task(cache.rules(URL("http://h/other")))
    await asyncio.sleep(0)

    async def ok(url: URL) -> Response:
        return response(404)

    cache._fetch = ok
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The waiter is not cancelled with the loader: it loads robots.txt itself.
    assert (await waiter).allows("http://h/", "x")


# -- sitemaps ------------------------------------------------------------------------------


def test_sitemap_urlset_index_gzip_and_hostile_xml() -> None:
    urlset = b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc> http://h/a </loc></url><url><loc>http://h/b</loc></url></urlset>'
    assert parse_sitemap(urlset) == (False, ["http://h/a", "http://h/b"])
    assert parse_sitemap(gzip.compress(urlset)) == (False, ["http://h/a", "http://h/b"])
    index = b"<sitemapindex><sitemap><loc>http://h/s1.xml.gz</loc></sitemap></sitemapindex>"
    assert parse_sitemap(index) == (True, ["http://h/s1.xml.gz"])
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><urlset><url><loc>&b;</loc></url></urlset>'
    )
    assert parse_sitemap(bomb) == (False, [])  # entity declarations refused
    assert parse_sitemap(b"<urlset><url><loc>http://h/a</loc></url><url><lo") == (
        False,
        ["http://h/a"],
    )  # truncated: keep what came before
    assert parse_sitemap(b"\x1f\x8bnot really gzip") == (False, [])


# -- hostile input ---------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_TAGS = st.sampled_from(["a", "base", "link", "area", "iframe", "img", "meta", "p", "script"])
_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["http://h/x", "//h2/y", "../z", "javascript:x", "#f", "http://[::1", "ht!tp://"]
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_TAGS, st.sampled_from(["href", "src", "rel", "content", "name"]), _VALUES)),
    st.binary(max_size=64),
)
def test_link_extraction_never_raises_and_yields_only_http_urls(
    parts: list[tuple[str, str, str]], junk: bytes
) -> None:
    html = "".join(f'<{tag} {attr}="{value}">' for tag, attr, value in parts).encode() + junk
    scope = scope_of("http://h/", scope="domain")
    from crawler.links import find

    found = find("http://h/page", html, scope, assets=True, obey_robots=True)
    for text, fp in found.candidates:
        assert text.startswith(("http://", "https://")) and "#" not in text
        assert isinstance(fp, int)
