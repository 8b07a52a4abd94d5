"""--workers N: hosts sharded across worker processes, one coordinator writing the output.

Real subprocesses against the in-process test server. A host goes to the worker given the
fewest lines when it is first seen (crawler.shards.Router): the tests' lines take the
three hosts in turn, so 127.0.0.1 and 127.0.0.3 go to worker 0 and 127.0.0.2 to worker
1, and both workers always hold work (checked by test_both_workers_get_hosts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from warcio.archiveiterator import ArchiveIterator

from crawler import shards
from crawler.options import run_config
from crawler.shardproc import worker_config
from crawler.stats import Histogram, Stats
from crawler.urls import parse_target
from tests.conftest import HOSTS, Server, marked_env, marked_processes, serve_hosts, until
from tests.test_cli import ENV

CRAWLER = [sys.executable, "-m", "crawler"]
SEEDED = {**ENV, "PYTHONHASHSEED": "0"}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _sockets(pid: int) -> int:
    """Sockets a worker holds (its pipes are not): it has requests in flight."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def _urls(server: Server, path: str, per_host: int) -> list[str]:
    return [server.url(f"{path}/{host}-{i}", host) for i in range(per_host) for host in HOSTS]


async def _start(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    with open(tmp_path / "err.txt", "ab") as err:  # the child has its own copy
        return await asyncio.create_subprocess_exec(
            *CRAWLER, "fetch", *args, stdout=subprocess.DEVNULL, stderr=err, env=env or SEEDED
        )


def _records(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [orjson.loads(line) for line in data.splitlines()]


def _once(records: list[dict[str, object]]) -> Counter[object]:
    counts = Counter(r["url"] for r in records)
    doubled = [url for url, n in counts.items() if n > 1]
    assert not doubled, f"written twice: {doubled[:3]}"
    return counts


def test_route_agrees_with_the_fingerprints_host() -> None:
    """Two lines of one host meet in one worker, however the host is spelled, so dedup
    and per-host limits stay exact: the cheap host read agrees with the full parse."""
    lines = [
        "http://example.com/a",
        "HTTP://EXAMPLE.com/b",
        "http://example.com:8080/%7e",
        "http://example.com?q",
        "http://user@example.com/x",
        '{"url": "http://Example.COM/y", "method": "POST"}',
        "http://a_b.example.com./x",
        "http://xn--bcher-kva.de/",
        "http://bücher.de/",
    ]
    for n in (2, 3, 7):
        router = shards.Router(n, remembered=2)  # most hosts past the cap: hashed
        seen: dict[str, int] = {}
        for line in [*lines, *reversed(lines)]:
            text = line if line[0] != "{" else orjson.loads(line)["url"]
            host = parse_target(text)[2].rpartition(":")[0]
            assert seen.setdefault(host, router.route(line)) == router.route(line), line


def test_a_few_hosts_are_shared_out_evenly() -> None:
    """8 hosts over 2 workers: 4 each, whatever their names hash to."""
    router = shards.Router(2)
    owners = [router.route(f"http://h{i}.example/") for i in range(8)]
    assert sorted(owners) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [router.route(f"http://h{i}.example/x") for i in range(8)] == owners


def test_every_option_reaches_a_worker() -> None:
    """A worker's config travels pickled: whatever a run can be given must survive it."""
    config = run_config(
        {
            "workers": 2,
            "concurrency": 5,
            "rps": 4.0,
            "header": ["X-A: b"],
            "proxy": "http://u:p@127.0.0.1:9/",
            "hosts": {"*.example.com": {"per_host": 1}},
            "retry_on": "429",
            "include_headers": True,
            "cookie": ["a=1"],
            "depth": 2,
            "include": [r"/x/"],
        },
        crawl=True,
    )
    for index in (0, 1):
        sent = worker_config(config, index, 2)
        assert pickle.loads(pickle.dumps(sent)) == sent  # noqa: S301 - our own bytes
        assert (sent.workers, sent.limits.concurrency, sent.limits.rps) == (1, 3 - index, 2.0)


def test_c_is_a_total_so_workers_are_at_most_c() -> None:
    """Each worker takes at least one of -c's requests: --workers above -c runs -c of
    them (-c 1: one process), so the requests in flight never pass -c."""
    for c, wanted, runs in ((2, 4, 2), (1, 2, 1), (8, 4, 4)):
        config = run_config({"workers": wanted, "concurrency": c}, crawl=False)
        assert config.workers == runs
        shares = [worker_config(config, i, runs).limits.concurrency for i in range(runs)]
        assert runs == 1 or sum(shares) == c


def test_added_up_statistics_merge_histograms() -> None:
    """The run's percentiles come from the workers' merged histograms, not averages."""
    fast, slow = Stats(lambda: 0.0), Stats(lambda: 0.0)
    for _ in range(90):
        fast.latency.add(0.001)
        fast.record(True, 200, None, 10)
    for _ in range(10):
        slow.latency.add(1.0)
        slow.record(False, 503, "http_status", 0)
    total = Stats(lambda: 0.0)
    shards.add_up(total, [shards.tally(fast, 0, 0), shards.tally(slow, 1, 2)])
    assert (total.done, total.ok, total.bytes) == (100, 90, 900)
    assert total.by_status == Counter({200: 90, 503: 10})
    assert total.latency.quantile(0.5) < 0.002 < 0.9 < total.latency.quantile(0.95)
    assert total.latency.count == 100 and isinstance(total.latency, Histogram)


async def test_both_workers_get_hosts_each_url_once_per_host_exact(
    server: Server, tmp_path: Path
) -> None:
    urls = _urls(server, "/slow", 12)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join([*urls, urls[0], urls[5], "not a url"]) + "\n")
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    proc = await _start(
        tmp_path, str(src), "--workers", "2", "--per-host", "1", "-c", "8",
        "-o", str(out), "--stats-json", str(stats), "-q",
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 60) == 0, (tmp_path / "err.txt").read_text()
    records = _records(out)
    assert set(_once(records)) == {*urls, "not a url"}
    assert all(r["ok"] for r in records if r["url"] != "not a url")
    # A host belongs to one process: --per-host 1 holds exactly, across the workers.
    assert max(server.rec.peak.values()) == 1
    report = orjson.loads(stats.read_bytes())
    assert report["skipped_duplicates"] == 2
    assert report["urls_done"] == len(records)
    rows = report["workers"]
    assert [row["worker"] for row in rows] == [0, 1]
    assert all(row["done"] > 0 for row in rows)  # both held hosts
    assert sum(row["done"] for row in rows) == len(records)


async def test_a_killed_workers_urls_go_to_a_new_worker_once(
    server: Server, tmp_path: Path
) -> None:
    urls = _urls(server, "/hang", 6)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out.jsonl"
    proc = await _start(
        tmp_path, str(src), "--workers", "2", "-c", "40", "--per-host", "6", "-o", str(out), "-q"
    )
    try:
        # Every URL is in flight (the server holds them): kill worker 0, which holds
        # 127.0.0.1's, then let the server answer.
        await until(lambda: sum(server.rec.hits.values()) == len(urls), 30)
        workers = _children(proc.pid)
        assert len(workers) == 2
        victim = next(pid for pid in workers if _sockets(pid) > 0)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: victim not in _children(proc.pid), 30)
        server.rec.release.set()
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = (tmp_path / "err.txt").read_text()
    assert f"(pid {victim}) died (killed by SIGKILL)" in err
    records = _records(out)
    assert set(_once(records)) == set(urls)
    assert all(r["ok"] for r in records)
    assert sum(server.rec.hits.values()) > len(urls)  # the victim's URLs were sent again


async def test_the_workers_end_when_the_coordinator_is_killed(
    server: Server, tmp_path: Path
) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(_urls(server, "/hang", 4)) + "\n")
    env, token = marked_env(SEEDED)
    proc = await _start(tmp_path, str(src), "--workers", "2", "-o", os.devnull, "-q", env=env)
    await until(lambda: sum(server.rec.hits.values()) >= 4 and len(_children(proc.pid)) == 2, 30)
    workers = _children(proc.pid)
    proc.kill()
    await proc.wait()
    await until(lambda: not any(pid in workers for pid, _ in marked_processes(token)), 15)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_every_worker_each_url_at_most_once(
    server: Server, tmp_path: Path, signum: signal.Signals
) -> None:
    urls = _urls(server, "/hang", 20)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    env, token = marked_env(SEEDED)
    proc = await _start(
        tmp_path, str(src), "--workers", "2", "-c", "6", "--grace", "0.2",
        "-o", str(out), "-q", "--stats-json", str(stats), env=env,
    )  # fmt: skip
    await until(lambda: sum(server.rec.hits.values()) >= 6, 30)
    proc.send_signal(signum)
    assert await asyncio.wait_for(proc.wait(), 30) == 130
    records = _records(out)
    counts = _once(records)
    # Without --state every URL read gets a record: in flight or queued, `cancelled`.
    assert set(counts) == set(urls)
    kinds = Counter(r["error"]["kind"] for r in records if r["error"])  # type: ignore[index]
    assert kinds["cancelled"] == len(urls)
    assert not marked_processes(token)
    report = orjson.loads(stats.read_bytes())
    assert report["interrupted"] and report["urls_done"] == len(records)
    assert report["urls_done"] + report["input_not_read"] == len(urls)


async def test_progress_shows_the_whole_run(server: Server, tmp_path: Path) -> None:
    """One status line for the run: in flight summed over the workers (3 hosts, one URL
    each, held by the server: 2 on worker 0, 1 on worker 1)."""
    src = tmp_path / "urls.txt"
    urls = _urls(server, "/hang", 1)
    src.write_text("\n".join(urls) + "\n")
    env, token = marked_env({**SEEDED, "CRAWLER_PROGRESS_INTERVAL": "0.1"})
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER, "fetch", str(src), "--workers", "2", "--progress", "--grace", "0.2",
        "-o", os.devnull, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await until(lambda: sum(server.rec.hits.values()) == len(urls), 30)
        async with asyncio.timeout(30):
            while "3 in flight" not in (line := (await proc.stderr.readline()).decode()):
                assert line, "stderr closed before a status line of the whole run"
        assert line.startswith("crawler: ") and "0 done" in line
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.stderr.read()
            assert await proc.wait() == 130
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not marked_processes(token)


async def test_state_resumed_with_another_number_of_workers(server: Server, tmp_path: Path) -> None:
    """The state does not depend on N: stopped with 2 workers, resumed with 1, every URL
    has exactly one record."""
    urls = _urls(server, "/slow", 40)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(u + "?s=0.02" for u in urls) + "\n")
    out, state = tmp_path / "out.jsonl", tmp_path / "run.state"
    common = ("-o", str(out), "--state", str(state), "-q", "-c", "4", "--per-host", "1")
    proc = await _start(tmp_path, str(src), "--workers", "2", *common)
    await until(lambda: out.exists() and out.stat().st_size > 0, 30)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 130
    first = len(_records(out))
    proc = await _start(tmp_path, str(src), "--workers", "1", *common)
    assert await asyncio.wait_for(proc.wait(), 60) == 0, (tmp_path / "err.txt").read_text()
    records = _records(out)
    assert set(_once(records)) == {u + "?s=0.02" for u in urls}
    assert 0 < first < len(urls)
    assert not any(r["error"] for r in records)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("crawl", ("--cookie-jar", "jar.txt")),
        ("fetch", ("--etags", "tags.db")),
        ("fetch", ("--warc", "warc.fifo")),  # a stream: it would have N writers
    ],
)
def test_what_workers_do_not_do_yet_is_one_line(
    tmp_path: Path, command: str, extra: tuple[str, ...]
) -> None:
    if "warc.fifo" in extra:
        os.mkfifo(tmp_path / "warc.fifo")
    done = subprocess.run(
        [*CRAWLER, command, "http://127.0.0.1:9/", "--workers", "2", *extra],
        capture_output=True,
        env=ENV,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "workers" in lines[0], lines


# -- crawl --------------------------------------------------------------------------------
def _tree_app(size: int, ports: dict[str, int], delay: float) -> web.Application:
    """/x/N on host H links to /x/2N+1 and /x/2N+2 (< size) on the next host: every link
    crosses to another host, so to the other worker as often as not."""

    async def page(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        n = int(request.match_info["n"])
        host = HOSTS[(HOSTS.index(request.host.partition(":")[0]) + 1) % len(HOSTS)]
        links = "".join(
            f'<a href="http://{host}:{ports[host]}/x/{k}">{k}</a>'
            for k in (2 * n + 1, 2 * n + 2)
            if k < size
        )
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/x/{n}", page)
    return app


def _tree(size: int, ports: dict[str, int]) -> set[str]:
    """Every URL a crawl from /x/0 on each host reaches."""
    found = set()
    for start in HOSTS:
        todo = [(start, 0)]
        while todo:
            host, n = todo.pop()
            url = f"http://{host}:{ports[host]}/x/{n}"
            if url in found:
                continue
            found.add(url)
            nxt = HOSTS[(HOSTS.index(host) + 1) % len(HOSTS)]
            todo += [(nxt, k) for k in (2 * n + 1, 2 * n + 2) if k < size]
    return found


@contextlib.asynccontextmanager
async def _serve_tree(size: int, delay: float = 0.0) -> AsyncIterator[dict[str, int]]:
    ports: dict[str, int] = {}
    async with serve_hosts(_tree_app(size, ports, delay), ports):
        yield ports


def _crawl(*args: str) -> list[str]:
    return [*CRAWLER, "crawl", *args, "--ignore-robots", "-q"]


async def test_a_crawl_follows_links_across_workers_once(tmp_path: Path) -> None:
    async with _serve_tree(100) as ports:
        seeds = [f"http://{h}:{ports[h]}/x/0" for h in HOSTS]
        expected = _tree(100, ports)
        out, capped = tmp_path / "out.jsonl", tmp_path / "capped.jsonl"
        for path, extra in ((out, ()), (capped, ("--max-pages", "40"))):
            done = await asyncio.create_subprocess_exec(
                *_crawl(*seeds, "--workers", "2", "-o", str(path), *extra),
                env=SEEDED, stderr=subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(done.communicate(), 60)
            assert done.returncode == 0, err.decode()
    assert set(_once(_records(out))) == expected
    capped_urls = _once(_records(capped))
    assert len(capped_urls) == 40 and set(capped_urls) <= expected


async def test_a_crawl_with_workers_resumes_every_page_once(tmp_path: Path) -> None:
    out, state = tmp_path / "out.jsonl", tmp_path / "run.state"
    async with _serve_tree(240, delay=0.01) as ports:
        seeds = [f"http://{h}:{ports[h]}/x/0" for h in HOSTS]
        args = _crawl(*seeds, "--workers", "2", "-c", "4", "-o", str(out), "--state", str(state))
        with open(tmp_path / "err.txt", "ab") as err:
            proc = await asyncio.create_subprocess_exec(*args, env=SEEDED, stderr=err)
        await until(lambda: out.exists() and out.stat().st_size > 2000, 30)
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 130
        first = len(_records(out))
        with open(tmp_path / "err.txt", "ab") as err:
            proc = await asyncio.create_subprocess_exec(*args, env=SEEDED, stderr=err)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, (tmp_path / "err.txt").read_text()
        expected = _tree(240, ports)
    assert set(_once(_records(out))) == expected
    assert 0 < first < len(expected)


async def test_a_crawl_survives_a_killed_worker(tmp_path: Path) -> None:
    """The links a killed worker held go to its successor: every page once."""
    out = tmp_path / "out.jsonl"
    async with _serve_tree(150, delay=0.02) as ports:
        seeds = [f"http://{h}:{ports[h]}/x/0" for h in HOSTS]
        with open(tmp_path / "err.txt", "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *_crawl(*seeds, "--workers", "2", "-c", "4", "-o", str(out)),
                env=SEEDED, stderr=err,
            )  # fmt: skip
        try:
            await until(lambda: out.exists() and out.stat().st_size > 3000, 30)
            victim = _children(proc.pid)[1]  # worker 1: 127.0.0.2
            os.kill(victim, signal.SIGKILL)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        expected = _tree(150, ports)
    assert f"(pid {victim}) died" in (tmp_path / "err.txt").read_text()
    assert set(_once(_records(out))) == expected


async def test_bodies_and_warc_have_one_writer_each(server: Server, tmp_path: Path) -> None:
    """--save-dir: every worker writes into it (unique temporary names, content-addressed
    files); --warc: each worker its own file (out-w0, out-w1); every URL once in them."""
    urls = _urls(server, "/ok", 8)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out, bodies, warc = tmp_path / "out.jsonl", tmp_path / "bodies", tmp_path / "out.warc.gz"
    proc = await _start(
        tmp_path, str(src), "--workers", "2", "-o", str(out), "-q",
        "--save-dir", str(bodies), "--warc", str(warc),
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 60) == 0, (tmp_path / "err.txt").read_text()
    records = _records(out)
    assert set(_once(records)) == set(urls)
    for record in records:  # each body on disk before its record was written
        assert Path(str(record["body_path"])).is_file()
    files = sorted(p.name for p in tmp_path.glob("out*.warc.gz"))
    assert files == ["out-w0.warc.gz", "out-w1.warc.gz"]
    targets: Counter[str] = Counter()
    for name in files:
        with (tmp_path / name).open("rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type == "response":
                    targets[rec.rec_headers.get_header("WARC-Target-URI")] += 1
    assert targets == Counter(set(urls))


async def test_a_sigkilled_coordinator_resumes_every_url_once(
    server: Server, tmp_path: Path
) -> None:
    """Killed mid-run with everything it holds (and its workers with it), the job resumes
    from --state: every URL exactly one record, the torn tail cut off."""
    urls = _urls(server, "/slow", 60)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(u + "?s=0.01" for u in urls) + "\n")
    out, state = tmp_path / "out.jsonl", tmp_path / "run.state"
    common = ("-o", str(out), "--state", str(state), "-q", "-c", "6", "--workers", "2")
    env, token = marked_env(SEEDED)
    proc = await _start(tmp_path, str(src), *common, env=env)
    await until(lambda: out.exists() and out.stat().st_size > 4000, 30)
    proc.kill()
    await proc.wait()
    await until(lambda: not marked_processes(token), 15)  # its workers end with it
    proc = await _start(tmp_path, str(src), *common)
    assert await asyncio.wait_for(proc.wait(), 60) == 0, (tmp_path / "err.txt").read_text()
    records = _records(out)
    assert set(_once(records)) == {u + "?s=0.01" for u in urls}
    assert not any(r["error"] for r in records)
