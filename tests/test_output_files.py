"""Every file a run writes, named in every way a user can name it: a symlink (dangling
too), a FIFO, a device, a name SQLite or the WARC writer makes beside it. A user's file
is never replaced or removed, the file a name leads to is written (or the run is refused
with one line, exit 2, before anything is touched), and no two outputs are one file.

Before: ``--cookie-jar``/``--etags`` to a FIFO or a device (``/dev/null``) replaced it with
a regular file after the run (as root, in /dev); ``--etags`` or ``--state`` beside a
user's ``-journal``/``-shm`` removed it; ``-o`` named as a worker's WARC (``out-w0.warc``)
or as a rotated WARC of a symlinked ``--warc`` was accepted and overwritten by the WARC;
``--warc`` to a FIFO that no process reads hung the run; ``--stats-json``/``--cookie-jar``
through a symlink into a missing directory, or a jar in a read-only directory (saved under
a temporary name there), failed after the run; ``crawler collect`` wrote
its sidecar through a symlink named ``PATH.collect.tmp``; the Python API took ``etags`` and
``cookie_jar`` naming one file (the jar replaced the validators at the end).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import crawler
from crawler.collect import Output
from tests.conftest import Server, run_engine
from tests.test_cli import CRAWLER, ENV, run
from tests.test_hardening_cli import one_error_line

MINE = b"my own file\n"


async def test_a_cookie_jar_that_is_a_fifo_is_written_through(
    server: Server, tmp_path: Path
) -> None:
    fifo = tmp_path / "jar.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # someone reads it
    try:
        _, [rec] = await run_engine(
            tmp_path, [server.url("/ok/fifo")], cookie_jar=str(fifo), cookies=True
        )
        assert rec["ok"]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the user's FIFO
        assert os.read(reader, 4096).startswith(b"# Netscape HTTP Cookie File")
    finally:
        os.close(reader)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
async def test_a_cookie_jar_that_is_a_device_is_not_replaced(
    server: Server, tmp_path: Path
) -> None:
    """``--cookie-jar /dev/null`` (curl's idiom), on a device node of the test's own."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    _, [rec] = await run_engine(
        tmp_path, [server.url("/ok/dev")], cookie_jar=str(null), cookies=True
    )
    assert rec["ok"]
    assert stat.S_ISCHR(os.lstat(null).st_mode)


async def test_etags_that_is_a_fifo_is_refused_before_the_run(
    server: Server, tmp_path: Path
) -> None:
    fifo = tmp_path / "etags.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    code, _, err = await run("fetch", server.url("/ok/e"), "-o", str(out), "--etags", str(fifo))
    assert code == 2
    one_error_line(err)
    assert b"not a regular file" in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not out.exists()
    assert sum(server.rec.hits.values()) == 0


@pytest.mark.parametrize(
    ("option", "name", "side"),
    [
        ("--state", "run.state", "-journal"),
        ("--state", "run.state", "-shm"),
        ("--etags", "etags.db", "-journal"),
    ],
)
async def test_a_users_file_where_sqlite_puts_its_own_is_left_alone(
    server: Server, tmp_path: Path, option: str, name: str, side: str
) -> None:
    mine = tmp_path / (name + side)
    mine.write_bytes(MINE)
    out = tmp_path / "out.jsonl"
    code, _, err = await run(
        "fetch", server.url("/ok/s"), "-o", str(out), option, str(tmp_path / name)
    )
    assert code == 2
    one_error_line(err)
    assert b"exists without it" in err
    assert mine.read_bytes() == MINE
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]  # nothing made
    assert sum(server.rec.hits.values()) == 0


@pytest.mark.parametrize("case", ["a worker's WARC", "rotated beside a symlink"])
async def test_output_named_as_a_warc_made_from_warc_is_refused(
    server: Server, tmp_path: Path, case: str
) -> None:
    if case == "a worker's WARC":
        warc, out, more = tmp_path / "w.warc", tmp_path / "w-w0.warc", ["--workers", "2"]
    else:  # rotated names are made beside the link, not where it leads
        (tmp_path / "real").mkdir()
        warc, out = tmp_path / "w.warc", tmp_path / "w-00001.warc"
        warc.symlink_to(tmp_path / "real" / "a.warc")
        more = ["--warc-max-size", "1000"]
    code, _, err = await run(
        "fetch", server.url("/ok/w"), "-o", str(out), "--warc", str(warc), *more
    )
    assert code == 2
    one_error_line(err)
    assert b"rotates into" in err and not out.exists()
    assert sum(server.rec.hits.values()) == 0


async def test_a_warc_fifo_that_no_process_reads_is_refused_not_waited_for(
    server: Server, tmp_path: Path
) -> None:
    fifo = tmp_path / "warc.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    code, _, err = await run(
        "fetch", server.url("/ok/f"), "-o", str(out), "--warc", str(fifo), timeout=20
    )
    assert code == 2
    one_error_line(err)
    assert b"no process reads" in err
    assert sum(server.rec.hits.values()) == 0


@pytest.mark.parametrize("option", ["--stats-json", "--cookie-jar", "--etags"])
async def test_a_symlink_into_a_missing_directory_is_refused_before_the_run(
    server: Server, tmp_path: Path, option: str
) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone" / "file")
    out = tmp_path / "out.jsonl"
    code, _, err = await run("fetch", server.url("/ok/m"), "-o", str(out), option, str(link))
    assert code == 2
    one_error_line(err)
    assert b"No such file or directory" in err and b"gone" in err
    assert not out.exists()
    assert sum(server.rec.hits.values()) == 0


def test_collect_never_writes_its_sidecar_through_a_symlink(tmp_path: Path) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_bytes(MINE)
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.collect.tmp").symlink_to(mine)
    output = Output(str(out), "j1")
    output.open()
    try:
        output.write(b'{"url":"x"}\n', "1-0")
    finally:
        output.close()
    assert mine.read_bytes() == MINE
    assert b'"size":12' in (tmp_path / "out.jsonl.collect").read_bytes()


def test_the_api_refuses_two_of_its_files_being_one(tmp_path: Path) -> None:
    same = str(tmp_path / "both")
    with pytest.raises(crawler.ConfigError, match="same file"):
        crawler.fetch(["http://127.0.0.1:9/"], etags=same, cookie_jar=same)
    assert list(tmp_path.iterdir()) == []


def _unprivileged() -> list[str]:
    """As root, run as an unprivileged user (a user namespace): a read-only directory is
    then read-only (root would write into it)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-U", "true"]).returncode:
        pytest.skip("root, and no unshare -U to run without root's privileges")
    return ["unshare", "-U"]


async def test_a_cookie_jar_in_a_read_only_directory_is_refused_before_the_run(
    server: Server, tmp_path: Path
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    jar = folder / "jar.txt"
    jar.write_text("# Netscape HTTP Cookie File\n")  # writable, its directory is not
    folder.chmod(0o555)
    out = tmp_path / "out.jsonl"
    try:
        proc = await asyncio.create_subprocess_exec(
            *_unprivileged(), *CRAWLER, "fetch", server.url("/ok/ro"), "-o", str(out),
            "--cookie-jar", str(jar),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 2
    one_error_line(err)
    assert b"Permission denied" in err and not out.exists()
    assert sum(server.rec.hits.values()) == 0
