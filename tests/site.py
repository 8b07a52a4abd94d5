"""A small website for crawl tests, served by aiohttp.web on two loopback hosts.

Host A (127.0.0.1) is the site; host B (127.0.0.2) is "another site" that a crawl scoped
to A must never touch. The server records when each request arrived (its own clock), so
politeness is checked with the server's timestamps, not the client's.

    /                 -> /a, /b, /private/secret, B/other, /nofollow-target (rel=nofollow),
                         /missing (404), /redir-in (-> /c), /redir-out (-> B/elsewhere),
                         /meta-nofollow, /a#frag, mailto:, javascript:
    /a                -> /, /b, /a/deep          (cycles)
    /b                -> /a
    /a/deep           <base href=/base/> -> rel-from-base = /base/rel-from-base
    /base/rel-from-base  <link rel=next href=/page2>
    /meta-nofollow    <meta name=robots content=nofollow> -> /never
    /robots.txt       Disallow: /private/  Crawl-delay: 0.2  Sitemap: /sitemap_index.xml
    /sitemap_index.xml -> /sitemap1.xml.gz (gzipped) -> /from-sitemap, B/from-sitemap
    /gen/N            a generated tree: /gen/N links to /gen/2N+1 and /gen/2N+2 (< size)
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

A, B = "127.0.0.1", "127.0.0.2"


@dataclass
class Site:
    ports: dict[str, int]
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    times: list[tuple[float, str, str]] = field(default_factory=list)  # (t, host, path)
    crawl_delay: float = 0.2
    gen_size: int = 0
    gen_delay: float = 0.0

    def url(self, path: str, host: str = A) -> str:
        return f"http://{host}:{self.ports[host]}{path}"

    def hosts_hit(self) -> set[str]:
        return {host for _, host, _ in self.times}


def _page(*links: str, head: str = "") -> web.Response:
    body = "".join(f'<a href="{href}">{href}</a>\n' for href in links)
    return web.Response(
        text=f"<!doctype html><html><head>{head}</head><body>{body}</body></html>",
        content_type="text/html",
    )


def make_site_app(site: Site) -> web.Application:
    @web.middleware
    async def record(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        site.hits[f"{request.host.split(':')[0]}{request.path}"] += 1
        site.times.append((time.monotonic(), request.host.split(":")[0], request.path))
        return await handler(request)

    def other(request: web.Request) -> str:
        return f"http://{B}:{site.ports[B]}"

    async def root(request: web.Request) -> web.Response:
        return web.Response(
            text=(
                "<html><body>"
                '<a href="/a">a</a> <a href="b">b</a> <a href="/private/secret">s</a>'
                f'<a href="{other(request)}/other">other host</a>'
                '<a rel="nofollow noopener" href="/nofollow-target">nf</a>'
                '<a href="/missing">404</a> <a href="/redir-in">r</a>'
                '<a href="/redir-out">ro</a> <a href="/meta-nofollow">m</a>'
                '<a href="/a#frag">frag</a> <a href="mailto:x@example.com">mail</a>'
                '<a href="javascript:void(0)">js</a> <a href="#top">top</a>'
                "</body></html>"
            ),
            content_type="text/html",
        )

    async def robots(request: web.Request) -> web.Response:
        text = (
            "User-agent: *\nDisallow: /private/\n"
            f"Crawl-delay: {site.crawl_delay}\n"
            f"Sitemap: http://{A}:{site.ports[A]}/sitemap_index.xml\n"
        )
        return web.Response(text=text)

    async def sitemap_index(request: web.Request) -> web.Response:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>http://{A}:{site.ports[A]}/sitemap1.xml.gz</loc></sitemap>"
            "</sitemapindex>"
        )
        return web.Response(text=xml, content_type="application/xml")

    async def sitemap1(request: web.Request) -> web.Response:
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<url><loc>http://{A}:{site.ports[A]}/from-sitemap</loc></url>"
            f"<url><loc>{other(request)}/from-sitemap</loc></url>"
            "</urlset>"
        )
        return web.Response(body=gzip.compress(xml.encode()), content_type="application/x-gzip")

    async def gen(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if site.gen_delay:
            await asyncio.sleep(site.gen_delay)
        kids = [f"/gen/{k}" for k in (2 * n + 1, 2 * n + 2) if k < site.gen_size]
        return _page(*kids, "/gen/0", f"/gen/{n}?again")

    routes = {
        "/": root,
        "/robots.txt": robots,
        "/a": lambda r: _page("/", "/b", "/a/deep"),
        "/b": lambda r: _page("/a"),
        "/a/deep": lambda r: _page("rel-from-base", head='<base href="/base/">'),
        "/base/rel-from-base": lambda r: web.Response(
            text='<html><head><link rel="next" href="/page2"></head><body>x</body></html>',
            content_type="text/html",
        ),
        "/page2": lambda r: _page(),
        "/c": lambda r: _page("/a"),
        "/meta-nofollow": lambda r: _page("/never", head='<meta name="robots" content="NOFOLLOW">'),
        "/never": lambda r: _page(),
        "/nofollow-target": lambda r: _page(),
        "/private/secret": lambda r: _page(),
        "/from-sitemap": lambda r: _page(),
        "/missing": lambda r: web.Response(status=404, text="<html>nope</html>"),
        "/redir-in": lambda r: web.HTTPMovedPermanently("/c"),
        "/redir-out": lambda r: web.HTTPFound(f"{other(r)}/elsewhere"),
        "/to-b": lambda r: web.HTTPFound(f"{other(r)}/"),
        "/sitemap_index.xml": sitemap_index,
        "/sitemap1.xml.gz": sitemap1,
    }
    app = web.Application(middlewares=[record])

    def wrap(fn: object) -> object:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = fn(request)  # type: ignore[operator]
            if asyncio.iscoroutine(resp):
                resp = await resp
            if isinstance(resp, web.HTTPException):
                raise resp
            return resp  # type: ignore[no-any-return]

        return handler

    for path, fn in routes.items():
        app.router.add_get(path, wrap(fn))  # type: ignore[arg-type]
    app.router.add_get("/gen/{n}", gen)
    app.router.add_get("/{tail:.*}", wrap(lambda r: web.Response(status=404, text="no")))  # type: ignore[arg-type]
    return app


@asynccontextmanager
async def serve_site(**kw: float | int) -> AsyncIterator[Site]:
    site = Site(ports={}, **kw)  # type: ignore[arg-type]
    runner = web.AppRunner(make_site_app(site), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    for host in (A, B):
        tcp = web.TCPSite(runner, host, 0)
        await tcp.start()
        site.ports[host] = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield site
    finally:
        await runner.cleanup()


# Every URL of host A a default crawl from / must produce a record for.
EXPECTED_PATHS = {
    "/",
    "/a",
    "/b",
    "/private/secret",  # a `robots` record, never requested
    "/missing",  # 404
    "/redir-in",  # followed into scope: final_url /c
    "/redir-out",  # not followed out of scope: its 302 is the record
    "/meta-nofollow",
    "/a/deep",
    "/base/rel-from-base",
    "/page2",
}
