"""What ``--workers N``'s coordinator and its worker processes share: which worker a line
goes to, the frames they exchange on the worker's standard input and output, and the
statistics a worker reports.

A host belongs to exactly one worker for the whole run: ``Router.route`` sends every line
whose URL has that host name to the same worker, so its per-host slots, pacer, breaker,
robots.txt and dedup stay in one process. The host is read off the line cheaply (one
regex on a plain URL, the full parse only for anything else) and agrees with the host of
the URL's fingerprint (``crawler.urls.parse_target``): two lines with one fingerprint
have one host name, so they meet in one worker.

Frames: a kind byte and a 4-byte length, then the payload; one frame carries a batch.
"""

from __future__ import annotations

import asyncio
import pickle
import re
import struct
from array import array
from typing import Any, Final

from yarl import URL

from crawler import errors
from crawler.request import parse_request_line
from crawler.stats import Histogram, Stats
from crawler.urls import parse_target

# coordinator -> worker
CONFIG: Final = 1  # pickled dict: the worker's RunConfig and how it runs
LINES: Final = 2  # u64 batch id, then the batch's lines joined by "\n"
ANSWER: Final = 3  # u64 batch id, then one byte per fingerprint (Seen.claim's answers)
END: Final = 4  # no more lines: finish the work and report
STOP: Final = 5  # a stop signal (a second one cuts the grace period short)
SCOPE: Final = 6  # crawl: seed lines routed to other workers (they define the scope)
LINKS: Final = 7  # crawl: pickled links for this worker's hosts, claimed and admitted
FINISH: Final = 8  # crawl: every worker is idle and nothing is in transit: end
# worker -> coordinator
CLAIM: Final = 10  # u64 batch id, then the batch's fingerprints (u64 each)
RECORDS: Final = 11  # u32 n, n fingerprints (0: none), then n encoded records
STATS: Final = 12  # pickled tally (see tally())
DONE: Final = 13  # pickled {"tally": ..., "interrupted": ..., "timed_out": ...}
FORWARD: Final = 14  # crawl: pickled links found (in scope, within --depth), not claimed
IDLE: Final = 15  # crawl: u64 links received so far; nothing queued or in flight here

_HEAD: Final = struct.Struct("<BI")
_ID: Final = struct.Struct("<Q")
_COUNT: Final = struct.Struct("<I")

# A plain URL's host, as parse_target reads it (lower-case ASCII; anything else, an
# upper-case scheme or host, user info, IDN, IPv6, goes the slow way).
_PLAIN_HOST: Final = re.compile(r"https?://([a-z0-9_.-]+)(?:[:/?#]|\Z)", re.ASCII)


# Hosts whose worker is remembered (about 100 bytes each); hosts first seen after that many
# go by their name's hash, which needs no memory.
REMEMBERED_HOSTS: Final = 200_000


class Router:
    """Which worker owns a host, for the whole run: a host seen for the first time goes
    to the worker that has been given the fewest lines so far (a list of few hosts is
    shared out evenly, which a hash of 8 names rarely is), and stays there. Past
    ``remembered`` hosts, a new host goes by its name's hash instead."""

    __slots__ = ("_load", "_n", "_owner", "_remembered")

    def __init__(self, workers: int, remembered: int = REMEMBERED_HOSTS) -> None:
        self._n = workers
        self._owner: dict[str, int] = {}
        self._load = [0] * workers  # lines routed to each worker
        self._remembered = remembered

    def route(self, line: str) -> int:
        """The worker that owns the host of ``line``'s URL."""
        match = _PLAIN_HOST.match(line)
        host = match.group(1) if match is not None else host_of(line)
        owner = self._owner.get(host)
        if owner is None:
            owner = self._assign(host)
        self._load[owner] += 1
        return owner

    def _assign(self, host: str) -> int:
        if len(self._owner) >= self._remembered:
            return hash(host) % self._n
        load = self._load
        owner = self._owner[host] = load.index(min(load))
        return owner


def target_of(line: str) -> tuple[URL, str]:
    """A line's URL (a JSON request line's ``url``) and its host key, as the reader
    parses them; InvalidURL if it has none."""
    text = parse_request_line(line)[0] if line[:1] == "{" else line
    url, _, host = parse_target(text)
    return url, host


def host_of(line: str) -> str:
    """The host name of a line's URL, fully parsed; an invalid line is its own key (its
    ``invalid_url`` record is made by whichever worker gets it, once per distinct line)."""
    try:
        return target_of(line)[1].rpartition(":")[0]
    except errors.InvalidURL:
        return line


def frame(kind: int, payload: bytes | bytearray | memoryview = b"") -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame; ``asyncio.IncompleteReadError`` when the other side is gone
    (a frame cut short counts as never sent)."""
    head = await reader.readexactly(_HEAD.size)
    kind, size = _HEAD.unpack(head)
    return kind, await reader.readexactly(size) if size else b""


def lines_frame(batch: int, lines: list[str], kind: int = LINES) -> bytes:
    return frame(kind, _ID.pack(batch) + "\n".join(lines).encode("utf-8", "surrogatepass"))


def read_lines(payload: bytes) -> tuple[int, list[str]]:
    return _ID.unpack_from(payload)[0], payload[_ID.size :].decode("utf-8", "surrogatepass").split(
        "\n"
    )


def ids_frame(kind: int, batch: int, data: bytes) -> bytes:
    return frame(kind, _ID.pack(batch) + data)


def read_ids(payload: bytes) -> tuple[int, memoryview]:
    return _ID.unpack_from(payload)[0], memoryview(payload)[_ID.size :]


def fingerprints(fps: list[int]) -> bytes:
    return array("Q", fps).tobytes()


def read_fingerprints(data: bytes | memoryview) -> list[int]:
    out = array("Q")
    out.frombytes(data)
    return out.tolist()


def records_frame(fps: list[int], data: bytes | bytearray) -> bytes:
    return frame(RECORDS, _COUNT.pack(len(fps)) + array("Q", fps).tobytes() + data)


def read_records(payload: bytes) -> tuple[list[int], memoryview]:
    (n,) = _COUNT.unpack_from(payload)
    end = _COUNT.size + 8 * n
    return read_fingerprints(memoryview(payload)[_COUNT.size : end]), memoryview(payload)[end:]


def pickled(kind: int, value: object) -> bytes:
    return frame(kind, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


# -- statistics --------------------------------------------------------------------------
_COUNTERS: Final = (
    "done",
    "ok",
    "requests",
    "retries",
    "bytes",
    "skipped_duplicates",
    "skipped_done_before",
    "cancelled",
    "left_for_next_run",
    "dropped",
)


def count_frame(kind: int, n: int) -> bytes:
    return frame(kind, _ID.pack(n))


def read_count(payload: bytes) -> int:
    return int(_ID.unpack_from(payload)[0])


def tally(stats: Stats, in_flight: int, queued: int) -> dict[str, Any]:
    """A worker's counters and histograms, raw, so the coordinator can add them up
    (percentiles of the whole run come from the summed histograms, never averaged)."""
    out: dict[str, Any] = {name: getattr(stats, name) for name in _COUNTERS}
    out["by_status"] = dict(stats.by_status)
    out["by_error"] = dict(stats.by_error)
    out["latency"] = (stats.latency.counts, stats.latency.count, stats.latency.max)
    out["loop_lag"] = (stats.loop_lag.counts, stats.loop_lag.count, stats.loop_lag.max)
    out["in_flight"] = in_flight
    out["queued"] = queued
    out["peak_rss_mib"] = _peak_rss()
    out["crawl"] = stats.gauges.crawl_counts()
    return out


def _peak_rss() -> float:
    from crawler.stats import peak_rss_mib

    return peak_rss_mib()


def add_up(stats: Stats, tallies: list[dict[str, Any]]) -> None:
    """Set ``stats``' counters and histograms to the sums of the workers' ``tallies``."""
    for name in _COUNTERS:
        setattr(stats, name, sum(t[name] for t in tallies))
    stats.by_status.clear()
    stats.by_error.clear()
    for t in tallies:
        stats.by_status.update(t["by_status"])
        stats.by_error.update(t["by_error"])
    stats.latency = _merged([t["latency"] for t in tallies])
    stats.loop_lag = _merged([t["loop_lag"] for t in tallies])


def _merged(parts: list[tuple[list[int], int, float]]) -> Histogram:
    merged = Histogram()
    for counts, count, top in parts:
        merged.counts = [a + b for a, b in zip(merged.counts, counts, strict=True)]
        merged.count += count
        merged.max = max(merged.max, top)
    return merged
