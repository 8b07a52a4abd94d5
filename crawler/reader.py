"""The reader: input lines -> parsed, validated, deduplicated Items in the frontier.

    LineSource --batch of lines--> parse_target --> Seen.claim (one per batch; the same
        Seen as the crawl's links) --> Frontier.offer/put (invalid lines get their record
        at once, through the RecordSink)

``taken`` counts the lines dealt with (recorded, queued or skipped): a stopped run
reports the rest of the input as unread (see ``count_unread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Final, cast

from yarl import URL

from crawler import errors
from crawler.crawling import Crawling
from crawler.dedup import fingerprint
from crawler.frontier import Frontier
from crawler.inputs import Source
from crawler.records import Record, Records
from crawler.recordsink import RecordSink
from crawler.request import Request, parse_request_line, request_key
from crawler.stats import Stats
from crawler.stores import DONE_BEFORE, Seen
from crawler.task import Item, RequestItem
from crawler.urls import parse_target

_COUNT_WAIT: Final = 2.0  # seconds a stopped run waits, at most, to count the input left unread


class Reader:
    def __init__(
        self,
        source: Source,
        frontier: Frontier,
        sink: RecordSink,
        stats: Stats,
        records: Records,
        pages: Crawling,
        seen: Seen,
        *,
        dedup: bool,
        request: Request | None = None,
    ) -> None:
        self._source = source
        self._frontier = frontier
        self._sink = sink
        self._stats = stats
        self._records = records
        self._pages = pages
        self._seen = seen
        self._dedup = dedup
        # The request of every plain line (--data, --json, a --method other than GET and
        # HEAD), or None: plain lines of a plain run have none (crawler.task.Item).
        self._request = request
        self.taken = 0  # input lines dealt with (record, queued or skipped)

    async def run(self) -> None:
        """Parse, validate and deduplicate the input, one batch at a time."""
        frontier, sink, stats, seen = self._frontier, self._sink, self._stats, self._seen
        dedup = self._dedup
        crawl = self._pages.crawl
        # Decided once per run, so a plain line costs what it did: how a plain line's
        # dedup key becomes its fingerprint, and what its item is.
        plain = self._request
        # Crawl mode: each input URL is a seed (fetch mode: nothing to call per line).
        seed = self._pages.seed if crawl is not None else None
        make: Callable[[str, URL, str, int], Item] = Item
        fp_of = fingerprint
        if plain is not None:
            make = functools.partial(RequestItem, request=plain)
            fp_of = functools.partial(_request_fp, method=plain.method, body=plain.body)
        try:
            async for lines in self._source.batches():
                parsed: list[tuple[str, URL | errors.InvalidURL | RequestItem, str, int]] = []
                for raw in lines:
                    try:
                        url, key, host = parse_target(raw)
                    except errors.InvalidURL as exc:
                        if raw[0] == "{":  # a JSON request line (or nothing valid)
                            parsed.append(self._request_line(raw, dedup))
                            continue
                        fp = fingerprint("\0invalid\0" + raw) if dedup else 0
                        parsed.append((raw, exc, "", fp))
                    else:
                        parsed.append((raw, url, host, fp_of(key) if dedup else 0))
                        if seed is not None:  # done seeds too: they define the scope
                            seed(url, host)
                # One claim per batch, never per URL (with --state: one round trip to
                # the state thread).
                fresh = await seen.claim([entry[3] for entry in parsed])
                # Each line counts as taken once it has its record, is queued or is
                # skipped: a line cut off by the stop is in none of them (count_unread).
                for (raw, target, host, fp), new in zip(parsed, fresh, strict=True):
                    if not new:  # REPEAT
                        stats.skipped_duplicates += 1
                    elif new == DONE_BEFORE:
                        stats.skipped_done_before += 1
                    elif type(target) is not URL:  # as cheap as the isinstance it replaced
                        if isinstance(target, errors.InvalidURL):
                            sink.put_nowait(self._invalid_record(raw, target), fp)
                            self.taken += 1
                            if sink.behind:
                                await sink.backpressure()
                            continue
                        if crawl is None or crawl.add_seed():  # a request line's item
                            item = cast(Item, target)
                            if not frontier.offer(item):
                                await frontier.put(item)
                    elif crawl is None or crawl.add_seed():
                        item = make(raw, target, host, fp)
                        if not frontier.offer(item):
                            await frontier.put(item)
                    self.taken += 1
            await self._pages.feed_links(frontier)  # crawl mode: the links found
        finally:
            frontier.close_input()

    def _request_line(
        self, line: str, dedup: bool
    ) -> tuple[str, errors.InvalidURL | RequestItem, str, int]:
        """A parsed entry for a JSON request line: its item (the record's ``url`` is the
        request's URL), or for a malformed one its error (the record carries the line)."""
        try:
            text, request = parse_request_line(line)
            url, key, host = parse_target(text)
        except errors.InvalidURL as exc:
            if not exc.message.startswith(("request line", "invalid request line")):
                exc = errors.InvalidURL(f"invalid request line: url: {exc.message}")
            return line, exc, "", fingerprint("\0invalid\0" + line) if dedup else 0
        fp = _request_fp(key, request.method, request.body) if dedup else 0
        self._pages.seed(url, host)
        return text, RequestItem(text, url, host, fp, request), host, fp

    def _invalid_record(self, raw: str, error: errors.InvalidURL) -> Record:
        """An input line that is not a URL we can fetch: counted and stamped here."""
        self._stats.record(False, None, error.kind, 0)
        return self._records.invalid(raw, error)

    async def wait_count(self) -> None:
        """How much input a stop left unread: counted since the stop, waited for a while."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_COUNT_WAIT):
                await self._source.counted()

    def count_unread(self) -> None:
        """A stopped run: the input lines it never read got no record (nor any count)."""
        source, stats = self._source, self._stats
        if source.eof:
            return
        if source.lines_total is not None:
            stats.not_read = max(0, source.lines_total - self.taken)
        else:  # standard input or a pipe: what is left cannot be known without reading it
            stats.not_read = None
            stats.rest_unread = True


def _request_fp(key: str, method: str, body: bytes | None) -> int:
    """The fingerprint of a request's dedup key (crawler.request.request_key)."""
    return fingerprint(request_key(key, method, body))
