"""Sitemaps, read incrementally: a bounded amount of XML and of URLs per step.

A sitemap may hold 50,000 URLs by the protocol, and a hostile one millions (or a comment
that inflates to 50 MiB). So it is never parsed in one call: the parser child
(crawler/parser.py) runs ``begin(body, scope)`` once, then ``step()`` until it says done;
each step feeds expat at most ``_STEP_BYTES`` of XML (in ``_FEED``-sized pieces: expat
re-scans an unfinished token at every feed, so small feeds make one huge token
quadratic) and returns at most ``max_locs`` URLs. The parent admits each batch before it
asks for the next, so neither process ever holds a list of every URL, and it can stop
between steps (--max-pages reached, shutdown, a step past its deadline).

defusedxml's parser refuses entity declarations (billion laughs) and external entities.
Gzipped bodies are inflated as they are read, to the protocol's 50 MiB.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Final, NamedTuple
from xml.etree.ElementTree import ParseError

from defusedxml.ElementTree import DefusedXMLParser

from crawler.links import Candidate, parse_candidates

if TYPE_CHECKING:
    from crawler.scope import Scope

MAX_XML_BYTES: Final = 50 * 1024 * 1024  # the sitemap protocol's own limit, unzipped
_FEED: Final = 1024 * 1024
_STEP_BYTES: Final = 4 * _FEED
_MAX_DEPTH: Final = 16  # a sitemap is 3 levels deep; deeper is junk (or an attack on memory)
_MAX_LOC: Final = 16 * 1024  # characters: a longer <loc> is no URL we would fetch


class Batch(NamedTuple):
    is_index: bool  # a sitemap index: ``locs`` are sitemaps
    locs: list[str]  # an index's sitemap URLs
    candidates: list[Candidate]  # a URL set's URLs, parsed and in scope
    done: bool


class _TooDeepError(Exception):
    pass


class _Locs:
    """ElementTree parser target: keeps the text of <loc> elements, builds no tree."""

    def __init__(self) -> None:
        self.locs: list[str] = []
        self.is_index = False
        self._depth = 0
        self._text: list[str] | None = None
        self._size = 0

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise _TooDeepError
        name = tag.rpartition("}")[2]
        if self._depth == 1:
            self.is_index = name == "sitemapindex"
        elif name == "loc":
            self._text, self._size = [], 0

    def data(self, text: str) -> None:
        if self._text is not None and self._size <= _MAX_LOC:
            self._text.append(text)
            self._size += len(text)

    def end(self, tag: str) -> None:
        self._depth -= 1
        if self._text is not None and tag.rpartition("}")[2] == "loc":
            if self._size <= _MAX_LOC and (loc := "".join(self._text).strip()):
                self.locs.append(loc)
            self._text = None

    def close(self) -> None:
        return None


class SitemapReader:
    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pos = 0
        gzipped = body[:2] == b"\x1f\x8b"
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
        self._fed = 0  # XML bytes given to the parser
        self._target = _Locs()
        self._parser = DefusedXMLParser(target=self._target)
        self.done = False

    @property
    def pending(self) -> bool:
        """URLs read but not handed out yet."""
        return bool(self._target.locs)

    def step(self, max_locs: int) -> tuple[bool, list[str]]:
        """(is it an index, up to about ``max_locs`` more of its <loc> URLs)."""
        target = self._target
        budget = _STEP_BYTES
        while not self.done and len(target.locs) < max_locs and budget > 0:
            try:
                data = self._next_xml()
                if data:
                    budget -= len(data)
                    self._parser.feed(data)
                else:
                    self.done = True
                    self._parser.close()
            except (ParseError, ValueError, zlib.error, _TooDeepError):
                # Keep what came before the error, as search engines do (defusedxml's
                # refusals are ValueErrors).
                self.done = True
        # One feed can hold more than asked for (1 MiB: ~20,000 URLs): the rest waits.
        locs, target.locs = target.locs[:max_locs], target.locs[max_locs:]
        return target.is_index, locs

    def _next_xml(self) -> bytes:
        room = min(_FEED, MAX_XML_BYTES - self._fed)
        if room <= 0:
            return b""
        inflater = self._inflater
        if inflater is None:
            data = self._body[self._pos : self._pos + room]
            self._pos += len(data)
        else:
            data = b""
            while not data and not inflater.eof:
                src = inflater.unconsumed_tail
                if not src:
                    src = self._body[self._pos : self._pos + _FEED]
                    self._pos += len(src)
                    if not src:
                        break  # a truncated gzip stream: keep what came
                data = inflater.decompress(src, room)
        self._fed += len(data)
        return data


# -- run in the parser child, one sitemap at a time -----------------------------------------
_reader: tuple[SitemapReader, Scope] | None = None


def begin(body: bytes, scope: Scope) -> None:
    global _reader  # the child reads one sitemap at a time
    _reader = (SitemapReader(body), scope)


def step(max_locs: int) -> Batch:
    global _reader
    if _reader is None:
        raise RuntimeError("no sitemap is being read")
    reader, scope = _reader
    is_index, locs = reader.step(max_locs)
    if reader.done and not reader.pending:
        _reader = None
    done = reader.done and not reader.pending
    if is_index:
        return Batch(True, locs, [], done)
    return Batch(False, [], parse_candidates(locs, scope), done)


def parse_sitemap(body: bytes) -> tuple[bool, list[str]]:
    """The whole sitemap at once: (is it an index, its <loc> URLs). For tests and tools."""
    reader = SitemapReader(body)
    is_index, locs = False, []
    while not reader.done or reader.pending:
        is_index, more = reader.step(1 << 30)
        locs += more
    return is_index, locs
