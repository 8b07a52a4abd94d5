"""Messages that reach the user name the file and give the OS's reason; problems with a
file the run will write are found before the run; `crawler bench` does not report the
throughput of a run whose URLs failed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.faultserver import closed_port
from tests.test_cli import ENV, assert_no_traceback, run

NOBODY = 65534


def one_line(err: bytes) -> str:
    assert err.count(b"\n") == 1 and err.startswith(b"crawler: error: "), err
    assert_no_traceback(err)
    return err.decode()


# -- crawler bench ------------------------------------------------------------------------------
async def test_bench_where_every_url_failed_exits_1_without_figures() -> None:
    target = f"http://127.0.0.1:{closed_port()}"
    for fmt in ([], ["--json"]):
        code, out, err = await run("bench", "-n", "20", "--retries", "0", "--target", target, *fmt)
        assert code == 1, err.decode()
        assert out == b""  # no URLs/s of nothing
        message = one_line(err)
        assert "20 of 20 URLs failed" in message and target in message


async def test_bench_target_without_a_scheme_is_refused() -> None:
    for target in ("127.0.0.1:8080", "localhost:8080/x"):
        code, out, err = await run("bench", "-n", "5", "--target", target)
        assert code == 2 and out == b""
        assert "--target" in one_line(err)


# -- disk full: /dev/full fails every write with ENOSPC -----------------------------------------
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


@needs_dev_full
async def test_disk_full_on_the_output_names_it(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("/ok/1") + "\n")
    code, _, err = await run("fetch", str(urls), "-o", "/dev/full", "-q")
    assert code == 2
    message = one_line(err)
    assert "No space left on device" in message and "'/dev/full'" in message


@needs_dev_full
async def test_disk_full_on_stdout_says_it_is_stdout(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(server.url("/ok/1") + "\n")
    with open("/dev/full", "wb") as full:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crawler", "fetch", str(urls), "-q",
            stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 2
    message = one_line(err)
    assert "No space left on device" in message and "stdout" in message


# -- --state ------------------------------------------------------------------------------------
async def test_state_of_a_run_to_a_file_resumed_to_stdout_says_stdout(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("not a url\n")
    state = str(tmp_path / "s.state")
    code, _, err = await run("fetch", str(urls), "--state", state, "-o", str(tmp_path / "o"))
    assert code == 0, err.decode()
    code, _, err = await run("fetch", str(urls), "--state", state)
    assert code == 2
    message = one_line(err)
    assert "now stdout" in message and "None" not in message


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_state_whose_sqlite_file_cannot_be_opened_names_it(
    tmp_path: Path, suffix: str
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("not a url\n")
    state = tmp_path / "s.state"
    code, _, err = await run("fetch", str(urls), "--state", str(state), "-o", str(tmp_path / "o"))
    assert code == 0, err.decode()
    side = Path(str(state) + suffix)
    with contextlib.suppress(FileNotFoundError):
        side.unlink()
    side.mkdir()  # SQLite cannot open it: "unable to open database file" said nothing more
    code, _, err = await run("fetch", str(urls), "--state", str(state), "-o", str(tmp_path / "o"))
    assert code == 2
    message = one_line(err)
    assert "unable to open" not in message and "readonly database" not in message
    assert "Is a directory" in message and repr(str(side)) in message


# -- --save-dir, -o and friends: refused before anything is written -------------------------
async def test_save_dir_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("not a url\n")
    afile = tmp_path / "bodies"
    afile.write_text("mine\n")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier records\n")
    code, _, err = await run("fetch", str(urls), "--save-dir", str(afile), "-o", str(out))
    assert code == 2
    message = one_line(err)
    assert "--save-dir" in message and repr(str(afile)) in message
    assert "not a directory" in message.lower() and "File exists" not in message
    assert out.read_text() == "earlier records\n"  # refused before -o was truncated
    assert afile.read_text() == "mine\n"


async def test_save_dir_below_a_file_names_the_file(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("not a url\n")
    afile = tmp_path / "plain"
    afile.write_text("x")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier records\n")
    code, _, err = await run("fetch", str(urls), "--save-dir", str(afile / "sub"), "-o", str(out))
    assert code == 2
    assert "Not a directory" in one_line(err)
    assert out.read_text() == "earlier records\n"


async def test_warc_into_a_missing_directory_is_refused_before_the_output_is_touched(
    tmp_path: Path,
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("not a url\n")
    out = tmp_path / "out.jsonl"
    out.write_text("earlier records\n")
    warc = tmp_path / "no" / "such" / "a.warc.gz"
    code, _, err = await run("fetch", str(urls), "--warc", str(warc), "-o", str(out))
    assert code == 2
    message = one_line(err)
    assert "No such file or directory" in message and "--warc" in message
    assert out.read_text() == "earlier records\n"


# -- read-only places: run as an unprivileged user (root may write anywhere) ----------------
@contextlib.contextmanager
def unprivileged() -> Iterator[tuple[list[str], Path]]:
    """(command prefix, a scratch directory it can reach) to run the CLI as a user that
    the permission bits apply to: ourselves, or ``nobody`` (via setpriv) when root."""
    scratch = Path(tempfile.mkdtemp(prefix="crawler-test-"))
    try:
        prefix: list[str] = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("root without setpriv: cannot test permissions")
            prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            scratch.chmod(0o755)
            probe = subprocess.run(
                [*prefix, sys.executable, "-c", "import crawler"],
                capture_output=True,
                check=False,
                env=ENV,
            )
            if probe.returncode != 0:
                pytest.skip("nobody cannot run this interpreter")
        yield prefix, scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def writable_by(prefix: list[str], path: Path) -> None:
    path.mkdir()
    if prefix:
        os.chown(path, NOBODY, NOBODY)


async def run_as(prefix: list[str], *args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "crawler", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_stats_json_in_a_read_only_directory_is_refused_before_the_run(
    server: Server,
) -> None:
    with unprivileged() as (prefix, scratch):
        urls = scratch / "urls.txt"
        urls.write_text(server.url("/ok/1") + "\n")
        urls.chmod(0o644)
        locked = scratch / "locked"
        locked.mkdir(mode=0o555)
        code, out, err = await run_as(
            prefix, "fetch", str(urls), "--stats-json", str(locked / "stats.json")
        )
    assert code == 2 and out == b""
    message = one_line(err)
    assert "--stats-json" in message and "Permission denied" in message
    assert repr(str(locked)) in message  # the directory is what cannot be written
    assert server.rec.hits["/ok/1"] == 0  # before the run, not after it


async def test_state_in_a_read_only_directory_gives_the_os_reason() -> None:
    with unprivileged() as (prefix, scratch):
        urls = scratch / "urls.txt"
        urls.write_text("not a url\n")
        urls.chmod(0o644)
        place = scratch / "place"
        writable_by(prefix, place)
        args = ("fetch", str(urls), "--state", str(place / "s.state"), "-o", str(place / "o"))
        code, _, err = await run_as(prefix, *args)
        assert code == 0, err.decode()
        place.chmod(0o555)  # SQLite can no longer make its -wal beside the state file
        code, _, err = await run_as(prefix, *args)
    assert code == 2
    message = one_line(err)
    assert "readonly database" not in message and "unable to open" not in message
    assert "Permission denied" in message and repr(str(place)) in message


async def test_warc_and_output_in_a_read_only_directory(server: Server) -> None:
    with unprivileged() as (prefix, scratch):
        urls = scratch / "urls.txt"
        urls.write_text(server.url("/ok/1") + "\n")
        urls.chmod(0o644)
        locked = scratch / "locked"
        locked.mkdir(mode=0o555)
        code, out, err = await run_as(prefix, "fetch", str(urls), "--warc", str(locked / "a.warc"))
        assert code == 2 and out == b""
        message = one_line(err)
        assert "--warc" in message and "Permission denied" in message
        code, out, err = await run_as(prefix, "fetch", str(urls), "-o", str(locked / "o.jsonl"))
        assert code == 2 and out == b""
        assert "Permission denied" in one_line(err)
    assert server.rec.hits["/ok/1"] == 0


async def test_unreadable_input_names_it() -> None:
    with unprivileged() as (prefix, scratch):
        urls = scratch / "urls.txt"
        urls.write_text("http://127.0.0.1:9/\n")
        urls.chmod(0o600)
        code, out, err = await run_as(prefix, "fetch", str(urls))
    assert code == 2 and out == b""
    message = one_line(err)
    assert "Permission denied" in message and repr(str(urls)) in message


# -- the rest of the class: paths in messages ---------------------------------------------------
async def test_stats_json_ending_in_a_slash_names_a_directory(
    server: Server, tmp_path: Path
) -> None:
    """Path("new/") is Path("new"): the run would have made a file named "new"."""
    code, out, err = await run(
        "fetch", server.url("/ok/1"), "-o", str(tmp_path / "out"),
        "--stats-json", str(tmp_path / "new") + "/",
    )  # fmt: skip
    assert code == 2 and out == b""
    assert "names a directory" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
