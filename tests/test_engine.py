"""The whole pipeline against a real aiohttp.web server on several loopback addresses."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from crawler import assembly as assembly_module
from crawler.engine import Engine
from crawler.inputs import LineSource
from crawler.limiter import DynamicSemaphore
from tests.conftest import Server, make_config, read_records, run_engine, until
from tests.faultserver import closed_port

FIELDS = {
    "url",
    "final_url",
    "status",
    "ok",
    "error",
    "attempts",
    "elapsed_ms",
    "bytes",
    "content_type",
    "redirects",
    "fetched_at",
    "depth",
    "parent",
    "body_path",
    "sha256",
    "method",
    "meta",
    "location",
    "proxy",
    "headers",
    "request_headers",
    "body",
    "body_encoding",
    "not_modified",
}


async def test_one_record_per_distinct_url(server: Server, tmp_path: Path) -> None:
    urls = [server.url(f"/ok/{i}") for i in range(50)]
    lines = [*urls, urls[0], urls[1].upper().replace("/OK/", "/ok/"), "not a url", "not a url"]
    result, records = await run_engine(tmp_path, lines, concurrency=8)
    by_url = {r["url"]: r for r in records}
    assert len(records) == len(by_url) == 51  # 50 URLs + one invalid line
    assert all(set(r) == FIELDS for r in records)
    assert by_url["not a url"]["error"]["kind"] == "invalid_url"
    assert by_url["not a url"]["attempts"] == 0
    good = by_url[urls[3]]
    assert good["ok"] is True and good["status"] == 200 and good["error"] is None
    assert good["bytes"] == len("<html>ok</html>") and good["content_type"] == "text/html"
    assert good["attempts"] == 1 and good["final_url"] == urls[3]
    assert good["fetched_at"].endswith("Z")
    assert result.snapshot.duplicates == 3
    assert sum(server.rec.hits.values()) == 50


async def test_no_dedup_fetches_duplicates(server: Server, tmp_path: Path) -> None:
    url = server.url("/ok/dup")
    _, records = await run_engine(tmp_path, [url] * 5, dedup=False)
    assert len(records) == 5
    assert server.rec.hits["/ok/dup"] == 5


async def test_per_host_limit_holds_under_load(server: Server, tmp_path: Path) -> None:
    lines = [server.url(f"/slow/{i}?s=0.03", host) for i in range(40) for host in server.ports]
    _, records = await run_engine(tmp_path, lines, concurrency=30, per_host=3)
    assert len(records) == 120 and all(r["ok"] for r in records)
    for host, port in server.ports.items():
        # The server counts concurrent requests per Host header: never above the limit,
        # and the limit is actually reached (the hosts run in parallel, not one by one).
        assert server.rec.peak[f"{host}:{port}"] == 3


async def test_deadline_bounds_a_hanging_url_with_retries_left(
    server: Server, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, records = await run_engine(tmp_path, [server.url("/hang/1")], timeout=0.6, retries=5)
    took = loop.time() - started
    [rec] = records
    assert rec["error"]["kind"] == "timeout"
    assert rec["attempts"] == 1  # no retry: the deadline, not the attempt, ran out
    # Never before the deadline; after it only as late as a loaded machine makes it (the
    # URL would otherwise hang until the server is torn down).
    assert 550 <= rec["elapsed_ms"] <= 10_000
    assert took < 15


async def test_retries_then_success_counts_attempts(server: Server, tmp_path: Path) -> None:
    _, records = await run_engine(tmp_path, [server.url("/flaky/a?fail=2")], retries=2)
    [rec] = records
    assert rec["ok"] is True and rec["status"] == 200 and rec["attempts"] == 3


async def test_retries_exhausted_gives_http_error(server: Server, tmp_path: Path) -> None:
    _, records = await run_engine(tmp_path, [server.url("/flaky/b?fail=5")], retries=1)
    [rec] = records
    assert rec["ok"] is False and rec["status"] == 503 and rec["attempts"] == 2
    assert rec["error"]["kind"] == "http"


async def test_4xx_is_not_retried(server: Server, tmp_path: Path) -> None:
    _, records = await run_engine(tmp_path, [server.url("/status/404")], retries=3)
    [rec] = records
    assert rec["status"] == 404 and rec["attempts"] == 1 and rec["error"]["kind"] == "http"


async def test_retry_after_is_honoured(server: Server, tmp_path: Path) -> None:
    url = server.url("/flaky/c?fail=1&retry_after=1")
    _, records = await run_engine(tmp_path, [url], retries=2, timeout=20.0)
    [rec] = records
    assert rec["ok"] is True and rec["attempts"] == 2
    first, second = server.rec.times["/flaky/c"]
    assert second - first >= 1.0


async def test_retry_after_beyond_deadline_is_not_waited(server: Server, tmp_path: Path) -> None:
    url = server.url("/status/503?retry_after=3600")
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, records = await run_engine(tmp_path, [url], retries=3, timeout=30.0)
    [rec] = records
    assert rec["attempts"] == 1 and rec["status"] == 503 and rec["error"]["kind"] == "http"
    assert loop.time() - started < 15  # not a wait for the deadline (30 s), nor the hour


async def test_back_off_does_not_hold_a_worker(server: Server, tmp_path: Path) -> None:
    # One worker: while the flaky URL waits out its Retry-After, the other URL is fetched.
    # (2 s: time enough for one local fetch however loaded the machine.)
    flaky = server.url("/flaky/d?fail=1&retry_after=2")
    other = server.url("/ok/other", "127.0.0.2")
    _, records = await run_engine(tmp_path, [flaky, other], concurrency=1, retries=1, timeout=20.0)
    assert [r["url"] for r in records] == [other, flaky]
    assert all(r["ok"] for r in records)


def assert_paced(arrivals: list[float], started: float, interval: float) -> None:
    """No faster than one request per ``interval``, on the server's own clock.

    The pacer gives the k-th request a start slot >= the run's start + k * interval, and a
    request reaches the server no earlier than its slot: so the k-th arrival (in order)
    is never before ``started + k * interval``. Load only delays arrivals, so this cannot
    fail on a slow machine, while unpaced requests (all at once) fail it at once. (Gaps
    between consecutive arrivals would not do: one late arrival bunches with the next.)"""
    for k, t in enumerate(sorted(arrivals)):
        assert t >= started + k * interval - 0.02, (k, t - started)


async def test_rps_paces_within_a_few_percent(server: Server, tmp_path: Path) -> None:
    lines = [server.url(f"/ok/{i}") for i in range(31)]
    started = time.monotonic()
    _, records = await run_engine(tmp_path, lines, concurrency=10, per_host=10, rps=20, burst=1)
    took = time.monotonic() - started
    assert len(records) == 31
    assert_paced([server.rec.times[f"/ok/{i}"][0] for i in range(31)], started, 1 / 20)
    assert took < 20  # ~1.5 s: paced, not stalled


async def test_per_host_rps_paces_each_host_separately(server: Server, tmp_path: Path) -> None:
    # Three hosts at 5 requests/s each, 9 requests per host: about 1.6 s when the hosts are
    # paced in parallel; >= 26 * 0.2 = 5.2 s if one pacer held them all.
    hosts = list(server.ports)
    lines = [server.url(f"/ok/{h}/{i}", h) for i in range(9) for h in hosts]
    started = time.monotonic()
    _, records = await run_engine(tmp_path, lines, concurrency=10, per_host_rps=5, burst=1)
    assert len(records) == 27
    arrivals = {h: [server.rec.times[f"/ok/{h}/{i}"][0] for i in range(9)] for h in hosts}
    for h in hosts:
        assert_paced(arrivals[h], started, 1 / 5)
    last = max(max(times) for times in arrivals.values())
    assert last - started < 4.0  # in parallel: 1.6 s, with 2.4 s to spare for a loaded machine


async def test_breaker_opens_and_refuses_at_once(tmp_path: Path) -> None:
    port = closed_port()
    lines = [f"http://127.0.0.1:{port}/{i}" for i in range(10)]
    _, records = await run_engine(
        tmp_path, lines, concurrency=1, retries=0, breaker_threshold=3, breaker_cooldown=60
    )
    kinds = [r["error"]["kind"] for r in records]
    assert kinds == ["connect"] * 3 + ["circuit_open"] * 7
    assert all(r["attempts"] == 0 for r in records[3:])


async def test_breaker_half_open_probe_recovers(server: Server, tmp_path: Path) -> None:
    # Injected clock: each hit on the other host's /ok/tick moves time on by two cooldowns
    # (an hour each: real time, however slow the machine, never ends one).
    def clock() -> float:
        return time.monotonic() + 7200.0 * server.rec.hits["/ok/tick"]

    lines = [server.url(f"/status/500/{i}") for i in range(2)]
    lines += [server.url("/ok/refused"), server.url("/ok/tick", "127.0.0.2")]
    lines += [server.url("/ok/probe"), server.url("/ok/after")]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    config = make_config(
        tmp_path, concurrency=1, retries=0, breaker_threshold=2, breaker_cooldown=3600.0
    )
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False, clock=clock)
    await engine.run()
    records = read_records(tmp_path / "out.jsonl")
    kinds = [r["error"]["kind"] if r["error"] else "ok" for r in records]
    # Two 500s open the breaker; the next URL is refused at once; after the cooldown
    # the probe goes through, succeeds and closes the breaker for the URLs after it.
    assert kinds == ["http", "http", "circuit_open", "ok", "ok", "ok"]
    assert server.rec.hits["/ok/refused"] == 0
    assert server.rec.hits["/ok/probe"] == 1 and server.rec.hits["/ok/after"] == 1


async def test_redirects_are_recorded(server: Server, tmp_path: Path) -> None:
    target = server.url("/ok/final")
    url = server.url(f"/redirect?to={target}")
    _, records = await run_engine(tmp_path, [url])
    [rec] = records
    assert rec["ok"] and rec["final_url"] == target and rec["redirects"] == []


async def test_stop_cancels_in_flight_and_queued(server: Server, tmp_path: Path) -> None:
    lines = [server.url(f"/hang/{i}") for i in range(20)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, concurrency=4, per_host=4, grace=0.2, timeout=30)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    task = asyncio.create_task(engine.run())
    await until(lambda: sum(server.rec.hits.values()) >= 4)
    engine.request_stop()
    result = await asyncio.wait_for(task, 20)
    records = read_records(tmp_path / "out.jsonl")
    assert result.interrupted
    assert sorted(r["url"] for r in records) == sorted(lines)
    assert {r["error"]["kind"] for r in records} == {"cancelled"}
    assert sum(1 for r in records if r["attempts"] == 1) == 4


async def test_stop_during_set_up_reads_nothing(server: Server, tmp_path: Path) -> None:
    """A signal between installing the handlers and starting the reader: nothing is read
    (so nothing is read and then dropped), and the run ends as interrupted."""
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(server.url(f"/ok/{i}") for i in range(100)) + "\n")
    source = LineSource(str(src))
    engine = Engine(make_config(tmp_path), source, install_signal_handlers=False)
    asyncio.get_running_loop().call_soon(engine.request_stop)  # lands in run()'s set-up
    result = await asyncio.wait_for(engine.run(), 20)
    assert result.interrupted
    assert source.bytes_read == 0 and sum(server.rec.hits.values()) == 0
    assert read_records(tmp_path / "out.jsonl") == []


async def test_in_flight_requests_finish_within_grace(server: Server, tmp_path: Path) -> None:
    lines = [server.url(f"/slow/{i}?s=0.3") for i in range(2)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, concurrency=2, grace=5.0)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    task = asyncio.create_task(engine.run())
    await until(lambda: sum(server.rec.hits.values()) >= 2)
    engine.request_stop()
    result = await asyncio.wait_for(task, 20)
    records = read_records(tmp_path / "out.jsonl")
    assert result.interrupted
    assert all(r["ok"] for r in records) and len(records) == 2


async def test_second_stop_cuts_the_grace_short(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    src.write_text(server.url("/hang/x") + "\n")
    config = make_config(tmp_path, grace=30.0, timeout=60)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    task = asyncio.create_task(engine.run())
    await until(lambda: bool(server.rec.hits))
    engine.request_stop()
    engine.request_stop()
    await asyncio.wait_for(task, 15)  # not the 30 s grace
    [rec] = read_records(tmp_path / "out.jsonl")
    assert rec["error"]["kind"] == "cancelled" and rec["attempts"] == 1


async def test_adaptive_backs_off_an_overloaded_host(server: Server, tmp_path: Path) -> None:
    # The host answers 503 (Retry-After: 0) whenever more than 4 requests are in flight.
    # Without --adaptive, 20 workers keep hammering it; with AIMD the host's limit drops
    # to what it can take, and most of the 503s never happen.
    lines = [server.url(f"/limited/{i}?max=4") for i in range(300)]
    common = {"concurrency": 20, "per_host": 20, "retries": 10, "breaker_threshold": 0}
    _, plain = await run_engine(tmp_path, lines, adaptive=False, **common)
    plain_503 = server.rec.hits["503"]
    server.rec.hits["503"] = 0
    _, adaptive = await run_engine(tmp_path, lines, adaptive=True, **common)
    adaptive_503 = server.rec.hits["503"]
    assert all(r["ok"] for r in adaptive)
    assert adaptive_503 * 3 < plain_503, (adaptive_503, plain_503)
    assert len(plain) == len(adaptive) == 300


async def test_adaptive_runs_obey_the_global_permits(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With --adaptive the global limit can drop below the number of workers (when the
    # event loop lags), so workers take a permit per URL. Here it starts at 2 of 8.
    # Without --adaptive the limit never moves and workers skip the semaphore.
    # (Held at 2: the loop-lag controller would otherwise add a permit after a second with
    # no lag, which a slow machine reaches while the 24 URLs are still running.)
    class HeldAtTwo(DynamicSemaphore):
        def resize(self, limit: int) -> None:
            pass

    monkeypatch.setattr(assembly_module, "DynamicSemaphore", lambda limit: HeldAtTwo(2))
    lines = [server.url(f"/slow/{i}?s=0.1") for i in range(24)]  # long enough to overlap
    port = server.ports["127.0.0.1"]
    _, records = await run_engine(tmp_path, lines, concurrency=8, per_host=8, adaptive=True)
    assert len(records) == 24 and all(r["ok"] for r in records)
    assert server.rec.peak[f"127.0.0.1:{port}"] == 2
    server.rec.peak.clear()
    _, records = await run_engine(tmp_path, lines, concurrency=8, per_host=8, adaptive=False)
    assert len(records) == 24 and server.rec.peak[f"127.0.0.1:{port}"] > 2


async def test_a_retry_taken_past_its_deadline_gives_back_the_breakers_probe(
    server: Server, tmp_path: Path
) -> None:
    # The URL's 503 opens its host's breaker (threshold 1); its retry then waits in the
    # frontier for the host's pacer (1 request/s). While it waits the injected clock jumps
    # past both the URL's deadline and the breaker's cooldown: allow() makes the retry the
    # half-open probe, then the deadline check ends it. The probe must be given back, or
    # the breaker refuses its host for good.
    now = [0.0]
    src = tmp_path / "urls.txt"
    src.write_text(server.url("/status/503?retry_after=0") + "\n")
    config = make_config(
        tmp_path,
        retries=1,
        timeout=10.0,
        per_host_rps=1.0,
        burst=1,
        breaker_threshold=1,
        breaker_cooldown=5.0,
    )
    engine = Engine(
        config, LineSource(str(src)), install_signal_handlers=False, clock=lambda: now[0]
    )
    task = asyncio.create_task(engine.run())
    # The retry is due and waits in the frontier (not in a worker) for the pacer.
    await until(
        lambda: (
            hasattr(engine, "stats")
            and engine.stats.retries == 1
            and engine._frontier.in_flight == 0
            and engine._frontier.queued == 1
        )
    )
    now[0] = 20.0  # past the deadline (10 s) and the cooldown (5 s)
    await asyncio.wait_for(task, 10)
    [rec] = read_records(tmp_path / "out.jsonl")
    assert rec["error"]["kind"] == "timeout" and rec["attempts"] == 1
    breaker = engine._parts.hosts.get(f"127.0.0.1:{server.ports['127.0.0.1']}").breaker
    assert breaker is not None and not breaker.probing, breaker.state
