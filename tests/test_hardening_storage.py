"""Storage hardening (issue 12): a committed URL's WARC record and body file survive a
SIGKILL, a failed writer commits nothing more, stacked Content-Encodings stay in the WARC
headers, and the writer processes die with their parent."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from warcio.archiveiterator import ArchiveIterator

from crawler.warc import WarcItem, _WarcWriter
from tests.site import serve_site
from tests.test_cli import ENV, assert_no_traceback
from tests.test_crawl_cli import gen_expected
from tests.test_resume import parse_output

CRAWLER = [sys.executable, "-m", "crawler"]


async def start(
    *args: str, session: bool = False, stderr: int = subprocess.PIPE
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CRAWLER, *args, stdout=subprocess.DEVNULL, stderr=stderr, env=ENV,
        start_new_session=session,
    )  # fmt: skip


def committed_offset(state: Path) -> int | None:
    """The output bytes the state file has committed (None while it cannot be read)."""
    if not state.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT offset FROM output WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row else 0


async def wait_for_checkpoint(proc: asyncio.subprocess.Process, state: Path, after: int) -> None:
    """Bounded: until the run commits past ``after`` output bytes, or ends."""
    for _ in range(3000):
        if proc.returncode is not None:
            return
        offset = committed_offset(state)
        if offset is not None and offset > after:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.01)


def warc_pages(files: list[Path], *, torn_tail: bool = False) -> list[str]:
    """Target URIs of every response record; reading each file to its end must not fail
    (unless ``torn_tail``: a writer killed mid-write, nobody has repaired the file yet)."""
    uris = []
    for path in files:
        with path.open("rb") as fh:
            try:
                uris.extend(
                    r.rec_headers.get_header("WARC-Target-URI")
                    for r in ArchiveIterator(fh)
                    if r.rec_type == "response"
                )
            except Exception:
                if not torn_tail:
                    raise
    return uris


def warcio_check(path: Path) -> None:
    """``warcio check`` (digests and record structure), when the tool is installed."""
    done = subprocess.run(
        [sys.executable, "-m", "warcio.cli", "check", str(path)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(400)
async def test_warc_holds_every_committed_page_across_repeated_sigkills(tmp_path: Path) -> None:
    """Each run is SIGKILLed just after a checkpoint shows in the state file (plus a
    seeded random moment), so kills land mid-crawl with WARC batches in flight; small
    --warc-max-size makes files rotate in every run."""
    rng = random.Random(12)
    out, state, warc = tmp_path / "out.jsonl", tmp_path / "st.db", tmp_path / "w.warc.gz"
    async with serve_site(gen_size=300, gen_delay=0.03) as site:
        args = ("crawl", site.url("/gen/0"), "-o", str(out), "--state", str(state),
                "--warc", str(warc), "--warc-max-size", "48k", "-c", "4", "-q",
                "--ignore-robots")  # fmt: skip
        landed = 0
        for _ in range(4):
            before = committed_offset(state) or 0
            # No pipe to the killed runs: asyncio's wait() waits for pipes to close too.
            proc = await start(*args, stderr=subprocess.DEVNULL)
            await wait_for_checkpoint(proc, state, before)
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), rng.uniform(0.0, 0.4))
            if proc.returncode is None:
                landed += 1
                proc.kill()
            await proc.wait()
        proc = await start(*args)
        _, err = await asyncio.wait_for(proc.communicate(), 240)
        assert proc.returncode == 0, err
        expected = gen_expected(site, 300)
    records = parse_output(out.read_bytes())
    assert sorted(r["url"] for r in records) == expected  # every URL exactly once
    files = sorted(tmp_path.glob("w*.warc.gz"))
    pages = set(warc_pages(files))  # every file reads whole: torn tails were cut
    missing = {r["final_url"] for r in records} - pages
    assert not missing, f"{len(missing)} committed pages missing from the WARC files"
    assert landed >= 2  # the kills really landed mid-run
    for path in files[-2:]:
        warcio_check(path)


async def _site_writer_children(pid: int) -> list[tuple[int, str]]:
    """Bounded wait until ``pid`` has its writer processes; (pid, start time) of every
    child it has then (writers and multiprocessing's resource tracker)."""
    found: list[tuple[int, str]] = []
    for _ in range(2000):
        found = []
        writers = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid:  # PPID
                found.append((int(entry), fields[19]))  # starttime
                writers += b"spawn_main" in cmdline
        if writers >= 2:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"the writers never started: {found}")


def _alive(pid: int, started: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and fields[19] == started  # a zombie is dead; a reused pid too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(180)
async def test_sigkill_of_the_parent_leaves_no_writer_process(tmp_path: Path) -> None:
    async with serve_site(gen_size=2000, gen_delay=0.05) as site:
        proc = await start(
            "crawl", site.url("/gen/0"), "--ignore-robots", "-c", "2", "-q",
            "--warc", str(tmp_path / "k.warc.gz"), "--save-dir", str(tmp_path / "b"),
            session=True,
        )  # fmt: skip
        try:
            children = await _site_writer_children(proc.pid)
            proc.kill()
            await proc.wait()
            for _ in range(1000):  # bounded: 10 s where the bug is "forever"
                left = [pid for pid, started in children if _alive(pid, started)]
                if not left:
                    break
                await asyncio.sleep(0.01)
            assert not left, f"children of the killed run still running: {left}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # only our own session


# -- stacked Content-Encoding ------------------------------------------------------------
BODY = b"<html>" + b"stacked encodings " * 200 + b"</html>"
ONCE = gzip.compress(BODY, mtime=0)
TWICE = gzip.compress(ONCE, mtime=0)


def _response(headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


RESPONSES = {
    # One header, two codings: the fetcher decodes nothing (not one coding it knows).
    "/one-header": _response([("Content-Encoding", "gzip, gzip")], TWICE),
    # Two fields: the fetcher decodes neither (a list it does not undo), both stay.
    "/two-headers": _response(
        [("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")],
        TWICE,
    ),
    "/single": _response([("Content-Encoding", "gzip")], ONCE),
    # Two fields again, even if one is identity: kept as sent.
    "/mixed": _response([("Content-Encoding", "gzip"), ("Content-Encoding", "identity")], ONCE),
}


def undo(codings: list[str], payload: bytes) -> bytes:
    """Undo Content-Encoding header values, last applied first."""
    for coding in reversed([c.strip().lower() for value in codings for c in value.split(",")]):
        assert coding in ("gzip", "identity"), coding
        if coding == "gzip":
            payload = gzip.decompress(payload)
    return payload


@contextlib.asynccontextmanager
async def raw_server() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            path = line.split()[1].decode() if len(line.split()) > 1 else "/"
            writer.write(RESPONSES.get(path, _response([], b"none")))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(180)
async def test_warc_keeps_the_content_encodings_that_were_not_decoded(tmp_path: Path) -> None:
    urls, warc = tmp_path / "urls.txt", tmp_path / "e.warc.gz"
    async with raw_server() as base:
        urls.write_text("".join(f"{base}{path}\n" for path in RESPONSES))
        proc = await start("fetch", str(urls), "--warc", str(warc), "-q")
        _, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 0, err
    assert_no_traceback(err)
    seen = {}
    with warc.open("rb") as fh:
        for rec in ArchiveIterator(fh):
            if rec.rec_type != "response":
                continue
            path = "/" + rec.rec_headers.get_header("WARC-Target-URI").split("/", 3)[3]
            headers = rec.http_headers.headers
            kept = [v for k, v in headers if k.lower() == "content-encoding"]
            renamed = [v for k, v in headers if k.lower() == "x-crawler-original-content-encoding"]
            raw = rec.raw_stream.read()
            assert int(rec.http_headers.get_header("Content-Length")) == len(raw)
            seen[path] = (kept, renamed, raw)
    # What the headers still name is exactly what is left on the payload.
    assert sorted(seen) == sorted(RESPONSES)
    for path, (kept, _, raw) in seen.items():
        assert undo(kept, raw) == BODY, path
    assert seen["/one-header"] == (["gzip, gzip"], [], TWICE)
    assert seen["/two-headers"] == (["gzip", "gzip"], [], TWICE)
    assert seen["/single"] == ([], ["gzip"], BODY)
    assert seen["/mixed"] == (["gzip", "identity"], [], ONCE)
    warcio_check(warc)
    # warcio's own decoding (as a replay tool does) gets the page back from each.
    with warc.open("rb") as fh:
        for rec in ArchiveIterator(fh):
            uri = rec.rec_headers.get_header("WARC-Target-URI")
            if rec.rec_type == "response" and not uri.endswith(
                ("/one-header", "/two-headers", "/mixed")
            ):
                assert rec.content_stream().read() == BODY


# -- a writer that dies ------------------------------------------------------------------
@pytest.mark.timeout(180)
async def test_a_dead_warc_writer_fails_the_run_and_commits_nothing_after(tmp_path: Path) -> None:
    out, state, warc = tmp_path / "out.jsonl", tmp_path / "st.db", tmp_path / "d.warc.gz"
    async with serve_site(gen_size=400, gen_delay=0.03) as site:
        proc = await start(
            "crawl", site.url("/gen/0"), "-o", str(out), "--state", str(state),
            "--warc", str(warc), "-c", "4", "-q", "--ignore-robots", session=True,
        )  # fmt: skip
        try:
            await wait_for_checkpoint(proc, state, 0)
            assert proc.returncode is None
            writer = [pid for pid, _ in await _children_running(proc.pid, b"spawn_main")]
            assert len(writer) == 1
            os.kill(writer[0], signal.SIGKILL)
            _, err = await asyncio.wait_for(proc.communicate(), 150)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    assert b"warc writer" in err and err.count(b"\n") == 1, err
    assert_no_traceback(err)
    offset = committed_offset(state)
    assert offset is not None and offset > 0
    committed = parse_output(out.read_bytes()[:offset])
    pages = set(warc_pages([warc], torn_tail=True))
    missing = {r["final_url"] for r in committed} - pages
    assert not missing, f"{len(missing)} pages committed after their WARC records were lost"


async def _children_running(pid: int, marker: bytes) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and marker in cmdline:
                found.append((int(entry), fields[19]))
    return found


# -- a torn WARC tail, cut on resume ------------------------------------------------------
def _item(n: int, size: int) -> WarcItem:
    body = (f"page {n} ".encode() * (size // 7 + 1))[:size]
    return (f"http://127.0.0.1/{n}", "GET", [("Host", "127.0.0.1")], "HTTP/1.1", 200, "OK",
            [("Content-Type", "text/html")], body)  # fmt: skip


def test_resume_cuts_a_torn_tail_at_any_byte_and_keeps_every_whole_record(
    tmp_path: Path,
) -> None:
    whole = tmp_path / "whole.warc.gz"
    writer = _WarcWriter(str(whole), 1 << 30, False)
    writer.start()
    writer.write([_item(n, 300 + 40_000 * (n % 2)) for n in range(6)])
    writer.close()
    data = whole.read_bytes()
    ends = []  # where each record (gzip member) ends
    pos = 0
    while pos < len(data):
        inflater = zlib.decompressobj(31)
        inflater.decompress(data[pos:])
        pos = len(data) - len(inflater.unused_data)
        ends.append(pos)
    assert len(ends) == 13  # warcinfo, then a response and a request per page
    # Every cut in the last record, every 7th byte in the three before, a few elsewhere.
    cuts = [*range(ends[11], len(data) + 1), *range(ends[8], ends[11], 7)]
    cuts += [ends[0] - 1, ends[0] + 1, 10, 1]
    for cut in cuts:
        torn = tmp_path / "torn.warc.gz"
        torn.write_bytes(data[:cut])
        # The resumed run: the torn file is cut back, the new run writes the next one.
        resumed = _WarcWriter(str(torn), 1 << 30, True)
        resumed.start()
        resumed.write([_item(99, 500)])
        resumed.close()
        kept = max((end for end in ends if end <= cut), default=0)
        if kept:
            assert torn.read_bytes() == data[:kept], cut
        files = sorted(tmp_path.glob("torn*.warc.gz"))
        pages = warc_pages(files)  # every file reads to its end
        assert "http://127.0.0.1/99" in pages
        assert len(pages) == sum(1 for end in ends[1::2] if end <= cut) + 1, cut
        for path in files:
            path.unlink()


def test_resume_leaves_a_file_that_is_not_our_warc_alone(tmp_path: Path) -> None:
    for content in (gzip.compress(b"someone else's data " * 100)[:-7], b"plain text\n", b""):
        theirs = tmp_path / "x.warc.gz"
        theirs.write_bytes(content)
        resumed = _WarcWriter(str(theirs), 1 << 30, True)
        resumed.start()
        resumed.close()
        if content:
            assert theirs.read_bytes() == content
            assert (tmp_path / "x-00001.warc.gz").exists()
        else:  # an empty file: what a run killed before its first write leaves; reused
            assert warc_pages([theirs]) == []
        for path in tmp_path.glob("x*.warc.gz"):
            path.unlink()


@pytest.mark.timeout(180)
async def test_a_body_that_cannot_be_stored_fails_the_run_and_is_never_committed(
    tmp_path: Path,
) -> None:
    """One body's folder is taken by a file: that batch fails, later ones would succeed.
    The failure must stick, or the shutdown flush commits the record of a missing body."""
    out, state, bodies = tmp_path / "out.jsonl", tmp_path / "st.db", tmp_path / "bodies"
    async with serve_site(gen_size=400) as site:
        digests = []
        async with aiohttp.ClientSession() as session:
            for i in range(400):
                async with session.get(site.url(f"/gen/{i}")) as resp:
                    digests.append(hashlib.sha256(await resp.read()).hexdigest())
        # An early page whose folder no other page shares: only its batch fails.
        folders = collections.Counter(d[:2] for d in digests)
        blocked = next(d[:2] for d in digests[:100] if folders[d[:2]] == 1)
        bodies.mkdir()
        (bodies / blocked).write_text("in the way")
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(site.url(f"/gen/{i}") + "\n" for i in range(400)))
        proc = await start(
            "fetch", str(urls), "-o", str(out), "--state", str(state), "--save-dir",
            str(bodies), "-c", "4", "-q",
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 150)
    assert proc.returncode == 2, err
    assert err.count(b"\n") == 1, err
    assert_no_traceback(err)
    offset = committed_offset(state)
    assert offset is not None
    for record in parse_output(out.read_bytes()[:offset]):
        path = Path(str(record["body_path"]))
        assert path.is_file(), f"committed {record['url']} names a missing body"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]


def test_the_warc_writer_knows_what_the_fetcher_decodes() -> None:
    from crawler import body, warc

    assert warc.DECODED is body.DECODED  # one constant (crawler.response), not a copy
