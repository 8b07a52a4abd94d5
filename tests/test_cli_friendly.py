"""The command line a curl or httpx user expects (issue 13): URL arguments, ``-`` for
standard output, help that reads like a man page, completion, notes that explain a run."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
from pathlib import Path

import aiohttp
import orjson
import pytest

from crawler.helptext import human_size
from crawler.urls import suggest_url
from tests.conftest import Server
from tests.test_cli import CRAWLER, ENV, assert_no_traceback, lines, run

COMMANDS = ("", "fetch", "crawl", "serve", "bench")


async def run_in(cwd: Path, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER, *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=cwd,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 45)
    assert proc.returncode is not None
    return proc.returncode, out, err


# -- URL arguments ------------------------------------------------------------------------


async def test_fetch_takes_urls_files_and_stdin_as_arguments(
    server: Server, tmp_path: Path
) -> None:
    listed = tmp_path / "urls.txt"
    listed.write_text(server.url("/ok/file") + "\n")
    stdin = (server.url("/ok/stdin") + "\n").encode()
    code, out, err = await run(
        "fetch", server.url("/ok/arg"), str(listed), "-", "ftp://x/", "--no-progress", stdin=stdin
    )
    assert code == 0, err.decode()
    records = {r["url"]: r for r in lines(out)}
    assert set(records) == {
        server.url("/ok/arg"), server.url("/ok/file"), server.url("/ok/stdin"), "ftp://x/"
    }  # fmt: skip
    assert records[server.url("/ok/arg")]["ok"] is True
    assert records["ftp://x/"]["error"]["kind"] == "invalid_url"  # type: ignore[index]
    assert server.rec.hits["/ok/arg"] == 1
    assert b"reading URLs from standard input" not in err  # stdin is a pipe here
    assert_no_traceback(err)


async def test_only_url_arguments_do_not_read_stdin(server: Server) -> None:
    code, out, _ = await run("fetch", server.url("/ok/1"), "-q", stdin=b"http://127.0.0.1:1/x\n")
    assert code == 0
    assert [r["url"] for r in lines(out)] == [server.url("/ok/1")]


@pytest.mark.parametrize("command", ["fetch", "crawl"])
async def test_a_bare_host_argument_is_a_usage_error_with_the_url_it_meant(
    command: str, tmp_path: Path
) -> None:
    code, out, err = await run_in(tmp_path, command, "example.org/docs", "-q")
    assert code == 2 and out == b""
    assert err.decode() == (
        "crawler: error: 'example.org/docs' is neither a file nor a URL: "
        "did you mean https://example.org/docs?\n"
    )


async def test_an_argument_is_a_file_when_it_exists_and_a_hint_only_if_host_like(
    server: Server, tmp_path: Path
) -> None:
    code, _, err = await run_in(tmp_path, "fetch", "example.org", "-q")
    assert code == 2 and b"did you mean https://example.org?" in err
    (tmp_path / "example.org").write_text(server.url("/ok/from-file") + "\n")
    code, out, err = await run_in(tmp_path, "fetch", "example.org", "-q")
    assert code == 0, err.decode()
    assert [r["url"] for r in lines(out)] == [server.url("/ok/from-file")]
    code, _, err = await run_in(tmp_path, "fetch", "urls.txt")  # a list file, missing
    assert code == 2
    assert err.decode() == (
        "crawler: error: cannot read input 'urls.txt': No such file or directory\n"
    )


async def test_an_input_line_without_scheme_gets_the_hint_in_its_record() -> None:
    code, out, _ = await run("fetch", "-q", stdin=b"example.org\nlocalhost:8080/x\nnope\n")
    assert code == 0
    messages = {r["url"]: r["error"]["message"] for r in lines(out)}  # type: ignore[index]
    assert messages["example.org"] == "not an absolute URL: did you mean https://example.org?"
    assert messages["localhost:8080/x"].endswith("did you mean http://localhost:8080/x?")
    assert "did you mean" not in messages["nope"]


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("example.org", "https://example.org"),
        ("www.example.co.uk/a?b=1", "https://www.example.co.uk/a?b=1"),
        ("example.org:8443/x", "https://example.org:8443/x"),
        ("//example.org/", "https://example.org/"),
        ("localhost", "http://localhost"),
        ("127.0.0.1:8080/page/1", "http://127.0.0.1:8080/page/1"),
        ("urls.txt", None),
        ("out.jsonl.gz", None),
        ("dir/urls", None),
        ("nope", None),
        ("https://example.org", None),
        ("with space.org", None),
    ],
)
def test_suggest_url(text: str, meant: str | None) -> None:
    assert suggest_url(text) == meant


# -- '-' for standard output -------------------------------------------------------------


async def test_output_dash_is_standard_output(server: Server, tmp_path: Path) -> None:
    code, out, err = await run_in(tmp_path, "fetch", server.url("/ok/1"), "-o", "-", "-q")
    assert code == 0, err.decode()
    assert [r["url"] for r in lines(out)] == [server.url("/ok/1")]
    assert not (tmp_path / "-").exists()


async def test_stats_json_dash_writes_the_summary_to_stdout(server: Server, tmp_path: Path) -> None:
    code, out, err = await run_in(
        tmp_path, "fetch", server.url("/ok/1"), "-o", "out.jsonl", "--stats-json", "-", "-q"
    )
    assert code == 0, err.decode()
    assert orjson.loads(out)["urls_done"] == 1
    assert len(lines((tmp_path / "out.jsonl").read_bytes())) == 1
    assert not (tmp_path / "-").exists()


async def test_stats_json_dash_with_records_on_stdout_is_refused(
    server: Server, tmp_path: Path
) -> None:
    for extra in ((), ("-o", "-")):
        code, out, err = await run_in(
            tmp_path, "fetch", server.url("/ok/1"), "--stats-json", "-", *extra
        )
        assert code == 2 and out == b""
        assert err.decode() == (
            "crawler: error: --stats-json - needs -o PATH: standard output carries the "
            "records (or give --stats-json a file)\n"
        )
    assert server.rec.hits["/ok/1"] == 0
    assert not (tmp_path / "-").exists()


# -- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
async def test_help_reads_like_a_man_page(command: str) -> None:
    code, out, err = await run(*([command] if command else []), "--help")
    assert code == 0 and err == b""
    text = out.decode()
    assert not re.search(r"<(int|float|str|text|list|path|bool)\b", text, re.IGNORECASE), text
    assert "[[" not in text and "range>" not in text
    assert "x>=" not in text and "<=x" not in text  # click's raw range notation
    assert "\nExamples:\n" in text and "\nExit status:\n" in text
    assert re.search(r"^  2 +usage error", text, re.MULTILINE)
    # Every option that takes a value has a metavar a person would write.
    for line in text.splitlines():
        match = re.match(r"  (-\w, )?(--[\w-]+)(?: / --[\w-]+)? ([^ ].*?)(  |$)", line)
        if match and not match[3].startswith(("Show", "Print", "Install")):
            assert "<" not in match[3], line


async def test_fetch_help_shows_sizes_defaults_and_repeatable_options() -> None:
    code, out, _ = await run("fetch", "--help")
    assert code == 0
    text = " ".join(out.decode().split())  # unwrapped
    assert "Usage: crawler fetch [OPTIONS] [URL|FILE]..." in text
    assert (
        "--max-bytes SIZE Max body size, decompressed (bytes, or 512k, 10M, 1G). "
        + ("[default: 10M]")
        in text
    )
    assert "--warc-max-size SIZE" in text and "[default: 1G]" in text
    assert "10485760" not in text and "1073741824" not in text
    for option, default in [
        ("-c, --concurrency N", "64"),
        ("--per-host N", "8"),
        ("--timeout S", "30"),
        ("--retries N", "2"),
        ("-o, --output PATH", "stdout"),
        ("--user-agent UA", "crawler/VERSION"),
        ("--progress / --no-progress", "when stderr is a terminal"),
        ("--adaptive / --no-adaptive", "--no-adaptive"),
    ]:
        assert re.search(re.escape(option) + r" [^[]*\[default: " + re.escape(default), text), (
            option
        )
    for option in ("-H, --header 'NAME: VALUE'", "--resolve NAME:ADDRESS", "--secret-header NAME"):
        assert re.search(re.escape(option) + r" [^[]*?Repeatable\.", text), option


def test_human_size() -> None:
    assert [human_size(n) for n in (512, 1024, 10 << 20, 1 << 30, 1536)] == [
        "512", "1k", "10M", "1G", "1536"
    ]  # fmt: skip


async def test_bare_crawler_prints_help_and_exits_0() -> None:
    code, out, err = await run()
    assert code == 0 and err == b""
    text = out.decode()
    assert text.startswith("Usage: crawler [OPTIONS] COMMAND [ARGS]...")
    assert "\nCommands:\n" in text and "\nExamples:\n" in text


async def test_show_completion_prints_a_bash_script(tmp_path: Path) -> None:
    env = {**ENV, "SHELL": "/bin/bash", "HOME": str(tmp_path)}  # nothing installed anywhere
    for args in (("--show-completion", "bash"), ("--show-completion",)):
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert b"_crawler_completion()" in out and b"complete " in out
        assert b"_CRAWLER_COMPLETE=complete_bash" in out
    assert list(tmp_path.iterdir()) == []
    # ...and the script's callback completes options of a command.
    env |= {"_CRAWLER_COMPLETE": "complete_bash", "COMP_WORDS": "crawler fetch --per-h"}
    env["COMP_CWORD"] = "2"
    proc = await asyncio.create_subprocess_exec(*CRAWLER, stdout=subprocess.PIPE, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.split() == [b"--per-host", b"--per-host-rps"]


# -- notes on stderr ----------------------------------------------------------------------

NOTE = b"the per-host limit (--per-host 8), not -c 50, bounds the requests in flight"


async def test_a_note_says_once_when_per_host_not_c_binds(server: Server) -> None:
    urls = "".join(server.url(f"/ok/{i}") + "\n" for i in range(40)).encode()
    code, out, err = await run("fetch", "-c", "50", "--no-progress", stdin=urls)
    assert code == 0 and len(lines(out)) == 40
    assert err.count(b"crawler: note:") == 1 and NOTE in err, err.decode()
    code, _, err = await run("fetch", "-c", "50", "-q", stdin=urls)  # -q: nothing
    assert code == 0 and err == b""
    code, _, err = await run("fetch", "-c", "4", "--no-progress", stdin=urls)  # -c binds
    assert code == 0 and b"note:" not in err
    # Paced: URLs wait for their pacer, not for a slot; the note would mislead.
    code, _, err = await run(
        "fetch", "-c", "50", "--per-host-rps", "200", "--no-progress", stdin=urls
    )
    assert code == 0 and b"note:" not in err


async def test_waiting_on_a_terminal_says_it_reads_stdin() -> None:
    for args, noted in ((("fetch", "--no-progress"), True), (("fetch", "-q"), False)):
        master, slave = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                *CRAWLER, *args, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=ENV,
            )  # fmt: skip
        finally:
            os.close(slave)
        try:
            assert proc.stderr is not None
            if noted:
                line = await asyncio.wait_for(proc.stderr.readline(), 30)
                assert line.startswith(b"crawler: reading URLs from standard input")
            os.write(master, b"\x04")  # Ctrl-D: end of input
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0 and out == b""
            if not noted:
                assert err == b""
        finally:
            os.close(master)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- crawler serve ------------------------------------------------------------------------


async def test_serve_lists_its_routes_and_logs_requests() -> None:
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER, "serve", "--port", "0", "--access-log",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        base = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/") as resp:
                assert resp.status == 200
                index = await resp.text()
            async with session.get(base + "/status/418") as resp:
                assert resp.status == 418
        for route in ("/page/", "/status/", "/redirect/", "/drip/", "/gzip/", "/unique/", "/site/"):
            assert route in index
        assert f"crawler fetch {base}/page/1" in index
        first = await asyncio.wait_for(proc.stderr.readline(), 30)
        second = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert re.match(rb'127\.0\.0\.1 - - \[.*\] "GET / HTTP/1\.1" 200 \d+\n', first), first
        assert b'"GET /status/418 HTTP/1.1" 418' in second
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
