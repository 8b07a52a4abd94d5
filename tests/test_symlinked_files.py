"""A file the run replaces as a whole (made under a temporary name, then renamed into
place) may be named through a symlink: the file it leads to is replaced, never the link.
And a name in /dev or /proc is a stream, never a state file.

Before: ``--state link`` (link -> an empty file), ``--cookie-jar link`` and ``--etags
link`` turned the user's symlink into a regular file of ours and left its file as it
was; ``--state /dev/stdout`` with stdout redirected to an empty file replaced
/dev/stdout itself.
"""

from __future__ import annotations

import http.cookiejar
import sqlite3
import subprocess
import sys
from pathlib import Path

from crawler.statefile import APPLICATION_ID
from tests.conftest import Server, run_engine
from tests.test_cli import ENV, run

CRAWLER = [sys.executable, "-m", "crawler"]


def _linked(tmp_path: Path, name: str, content: str = "") -> tuple[Path, Path]:
    target = tmp_path / "real" / name
    target.parent.mkdir()
    target.write_text(content)
    link = tmp_path / f"link-{name}"
    link.symlink_to(target)
    return link, target


def _app_id(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("PRAGMA application_id").fetchone()[0])


async def test_a_state_file_named_through_a_symlink_is_made_where_it_leads(
    server: Server, tmp_path: Path
) -> None:
    link, target = _linked(tmp_path, "run.state")  # empty: a state file to be made
    url = server.url("/ok/state")
    for _ in range(2):  # the second run resumes: nothing left to do
        code, _, err = await run(
            "fetch", url, "-o", str(tmp_path / "out.jsonl"), "--state", str(link)
        )
        assert code == 0, err
    assert link.is_symlink() and link.resolve() == target
    assert _app_id(target) == APPLICATION_ID
    assert server.rec.hits["/ok/state"] == 1


async def test_a_cookie_jar_named_through_a_symlink_is_saved_where_it_leads(
    server: Server, tmp_path: Path
) -> None:
    link, target = _linked(tmp_path, "cookies.txt", "# Netscape HTTP Cookie File\n")
    _, [rec] = await run_engine(
        tmp_path, [server.url("/ok/jar")], cookie_jar=str(link), cookie=("a=1",), cookies=True
    )
    assert rec["ok"]
    assert link.is_symlink() and link.resolve() == target
    saved = http.cookiejar.MozillaCookieJar()
    saved.load(str(target), ignore_discard=True)  # the jar file itself was written
    assert target.read_text().startswith("# Netscape HTTP Cookie File")


async def test_an_etags_file_named_through_a_symlink_is_made_where_it_leads(
    server: Server, tmp_path: Path
) -> None:
    link, target = _linked(tmp_path, "etags.db")
    _, [rec] = await run_engine(tmp_path, [server.url("/ok/etag")], etags=str(link))
    assert rec["ok"]
    assert link.is_symlink() and link.resolve() == target
    assert target.stat().st_size > 0  # the database went into the file, not over the link


def test_a_state_named_in_dev_fd_is_refused_as_a_stream(tmp_path: Path) -> None:
    """/dev/fd/1 leads to an empty regular file here (stdout redirected to one): still a
    stream by its name, refused as a state file before anything is made."""
    with open(tmp_path / "stdout.txt", "wb") as stdout:
        done = subprocess.run(
            [*CRAWLER, "fetch", "http://127.0.0.1:9/", "-o", str(tmp_path / "o.jsonl"),
             "--state", "/dev/fd/1"],
            stdout=stdout, stderr=subprocess.PIPE, env=ENV, timeout=30,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.decode().strip() == (
        "crawler: error: cannot use --state '/dev/fd/1': not a crawler state file"
    )
    assert (tmp_path / "stdout.txt").read_bytes() == b""
