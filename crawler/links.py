"""Links of an HTML page, with selectolax (lexbor): a C parser, ~20x faster than lxml-free
pure-Python parsing and tolerant of broken markup, as browsers are.

What is a link:
- ``a[href]`` and ``area[href]`` (not ``rel=nofollow`` ones, unless robots are ignored),
  ``link[rel=next]``, ``iframe[src]``/``frame[src]``;
- with ``assets``: ``img[src]``, ``script[src]``, ``link[rel=stylesheet|icon|preload]``,
  ``source[src]``, ``video[src]``, ``audio[src]``;
- relative to ``<base href>`` when the page has one, else to the page's final URL;
- fragments dropped; only http(s) results are kept.

At most ``_MAX_LINKS`` links a page, and the parser never sees more than it needs for
them: the body is cut after its ``_CUT_ATTRS``-th ``href=``/``src=`` (a 10 MB page of
370,000 links would otherwise build a 160 MB tree and a list of every link first).

``<meta name=robots content=...>``: ``nofollow`` means no link of the page is followed,
``noindex`` that its body is not stored (--save-dir, --warc).
"""

from __future__ import annotations

import contextlib
import re
import signal
from typing import TYPE_CHECKING, Final
from urllib.parse import urljoin

from msgspec import Struct, field
from selectolax.lexbor import LexborHTMLParser

from crawler.dedup import fingerprint
from crawler.errors import InvalidURL
from crawler.urls import parse_target

if TYPE_CHECKING:
    from crawler.scope import Scope

Candidate = tuple[str, int]  # (absolute URL, fingerprint of its dedup key)

_PAGE_SELECTOR: Final = "a[href], area[href], link[rel][href], iframe[src], frame[src], base[href]"
_ASSET_SELECTOR: Final = "img[src], script[src], source[src], video[src], audio[src], embed[src]"
_ASSET_RELS: Final = frozenset(("stylesheet", "icon", "preload", "shortcut", "apple-touch-icon"))
_MAX_LINKS: Final = 10_000  # per page: a page with a million links is an attack, not a site
# Attributes that can hold a link: twice the links kept leaves room for those that are not
# (stylesheets, images without --assets, <base>), and bounds the tree of a huge page.
_CUT_ATTRS: Final = 2 * _MAX_LINKS
_LINK_ATTR: Final = re.compile(rb"(?i)(?:href|src)\s*=")
_SHORTEST_ATTR: Final = 6  # len(b"src=''")


def ignore_sigint() -> None:
    """In a child process: Ctrl-C (and Ctrl-\\, a terminal hang-up) reaches the whole
    process group, but the parent decides when its children stop. SIGTERM is left alone:
    it is how a process pool ends a child it gave up on."""
    for name in ("SIGINT", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class Page(Struct):
    links: list[str] = field(default_factory=list)
    nofollow: bool = False  # <meta name=robots content=nofollow>
    noindex: bool = False  # <meta name=robots content=noindex>


class Found(Struct):
    """What crawl mode needs of a page: its in-scope links, fingerprinted."""

    candidates: list[Candidate]
    total: int  # links on the page, before parsing and scope
    noindex: bool


def find(page_url: str, body: bytes, scope: Scope, *, assets: bool, obey_robots: bool) -> Found:
    """A page's links, parsed, fingerprinted and in scope. Pure (runs inline, or in a
    child process for a big page: it only reads the scope)."""
    page = extract(body, page_url, assets=assets, obey_robots=obey_robots)
    return Found(parse_candidates(page.links, scope), len(page.links), page.noindex)


def parse_candidates(texts: list[str], scope: Scope | None) -> list[Candidate]:
    """Valid http(s) URLs among ``texts`` (within ``scope`` if given), each once."""
    out: list[Candidate] = []
    seen_here: set[str] = set()
    for text in texts:
        if text in seen_here:
            continue
        seen_here.add(text)
        try:
            url, key, _ = parse_target(text)
        except InvalidURL:
            continue
        if scope is None or scope.allows(url, text):
            out.append((text, fingerprint(key)))
    return out


def extract(body: bytes, page_url: str, *, assets: bool = False, obey_robots: bool = True) -> Page:
    """Absolute http(s) URLs linked from ``body`` (in document order, duplicates kept)."""
    page = Page()
    # lexbor parses anything; it fails only when out of memory (the parser child's limit),
    # and that is a parse error, not a page without links: the exception is the caller's.
    tree = LexborHTMLParser(_cut(body))
    if obey_robots:
        for meta in tree.css("meta[name][content]"):
            name = (meta.attributes.get("name") or "").strip().lower()
            if name in ("robots", "crawler"):
                content = (meta.attributes.get("content") or "").lower()
                directives = {d.strip() for d in content.split(",")}
                if "none" in directives:
                    directives |= {"nofollow", "noindex"}
                page.nofollow |= "nofollow" in directives
                page.noindex |= "noindex" in directives
        if page.nofollow:
            return page
    base = page_url
    raw: list[str] = []
    for node in tree.css(_PAGE_SELECTOR):
        tag = node.tag
        attrs = node.attributes
        if tag == "base":
            href = attrs.get("href")
            if href and base is page_url:  # the first <base href> wins, as in browsers
                # A broken one ("http://[::1") is ignored, as browsers do.
                with contextlib.suppress(ValueError):
                    base = urljoin(page_url, href.strip())
            continue
        rels = set((attrs.get("rel") or "").lower().split())
        if tag == "link":
            if "next" in rels or (assets and rels & _ASSET_RELS):
                href = attrs.get("href")
            else:
                continue
        elif tag in ("iframe", "frame"):
            href = attrs.get("src")
        else:
            if obey_robots and "nofollow" in rels:
                continue
            href = attrs.get("href")
        if href:
            raw.append(href)
            if len(raw) >= _MAX_LINKS:
                break
    if assets and len(raw) < _MAX_LINKS:
        for node in tree.css(_ASSET_SELECTOR):
            if src := node.attributes.get("src"):
                raw.append(src)
                if len(raw) >= _MAX_LINKS:
                    break
    links = page.links
    for href in raw:
        href = href.strip()
        if not href or href.startswith("#"):
            continue
        try:
            url = urljoin(base, href)
        except ValueError:
            continue
        url = url.partition("#")[0]
        if url.startswith(("http://", "https://")):
            links.append(url)
    return page


def _cut(body: bytes) -> bytes:
    """``body`` up to its ``_CUT_ATTRS``-th link attribute (all of it if it has fewer)."""
    if len(body) < _CUT_ATTRS * _SHORTEST_ATTR:
        return body  # too short to hold that many
    for n, match in enumerate(_LINK_ATTR.finditer(body), 1):
        if n == _CUT_ATTRS:
            return body[: match.start()]
    return body
