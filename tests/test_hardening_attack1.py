"""Issue 12, attacked end to end as a hostile server operator and a careless user would:
what got through the fixes. Real subprocesses against real loopback servers."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.conftest import Server, until
from tests.test_cli import ENV, assert_no_traceback
from tests.test_hardening_cli import holds_lock, run, start

CRAWLER = [sys.executable, "-m", "crawler"]


async def _cli(
    args: list[str], *, stdin: Path | None = None, stdout: Path | None = None
) -> tuple[int, bytes]:
    """The CLI with stdin and stdout opened on files, as a shell's `<` and `>>` do:
    (exit status, stderr)."""
    with (
        stdin.open("rb") if stdin is not None else open("/dev/null", "rb") as fin,
        stdout.open("ab") if stdout is not None else open("/dev/null", "wb") as fout,
    ):
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, *args, stdin=fin, stdout=fout, stderr=subprocess.PIPE, env=ENV
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode is not None
    assert_no_traceback(err)
    return proc.returncode, err


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def site() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Starts an aiohttp server on 127.0.0.1 for one handler; yields its port."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        return int(tcp._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


# -- stdin and stdout are files of the run too ----------------------------------------------
@pytest.mark.parametrize(
    ("args", "via_stdout"),
    [
        (["fetch", "-o", "{in}"], False),  # `crawler fetch -o urls.txt < urls.txt`
        (["fetch", "-", "-o", "{in}"], False),
        (["crawl", "-o", "{in}"], False),
        (["fetch", "-", "--stats-json", "{in}"], False),
        (["fetch", "-", "--warc", "{in}"], False),
        (["fetch", "{in}"], True),  # `crawler fetch urls.txt >> urls.txt`
        (["fetch", "{in}", "--state", "{in}.db"], True),  # `... --state s.db >> s.db`
    ],
)
async def test_a_file_behind_stdin_or_stdout_is_never_overwritten(
    server: Server, tmp_path: Path, args: list[str], via_stdout: bool
) -> None:
    """The shell opened the file (`< urls.txt`, `>> urls.txt`): crawler sees no name, but
    writing records into its own input destroys it (or feeds them back as URLs)."""
    src = tmp_path / "urls.txt"
    text = "".join(server.url(f"/ok/{i}") + "\n" for i in range(3))
    src.write_text(text)
    target = src
    if "{in}.db" in args:
        target = tmp_path / "urls.txt.db"
        target.write_bytes(b"")
    argv = [a.replace("{in}", str(src)) for a in args] + ["-q", "--timeout", "5"]
    code, err = await _cli(
        argv, stdin=None if via_stdout else src, stdout=target if via_stdout else None
    )
    assert code == 2, err
    assert err.startswith(b"crawler: error: ") and err.count(b"\n") == 1, err
    assert src.read_text() == text
    assert target.read_text() == ("" if target != src else text)
    assert server.rec.hits.total() == 0


async def test_stdin_and_stdout_on_other_files_still_work(server: Server, tmp_path: Path) -> None:
    src, out = tmp_path / "urls.txt", tmp_path / "out.jsonl"
    src.write_text(server.url("/ok/1") + "\n")
    code, err = await _cli(["fetch", "-q", "--timeout", "5"], stdin=src, stdout=out)
    assert code == 0, err
    assert out.read_bytes().count(b"\n") == 1


# -- a URL's user:password ------------------------------------------------------------------
async def test_userinfo_of_a_url_stays_out_of_the_warc(
    site: Callable[[Handler], Awaitable[int]], tmp_path: Path
) -> None:
    """`http://user:pass@host/` is sent as Basic auth (like curl); the WARC file, which is
    shared and replayed, names neither the password nor the Authorization value."""
    seen: list[str] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(text='<html><a href="/next">n</a></html>', content_type="text/html")

    port = await site(page)
    warc = tmp_path / "out.warc.gz"
    seed = f"http://alice:pw0rd@127.0.0.1:{port}/"
    code, err = await _cli(
        ["crawl", seed, "-q", "--ignore-robots", "--warc", str(warc), "--timeout", "10"]
    )
    assert code == 0, err
    token = base64.b64encode(b"alice:pw0rd")
    assert seen == ["Basic " + token.decode()] * 2  # sent, to the seed's origin
    data = gzip.decompress(warc.read_bytes())
    assert b"pw0rd" not in data and token not in data
    assert data.count(f"WARC-Target-URI: http://127.0.0.1:{port}/".encode()) == 4


# -- one run per state file, whatever its name ----------------------------------------------
@pytest.mark.timeout(300)
async def test_a_symlink_to_a_state_file_in_use_is_refused(server: Server, tmp_path: Path) -> None:
    """`--state link` where link -> s.db: the lock was `link.lock`, so a second run on the
    same database ran beside the first (both exit 0, one output written twice at once)."""
    src, out, state = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "s.db"
    link = tmp_path / "link.db"
    link.symlink_to(state.name)
    src.write_text("".join(server.url(f"/hang/{i}") + "\n" for i in range(3)))
    common = ("fetch", str(src), "-o", str(out), "-q", "--timeout", "600")
    first = await start(*common, "--state", str(state))
    try:
        await until(lambda: holds_lock(Path(f"{state}.lock"), first.pid), timeout=30)
        code, stdout, err = await run(*common, "--state", str(link))
        assert code == 2 and stdout == b"", err
        assert b"in use by another run" in err and f"pid {first.pid}".encode() in err
    finally:
        server.rec.release.set()
        _, first_err = await asyncio.wait_for(first.communicate(), 120)
    assert first.returncode == 0, first_err
    assert sorted(line.count(b"/hang/") for line in out.read_bytes().splitlines()) == [2] * 3


async def test_a_state_file_with_two_names_is_refused(server: Server, tmp_path: Path) -> None:
    """A hard link is another name: another lock, and SQLite would keep a second -wal
    beside it for the same database."""
    src, out, state = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "s.db"
    src.write_text(server.url("/ok/1") + "\n")
    common = ("fetch", str(src), "-o", str(out), "-q")
    code, _, err = await run(*common, "--state", str(state))
    assert code == 0, err
    data = out.read_bytes()
    os.link(state, tmp_path / "copy.db")
    for name in (tmp_path / "copy.db", state):
        code, stdout, err = await run(*common, "--state", str(name))
        assert code == 2 and stdout == b"", err
        assert b"hard link" in err and err.count(b"\n") == 1, err
    assert out.read_bytes() == data
    assert not (tmp_path / "copy.db-wal").exists()


# -- --state with an output that is not a regular file -------------------------------------
@pytest.mark.parametrize("output", ["/dev/null", "/dev/stdout"])
async def test_state_with_a_device_or_pipe_as_output(
    server: Server, tmp_path: Path, output: str
) -> None:
    """`-o /dev/null --state s.db` (or `-o /dev/stdout` into a pipe): the checkpoint's
    fsync failed (EINVAL) after the records went out, exit 2, and every resume failed
    cutting the output back. Written as plain stdout is: no fsync, nothing to cut."""
    src, state = tmp_path / "urls.txt", tmp_path / "s.db"
    src.write_text("".join(server.url(f"/ok/{i}") + "\n" for i in range(3)))
    args = ("fetch", str(src), "-o", output, "--state", str(state), "-q")
    code, stdout, err = await run(*args)
    assert code == 0 and err == b"", err
    assert stdout.count(b"\n") == (3 if output == "/dev/stdout" else 0)
    code, stdout, err = await run(*args)  # resumed: every URL is done
    assert code == 0 and err == b"" and stdout == b"", err
    assert server.rec.hits.total() == 3


@pytest.mark.parametrize("state", [False, True])
async def test_warc_to_a_device_or_pipe(server: Server, tmp_path: Path, state: bool) -> None:
    """`--warc /dev/null` failed every run at its first sync (fsync: EINVAL), and a
    resumed run "started a new file" beside it (/dev/null-00001)."""
    from warcio.archiveiterator import ArchiveIterator

    src, out = tmp_path / "urls.txt", tmp_path / "out.jsonl"
    src.write_text("".join(server.url(f"/ok/{i}") + "\n" for i in range(3)))
    for n, warc in enumerate(("/dev/null", "/dev/stdout")):
        args = ["fetch", str(src), "-o", str(out), "--warc", warc, "--warc-max-size", "1k", "-q"]
        if state:
            args += ["--state", str(tmp_path / f"s{n}.db")]
        code, stdout, err = await run(*args)
        assert code == 0 and err == b"", err
        assert server.rec.hits.total() == 3 * (n + 1)
        if warc == "/dev/stdout":
            archive = ArchiveIterator(io.BytesIO(stdout))
            assert sum(r.rec_type == "response" for r in archive) == 3
        if state:  # resumed: nothing left to do
            code, _, err = await run(*args)
            assert code == 0 and err == b"", err
            assert server.rec.hits.total() == 3 * (n + 1)
    assert not Path("/dev/null-00001").exists()


async def test_warc_to_stdout_redirected_to_a_file_never_rotates_into_dev(
    server: Server, tmp_path: Path
) -> None:
    """`--warc /dev/stdout` with stdout redirected to a file: the file is regular, but
    its name is a stream's; rotating made /dev/stdout-00001 in /dev. All of it goes to
    the one file the user gave."""
    from warcio.archiveiterator import ArchiveIterator

    src, out, warc = tmp_path / "urls.txt", tmp_path / "out.jsonl", tmp_path / "all.warc"
    src.write_text("".join(server.url(f"/ok/{i}") + "\n" for i in range(3)))
    args = ["fetch", str(src), "-o", str(out), "--warc", "/dev/stdout", "--warc-max-size", "1k"]
    with open(warc, "wb") as stdout:
        done = await asyncio.create_subprocess_exec(
            *CRAWLER, *args, "-q", stdout=stdout, stderr=subprocess.PIPE, env=ENV
        )
        _, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0 and err == b"", err
    assert not Path("/dev/stdout-00001").exists()
    with open(warc, "rb") as fh:
        assert sum(r.rec_type == "response" for r in ArchiveIterator(fh)) == 3


# -- a status line the parser takes but HTTP has no such status --------------------------------
async def test_a_status_below_100_is_a_protocol_error() -> None:
    """llhttp takes any three digits: `HTTP/1.1 000 X` was `ok: true`, status 0."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        code = head.split(b" ")[1].strip(b"/")
        writer.write(
            b"HTTP/1.1 " + code + b" X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        codes = ("000", "001", "099", "200")
        urls = "".join(f"http://127.0.0.1:{port}/{c}\n" for c in codes)
        code, stdout, err = await run("fetch", "-q", "--retries", "0", stdin=urls.encode())
    finally:
        raw.close()
        await raw.wait_closed()
    assert code == 0, err
    records = {r["url"][-3:]: r for r in map(orjson.loads, stdout.splitlines())}
    assert records["200"]["ok"] is True
    for c in codes[:-1]:
        assert records[c]["ok"] is False and records[c]["error"]["kind"] == "protocol", records[c]
