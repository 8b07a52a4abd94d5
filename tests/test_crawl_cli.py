"""`crawler crawl` as a subprocess: options, usage errors, SIGKILL/SIGINT/--max-time and
resume with --state (every page exactly once), and `fetch --save-dir/--warc`."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator

from tests.conftest import Server, until
from tests.site import A, Site, serve_site
from tests.test_cli import ENV, assert_no_traceback, lines, run
from tests.test_resume import TORN, kill_after_progress, parse_output, uncommitted_tail
from tests.test_resume import start as resume_start

CRAWLER = [sys.executable, "-m", "crawler"]


def gen_expected(site: Site, size: int) -> list[str]:
    return sorted(
        [site.url(f"/gen/{i}") for i in range(size)]
        + [site.url(f"/gen/{i}?again") for i in range(size)]
    )


async def start(*args: str, stdout: int | None = None) -> asyncio.subprocess.Process:
    return await resume_start(*args, stdout=stdout, command="crawl")


async def test_crawl_sigkill_and_resume_finds_every_page_once(tmp_path: Path) -> None:
    rng = random.Random(7)
    out, state = tmp_path / "out.jsonl", tmp_path / "st.db"
    async with serve_site(gen_size=500, gen_delay=0.02) as site:
        args = (
            site.url("/gen/0"), "-o", str(out), "--state", str(state), "-c", "6", "-q",
            "--ignore-robots",
        )  # fmt: skip
        killed = cut = 0
        for i in range(5):
            # Each kill lands after the run wrote new records (so in the middle of work),
            # a random moment later.
            if await kill_after_progress(args, out, rng.uniform(0, 0.3), command="crawl"):
                break
            killed += 1
            cut += uncommitted_tail(state, out)
            if i == 0:
                with out.open("ab") as fh:  # a record torn by the kill, on purpose
                    fh.write(TORN)
        proc = await start(*args)
        assert await asyncio.wait_for(proc.wait(), 45) == 0
        expected = gen_expected(site, 500)
    records = parse_output(out.read_bytes())
    urls = [r["url"] for r in records]
    assert sorted(urls) == expected, (
        f"lost {len(set(expected) - set(urls))}, duplicated {len(urls) - len(set(urls))}"
    )
    # 1000 pages at 20 ms each over 6 workers take the server >= 3.3 s: a run killed
    # 0.3 s after its first records cannot have finished, so at least one kill was mid-crawl.
    assert killed >= 1
    sys.stderr.write(
        f"\ncrawl kill test: {killed} kills, {cut} tails + 1 torn cut, 0 lost, 0 dup\n"
    )


async def test_crawl_sigint_then_resume_on_stdout(tmp_path: Path) -> None:
    state = tmp_path / "st.db"
    async with serve_site(gen_size=300, gen_delay=0.01) as site:
        warc = tmp_path / "c.warc.gz"
        args = (site.url("/gen/0"), "--state", str(state), "-c", "4", "-q", "--grace", "0.2",
                "--ignore-robots", "--warc", str(warc))  # fmt: skip
        proc = await start(*args, stdout=subprocess.PIPE)
        await until(lambda: sum(site.hits.values()) >= 60)  # well under way, far from done
        proc.send_signal(signal.SIGINT)
        first, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 130
        proc = await start(*args, stdout=subprocess.PIPE)
        second, _ = await asyncio.wait_for(proc.communicate(), 40)
        assert proc.returncode == 0
        expected = gen_expected(site, 300)
    one, two = parse_output(first), parse_output(second)
    assert one and two
    assert all(r["error"] is None for r in one + two)  # --state: no `cancelled` records
    assert sorted(r["url"] for r in one + two) == expected
    # Both WARC files are whole (the interrupted run flushed its writer) and a resumed
    # run started a new file rather than append to the first.
    files = sorted(tmp_path.glob("c*.warc.gz"))
    assert [f.name for f in files] == ["c-00001.warc.gz", "c.warc.gz"]
    uris = set()
    for path in files:
        with path.open("rb") as fh:
            uris |= {
                r.rec_headers.get_header("WARC-Target-URI")
                for r in ArchiveIterator(fh)
                if r.rec_type == "response"
            }
    assert uris >= {r["final_url"] for r in one + two}


async def test_max_time_stops_with_exit_0_and_resumes(tmp_path: Path) -> None:
    out, state = tmp_path / "out.jsonl", tmp_path / "st.db"
    async with serve_site(gen_size=300, gen_delay=0.02) as site:
        common = (site.url("/gen/0"), "-o", str(out), "--state", str(state), "--ignore-robots",
                  "--no-progress")  # fmt: skip
        # 600 pages at 20 ms each over 2 workers take the server >= 6 s: --max-time 3 ends
        # the run before (a loaded machine only makes the crawl slower), with what it has
        # done so far written (3 s is ample for a first page, even at start-up under load).
        code, _, err = await run("crawl", *common, "-c", "2", "--max-time", "3")
        assert code == 0 and b"--max-time" in err
        partial = len(parse_output(out.read_bytes()))
        assert 0 < partial < 600
        code, _, _ = await run("crawl", *common, "-c", "10", timeout=45)
        assert code == 0
        expected = gen_expected(site, 300)
    assert sorted(r["url"] for r in parse_output(out.read_bytes())) == expected


async def test_crawl_seed_file_stdin_and_usage_errors(tmp_path: Path) -> None:
    async with serve_site(crawl_delay=0.01) as site:
        seeds = tmp_path / "seeds.txt"
        seeds.write_text(f"# seeds\n{site.url('/b')}\n")
        code, out, err = await run("crawl", str(seeds), "--depth", "1", "--no-progress")
        assert code == 0, err
        assert {r["url"] for r in lines(out)} == {site.url("/b"), site.url("/a")}
        code, out, _ = await run("crawl", "--depth", "0", "-q", stdin=site.url("/a").encode())
        assert code == 0 and [r["url"] for r in lines(out)] == [site.url("/a")]
    for args, message in [
        (("--scope", "planet"), b"scope"),
        (("--include", "(unclosed"), b"invalid regex"),
        (("--depth", "-1"), b"--depth"),
        (("--no-dedup",), b"No such option"),
        (("--save-dir", "/proc/nope/x"), b"--save-dir"),
        (("--warc", str(tmp_path / "missing-dir" / "x.warc.gz")), b"--warc"),
    ]:
        code, out, err = await run("crawl", "http://127.0.0.1:9/", *args, "-q")
        assert code == 2 and out == b"", (args, err)
        assert message in err and err.count(b"\n") == 1, err
        assert_no_traceback(err)


async def test_fetch_save_dir_and_warc(server: Server, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{server.url('/ok/1')}\n{server.url('/ok/2')}\n{server.url('/status/404')}\n")
    bodies, warc = tmp_path / "bodies", tmp_path / "f.warc.gz"
    code, out, err = await run(
        "fetch", str(urls), "--save-dir", str(bodies), "--warc", str(warc), "-q"
    )
    assert code == 0, err
    records = lines(out)
    assert all(r["depth"] == 0 and r["parent"] is None for r in records)
    ok = [r for r in records if r["ok"]]
    assert len(ok) == 2 and ok[0]["sha256"] == ok[1]["sha256"]  # same body, stored once
    files = [p for p in bodies.rglob("*") if p.is_file()]
    assert len(files) == 2  # the ok body once, and the 404 page's body
    with warc.open("rb") as fh:
        kinds = [rec.rec_type for rec in ArchiveIterator(fh)]
    assert kinds.count("response") == 3 and kinds.count("request") == 3  # the 404 too


@pytest.mark.parametrize("host", [A])
async def test_crawl_help_lists_crawl_options(host: str) -> None:
    code, out, _ = await run("crawl", "--help")
    assert code == 0
    for option in (b"--scope", b"--depth", b"--max-pages", b"--ignore-robots", b"--sitemaps",
                   b"--warc", b"--save-dir", b"--assets"):  # fmt: skip
        assert option in out


async def test_ctrl_c_to_the_process_group_leaves_whole_archives(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals every process of the group, the writer processes too:
    they must leave the stopping to the parent, which flushes them."""
    import os

    warc, bodies = tmp_path / "g.warc.gz", tmp_path / "bodies"
    async with serve_site(gen_size=300, gen_delay=0.01) as site:
        proc = await asyncio.create_subprocess_exec(
            *CRAWLER, "crawl", site.url("/gen/0"), "--ignore-robots", "-c", "4", "-q",
            "--warc", str(warc), "--save-dir", str(bodies), "--grace", "0.5",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, start_new_session=True,
        )  # fmt: skip
        await until(lambda: sum(site.hits.values()) >= 60)  # well under way, far from done
        os.killpg(proc.pid, signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err
    assert_no_traceback(err)
    records = [r for r in lines(out) if r["ok"]]
    assert records
    with warc.open("rb") as fh:
        uris = {r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(fh)}
    assert {r["final_url"] for r in records} <= uris
    assert all(Path(r["body_path"]).is_file() for r in records)
