"""Politeness that means what it says (issue 13): pacing is decided by the frontier at
hand-out, so a rate of N/s per host never sends two requests closer than 1/N s (burst 1
unless --burst says more), and a paced host never holds a worker.

The frontier's gating is tested with a fake clock (the pacing timer's callback is called
by hand after the clock moves); the rest against real servers on 127.0.0.1 and 127.0.0.2
that record arrival times. Assertions are about order and minimum spacing, never rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from crawler.config import BreakerConfig, CrawlConfig, LimitConfig
from crawler.engine import Engine
from crawler.frontier import Frontier
from crawler.inputs import LineSource
from crawler.limiter import HostTable
from crawler.task import Item
from crawler.urls import host_key, parse_url
from tests.conftest import Server, make_config, read_records, run_engine, until
from tests.test_cli import assert_no_traceback, run


# -- the frontier, with a fake clock -------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def paced(clock: Clock, maxsize: int = 20, **limits: float) -> Frontier:
    limits.setdefault("concurrency", 10)
    table = HostTable(LimitConfig(**limits), BreakerConfig(), clock)  # type: ignore[arg-type]
    return Frontier(maxsize, table)


def item(url: str) -> Item:
    u = parse_url(url)
    return Item(url, u, host_key(u))


def take(f: Frontier) -> str | None:
    got = f.get_nowait()
    return got.raw if got is not None else None


def timer_fires(f: Frontier) -> None:
    """What the frontier's pacing timer does when it fires (the fake clock has moved)."""
    f._on_pacing_timer()


async def test_a_paced_host_gets_one_url_per_interval_and_holds_nothing_meanwhile() -> None:
    clock = Clock()
    f = paced(clock, per_host_rps=1)  # default burst: 1
    for u in ("http://a/1", "http://a/2", "http://a/3", "http://b/1"):
        f.offer(item(u))
    first = f.get_nowait()
    assert first is not None and first.raw == "http://a/1"
    # a/2 and a/3 wait (parked on their host, no slot held); b/1 is not held up by them.
    assert take(f) == "http://b/1"
    assert take(f) is None
    assert f.queued == 2 and f.in_flight == 2
    f.done(first)  # a free slot is not enough: the pacer is not ready
    assert take(f) is None
    clock.now += 0.999
    timer_fires(f)
    assert take(f) is None
    clock.now += 0.001
    timer_fires(f)
    assert take(f) == "http://a/2"
    assert take(f) is None  # the next one only a whole interval after a/2's start
    clock.now += 1.0
    timer_fires(f)
    assert take(f) == "http://a/3"


async def test_burst_lets_that_many_start_at_once_then_one_per_interval() -> None:
    clock = Clock()
    f = paced(clock, per_host_rps=2, burst=3)
    for i in range(5):
        f.offer(item(f"http://a/{i}"))
    assert [take(f) for _ in range(4)] == ["http://a/0", "http://a/1", "http://a/2", None]
    clock.now += 0.5
    timer_fires(f)
    assert [take(f), take(f)] == ["http://a/3", None]


async def test_the_pacer_is_committed_at_hand_out_not_when_the_url_became_ready() -> None:
    # a/2 becomes ready (slot and pacer) at t=5 but no worker takes it before t=7. Its
    # request starts at 7, so a/3 must wait until 8: had the pacer been committed at 5,
    # a/3 could go at 7, right after a/2.
    clock = Clock()
    f = paced(clock, per_host=1, per_host_rps=1)
    f.offer(item("http://a/1"))
    f.offer(item("http://a/2"))
    first = f.get_nowait()
    assert first is not None and take(f) is None  # a/2 parked: host full
    clock.now += 5
    f.done(first)  # a/2 moves to ready with the slot
    clock.now += 2
    second = f.get_nowait()
    assert second is not None and second.raw == "http://a/2"
    f.done(second)
    f.offer(item("http://a/3"))
    clock.now += 0.9
    assert take(f) is None
    clock.now += 0.1
    timer_fires(f)
    assert take(f) == "http://a/3"


async def test_a_ready_url_whose_pacer_slowed_down_goes_back_to_wait() -> None:
    # a/2 got a/1's slot (and its pacer was ready) when robots.txt's Crawl-delay: 5
    # arrived: it is not handed out 0.1 s after a/1, but parked again until 5 s after it.
    clock = Clock()
    f = paced(clock, per_host=1, per_host_rps=10)
    f.offer(item("http://a/1"))
    f.offer(item("http://a/2"))
    first = f.get_nowait()
    assert first is not None and take(f) is None
    clock.now += 0.1
    f.done(first)  # a/2 now ready, its slot reserved
    f._hosts.set_crawl_delay(first.host_key, 5.0)
    assert take(f) is None and f.queued == 1
    clock.now += 4.8
    timer_fires(f)
    assert take(f) is None
    clock.now += 0.2
    timer_fires(f)
    assert take(f) == "http://a/2"


async def test_global_rps_gates_every_host() -> None:
    clock = Clock()
    f = paced(clock, rps=1)
    for u in ("http://a/1", "http://b/1", "http://c/1"):
        f.offer(item(u))
    assert take(f) == "http://a/1"
    assert take(f) is None  # b's host is free, the global pacer is not
    clock.now += 1
    timer_fires(f)
    assert [take(f), take(f)] == ["http://b/1", None]


async def test_global_and_per_host_pacers_both_hold() -> None:
    clock = Clock()
    f = paced(clock, rps=4, per_host_rps=1)
    for u in ("http://a/1", "http://a/2", "http://b/1"):
        f.offer(item(u))
    assert take(f) == "http://a/1"
    clock.now += 0.25
    timer_fires(f)
    assert [take(f), take(f)] == ["http://b/1", None]  # a/2: its host's pacer says 1 s
    clock.now += 0.75
    timer_fires(f)
    assert take(f) == "http://a/2"


async def test_a_getter_is_woken_when_the_pacer_is_ready() -> None:
    clock = Clock()
    f = paced(clock, per_host_rps=1)
    f.offer(item("http://a/1"))
    f.offer(item("http://a/2"))
    assert take(f) == "http://a/1"
    waiter = asyncio.create_task(f.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.now += 1
    timer_fires(f)
    got = await asyncio.wait_for(waiter, 10)
    assert got is not None and got.raw == "http://a/2"
    f.stop()


async def test_stop_returns_urls_waiting_for_their_pacer_and_disarms_it() -> None:
    clock = Clock()
    f = paced(clock, per_host_rps=0.01, rps=0.5)
    for u in ("http://a/1", "http://a/2", "http://a/3", "http://b/1"):
        f.offer(item(u))
    assert take(f) == "http://a/1"
    assert take(f) is None
    left = f.stop()
    assert sorted(i.raw for i in left) == ["http://a/2", "http://a/3", "http://b/1"]
    assert f._wakes._timer is None and not f._wakes and f.queued == 0
    timer_fires(f)  # a late timer finds nothing to do
    assert take(f) is None


async def test_robots_checks_are_not_paced_but_the_requests_after_them_are() -> None:
    # Crawl mode: a URL is handed out first for its robots.txt check (no request to pace),
    # then given back and handed out again when its host's pacer allows.
    clock = Clock()
    f = paced(clock, per_host_rps=1)
    f.checks_first = True
    for u in ("http://a/1", "http://a/2", "http://a/3"):
        f.offer(item(u))
    checks = [f.get_nowait() for _ in range(3)]
    assert [c.raw for c in checks if c is not None] == ["http://a/1", "http://a/2", "http://a/3"]
    for c in checks:
        assert c is not None
        c.checked = True  # robots.txt allows it
        assert f.requeue(c)
    assert take(f) == "http://a/1"
    assert take(f) is None
    clock.now += 1
    timer_fires(f)
    assert [take(f), take(f)] == ["http://a/2", None]


async def test_a_retry_due_at_once_still_waits_for_its_pacer() -> None:
    clock = Clock()
    f = paced(clock, per_host_rps=1)
    f.offer(item("http://a/1"))
    first = f.get_nowait()
    assert first is not None
    first.attempts = 1
    f.retry_later(first, 0.0)
    await until(lambda: f.queued == 1)  # the back-off timer has made it due
    assert take(f) is None
    clock.now += 1
    timer_fires(f)
    assert take(f) == "http://a/1"


async def test_random_schedules_keep_every_pacer_and_strand_no_url() -> None:
    # Random offers, hand-outs, completions, robots checks given back and clock steps, on
    # three hosts: every hand-out that starts a request conforms to its host's pacer and
    # the global one (GCRA: the j-th start after the i-th is at least (j - i - burst + 1)
    # intervals later), and in the end every URL has been handed out exactly once more
    # than it was given back: none is stranded in a parked queue.
    for seed in range(40):
        rnd = random.Random(seed)
        clock = Clock()
        burst = rnd.choice((1, 2, 3))
        f = paced(clock, per_host=2, per_host_rps=1, rps=2.5, burst=burst)
        f.checks_first = rnd.random() < 0.5
        starts: dict[str, list[float]] = {"*": []}
        out: list[Item] = []
        offered = taken = 0
        for _ in range(300):
            op = rnd.random()
            if op < 0.3:
                if f.offer(item(f"http://h{rnd.randrange(3)}/{offered}")):
                    offered += 1  # (refused when full)
            elif op < 0.6:
                got = f.get_nowait()
                if got is not None:
                    if f._gated(got):
                        starts.setdefault(got.host_key, []).append(clock.now)
                        starts["*"].append(clock.now)
                    out.append(got)
            elif op < 0.8 and out:
                done = out.pop(rnd.randrange(len(out)))
                if f._gated(done):
                    f.done(done)
                    taken += 1
                else:
                    done.checked = True
                    assert f.requeue(done)
            else:
                clock.now += rnd.choice((0.0, 0.1, 0.25, 0.5, 1.0))
                if rnd.random() < 0.7:  # else a hand-out comes before the timer
                    timer_fires(f)
        f.close_input()
        for _ in range(10 * offered + 10):  # drain: let time pass, finish everything
            for it in out:
                if f._gated(it):
                    f.done(it)
                    taken += 1
                else:
                    it.checked = True
                    f.requeue(it)
            out = []
            while (got := f.get_nowait()) is not None:
                if f._gated(got):
                    starts.setdefault(got.host_key, []).append(clock.now)
                    starts["*"].append(clock.now)
                out.append(got)
            if f.finished and not out:
                break
            clock.now += 0.5
            timer_fires(f)
        assert taken == offered and f.finished, (seed, taken, offered, f.queued)
        for key, times in starts.items():
            interval = 0.4 if key == "*" else 1.0
            for i, j in itertools.combinations(range(len(times)), 2):
                bound = (j - i - burst + 1) * interval
                assert times[j] - times[i] >= bound - 1e-9, (seed, key, i, j)


# -- against real servers ----------------------------------------------------------------------
def arrivals(server: Server, paths: list[str]) -> list[float]:
    return sorted(server.rec.times[p][0] for p in paths)


async def test_per_host_rps_never_sends_two_requests_closer_than_the_interval(
    server: Server, tmp_path: Path
) -> None:
    # 5 requests/s with the default burst: before issue 13 the first five arrived at once.
    interval = 0.2
    paths = [f"/ok/{i}" for i in range(6)]
    started = time.monotonic()
    _, records = await run_engine(
        tmp_path, [server.url(p) for p in paths], concurrency=6, per_host=6, per_host_rps=5
    )
    assert len(records) == 6 and all(r["ok"] for r in records)
    times = arrivals(server, paths)
    # Each request starts a whole interval after the one before it. It reaches the server
    # a little later (connection set-up, the loop's turn): a gap can come out shorter only
    # by as much as the earlier request was delayed more than the later one, far less
    # than 0.1 s on loopback even on a loaded machine; a burst gives gaps of ~0.
    for k, (a, b) in enumerate(itertools.pairwise(times)):
        assert b - a >= interval - 0.1, (k, b - a)
    # And the k-th arrival is never before the run's start + k intervals (load only
    # delays arrivals, so this bound has no tolerance to speak of).
    for k, t in enumerate(times):
        assert t >= started + k * interval - 0.02, (k, t - started)


async def test_burst_option_lets_that_many_go_at_once(server: Server, tmp_path: Path) -> None:
    # 2/s with --burst 3: three requests at once, the fourth half a second after them.
    # (With burst 1 the third could not start before started + 1 s.)
    paths = [f"/ok/{i}" for i in range(4)]
    src = tmp_path / "urls.txt"
    src.write_text("".join(server.url(p) + "\n" for p in paths))
    started = time.monotonic()
    code, out, err = await run(
        "fetch", str(src), "-q", "-c", "4", "--per-host-rps", "2", "--burst", "3"
    )
    assert code == 0, err
    assert_no_traceback(err)
    assert len(out.splitlines()) == 4
    times = arrivals(server, paths)
    assert times[3] >= started + 0.5 - 0.02
    assert times[2] - times[0] < 0.5  # not paced apart: the burst


async def test_burst_is_validated_and_documented() -> None:
    code, _, err = await run("fetch", "--burst", "0", "-")
    assert code == 2 and err.count(b"\n") == 1 and b"--burst" in err, err
    assert_no_traceback(err)
    for command in ("fetch", "crawl"):
        code, out, _ = await run(command, "--help")
        assert code == 0 and b"--burst" in out


async def test_a_paced_host_does_not_hold_the_workers(server: Server, tmp_path: Path) -> None:
    # Host A at 0.5 requests/s with burst 2 and four URLs, two workers: before issue 13,
    # after A's first two both workers slept in A's pacer (2 s and 4 s) and host B's URLs
    # waited behind them. Now B's are sent while A's wait in the frontier.
    a = [f"/ok/a{i}" for i in range(4)]
    b = [f"/ok/b{i}" for i in range(2)]
    lines = [server.url(p) for p in a] + [server.url(p, "127.0.0.2") for p in b]
    _, records = await run_engine(
        tmp_path, lines, concurrency=2, per_host=2, per_host_rps=0.5, burst=2
    )
    assert len(records) == 6 and all(r["ok"] for r in records)
    a_times, b_times = arrivals(server, a), arrivals(server, b)
    assert max(b_times) < a_times[2], (b_times, a_times)


async def test_urls_waiting_for_their_pacer_hold_no_worker_and_are_cancelled_at_once(
    server: Server, tmp_path: Path
) -> None:
    # One request per 10 s to the host: after the first, the others wait in the frontier,
    # not in workers. A stop: they were never sent, so `cancelled` at once (attempts 0).
    lines = [server.url(f"/ok/{i}") for i in range(5)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(lines) + "\n")
    config = make_config(tmp_path, concurrency=5, per_host=5, per_host_rps=0.1, grace=30)
    engine = Engine(config, LineSource(str(src)), install_signal_handlers=False)
    task = asyncio.create_task(engine.run())
    await until(lambda: sum(server.rec.hits.values()) >= 1)
    await until(lambda: engine._frontier.queued == 4, timeout=10)
    assert engine._frontier.in_flight <= 1  # the one request sent, nothing sleeping
    started = time.monotonic()
    engine.request_stop()
    result = await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 5  # not the pacer's 10 s turns, nor the grace
    assert result.interrupted
    records = {r["url"]: r for r in read_records(tmp_path / "out.jsonl")}
    assert sorted(records) == sorted(lines)
    unsent = [r for r in records.values() if not r["attempts"]]
    assert len(unsent) == 4 and {r["error"]["kind"] for r in unsent} == {"cancelled"}
    assert sum(server.rec.hits.values()) == 1


# -- Crawl-delay ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def two_sites(delay_a: float, pages: int) -> AsyncIterator[tuple[int, dict[str, float]]]:
    """The same site on 127.0.0.1 (robots.txt: Crawl-delay ``delay_a``) and 127.0.0.2 (no
    delay; its home page answers after 0.2 s, so A's links are queued first)."""
    seen: dict[str, float] = {}

    async def robots(request: web.Request) -> web.Response:
        text = "User-agent: *\nDisallow: /private\n"
        if request.host.startswith("127.0.0.1"):
            text += f"Crawl-delay: {delay_a}\n"
        return web.Response(text=text)

    async def home(request: web.Request) -> web.Response:
        seen[f"{request.host.split(':')[0]}/"] = time.monotonic()
        if request.host.startswith("127.0.0.2"):
            await asyncio.sleep(0.2)
        links = "".join(f'<a href="/p/{i}">{i}</a>' for i in range(pages))
        links += '<a href="/private/x">x</a>' * 3
        return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")

    async def page(request: web.Request) -> web.Response:
        seen[f"{request.host.split(':')[0]}{request.path}"] = time.monotonic()
        return web.Response(text="<html>page</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/robots.txt", robots)
    app.router.add_get("/", home)
    app.router.add_get("/p/{n}", page)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        # One port on both addresses: a port free on 127.0.0.1 may be taken on 127.0.0.2
        # (another process's), so try another (a few times, then fail).
        for attempt in range(10):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            try:
                await web.TCPSite(runner, "127.0.0.2", port).start()
                break
            except OSError:
                await site.stop()
                if attempt == 9:
                    raise
        yield port, seen
    finally:
        await runner.cleanup()


async def test_a_crawl_delay_host_does_not_hold_the_workers(tmp_path: Path) -> None:
    # Crawl-delay 1 s on A; two workers. A's pages go one a second; B's pages (and the
    # robots-disallowed links of both, which use up no Crawl-delay turn) are done while
    # A's second request is not yet due.
    async with two_sites(1.0, 3) as (port, seen):
        seeds = [f"http://127.0.0.1:{port}/", f"http://127.0.0.2:{port}/"]
        _, records = await run_engine(
            tmp_path, seeds, concurrency=2, crawl=CrawlConfig(), burst=5, per_host=4
        )
    by_kind = sorted((r["error"] or {}).get("kind", "ok") for r in records)
    assert by_kind == ["ok"] * 8 + ["robots"] * 2  # /private/x once per host
    a = sorted(t for k, t in seen.items() if k.startswith("127.0.0.1"))
    b = [t for k, t in seen.items() if k.startswith("127.0.0.2/p/")]
    assert len(a) == 4 and len(b) == 3
    assert max(b) < a[1], (b, a)
    # Crawl-delay is burst 1 whatever --burst says: A's requests a whole second apart,
    # less the arrival jitter explained above.
    for k, (x, y) in enumerate(itertools.pairwise(a)):
        assert y - x >= 1.0 - 0.1, (k, y - x)
