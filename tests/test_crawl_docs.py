"""Crawl a real documentation site served from disk: Python's HTML docs (Debian package
python3.11-doc, installed by .ci/run). Every HTML page reachable from the index is found,
exactly once, and nothing outside the site is requested."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from aiohttp import web

from tests.test_crawl import run_crawl

DOCS = Path(os.environ.get("CRAWLER_DOCS_DIR", "/usr/share/doc/python3.11/html"))

pytestmark = pytest.mark.skipif(
    not (DOCS / "index.html").is_file(),
    reason=f"no HTML docs at {DOCS} (apt-get install python3.11-doc, as .ci/run does)",
)


async def test_crawl_python_docs_finds_every_page(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_static("/", DOCS, follow_symlinks=True)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}/"
    try:
        _, records = await run_crawl(
            tmp_path, [base + "index.html"], concurrency=16, per_host=16, timeout=30.0
        )
    finally:
        await runner.cleanup()
    urls = [r["url"] for r in records]
    assert len(urls) == len(set(urls))  # each page once
    pages = {r["url"].removeprefix(base).partition("?")[0] for r in records if r["ok"]}
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.html")}
    reachable = reachable_from("index.html")
    assert len(reachable) > 0.99 * len(on_disk)  # the oracle itself is sane
    assert pages & on_disk == reachable, (sorted(reachable - pages)[:10], len(pages))


def reachable_from(start: str) -> set[str]:
    """An independent oracle: a naive BFS over the files with a regex, no HTTP."""
    seen, todo = {start}, [start]
    while todo:
        page = todo.pop()
        text = (DOCS / page).read_text("utf-8", "replace")
        for href in re.findall(r'href="([^"#?:]*\.html)', text):
            target = os.path.normpath(os.path.join(os.path.dirname(page), href))
            if target not in seen and (DOCS / target).is_file():
                seen.add(target)
                todo.append(target)
    return seen
