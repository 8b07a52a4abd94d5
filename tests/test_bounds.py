"""Bounded per-host state: the robots.txt cache holds at most so many origins (404s and
errors too, which hold no text), and a Crawl-delay lives exactly as long as a cached
robots.txt asks it or its host is known: never dropped while it applies. No blocking
call on the loop at shutdown (the link queue's spill thread is not waited for)."""

from __future__ import annotations

import threading
from pathlib import Path

from yarl import URL

from crawler.config import BreakerConfig, LimitConfig
from crawler.limiter import HostTable
from crawler.linkqueue import Link, LinkQueue
from crawler.robots import RobotsCache, Rules
from crawler.urls import host_key
from tests.test_robots import FakeClock, Origin

DELAYED = b"User-agent: *\nCrawl-delay: 4\n"


def table(clock: FakeClock) -> HostTable:
    return HostTable(LimitConfig(), BreakerConfig(), clock)


def wired(origin: Origin, clock: FakeClock, hosts: HostTable, **kw: object) -> RobotsCache:
    """A cache wired to the host table the way crawler/crawling.py wires it."""

    def on_new(o: str, rules: Rules) -> None:
        delay = rules.crawl_delay("crawler/1.0")
        if delay:
            hosts.set_crawl_delay(host_key(URL(o)), delay)

    def on_evict(o: str, rules: Rules) -> None:
        if rules.crawl_delay("crawler/1.0"):
            hosts.forget_crawl_delay(host_key(URL(o)))

    return RobotsCache(
        origin,  # type: ignore[arg-type]
        ttl=60.0,
        clock=clock,
        on_new=on_new,
        on_evict=on_evict,
        **kw,  # type: ignore[arg-type]
    )


async def test_entries_are_bounded_even_when_they_hold_no_bytes() -> None:
    origin = Origin(status=404, body=b"")
    cache = RobotsCache(origin, ttl=60.0, clock=FakeClock(), max_entries=3)  # type: ignore[arg-type]
    for i in range(50):
        await cache.rules(URL(f"http://h{i}.test/"))
    assert len(cache) == 3
    assert len(origin.requests) == 50


async def test_least_recently_used_goes_first_and_comes_back_on_demand() -> None:
    origin = Origin()
    cache = RobotsCache(origin, ttl=60.0, clock=FakeClock(), max_entries=2)  # type: ignore[arg-type]
    a, b, c = (URL(f"http://{h}.test/") for h in "abc")
    await cache.rules(a)
    await cache.rules(b)
    await cache.rules(a)  # a used last: b is the one to go
    await cache.rules(c)
    fetched = len(origin.requests)
    await cache.rules(a)
    assert len(origin.requests) == fetched  # still cached
    await cache.rules(b)
    assert len(origin.requests) == fetched + 1  # evicted: fetched again, same verdicts
    assert not (await cache.rules(b)).allows("http://b.test/private/x", "crawler/1.0")


async def test_byte_bound_still_applies() -> None:
    body = b"User-agent: *\nDisallow: /x\n" * 10
    cache = RobotsCache(Origin(body=body), ttl=60.0, clock=FakeClock(), max_bytes=len(body) * 3)  # type: ignore[arg-type]
    for i in range(10):
        await cache.rules(URL(f"http://h{i}.test/"))
    assert len(cache) <= 3


async def test_every_entry_cached_is_released_once_replaced_or_evicted() -> None:
    clock = FakeClock()
    events: list[tuple[str, str]] = []
    cache = RobotsCache(
        Origin(),  # type: ignore[arg-type]
        ttl=60.0,
        clock=clock,
        on_new=lambda o, r: events.append(("new", o)),
        on_evict=lambda o, r: events.append(("gone", o)),
        max_entries=2,
    )
    await cache.rules(URL("http://a.test/"))
    clock.now += 61  # expired: read again, the old entry released first
    await cache.rules(URL("http://a.test/"))
    await cache.rules(URL("http://b.test/"))
    await cache.rules(URL("http://c.test/"))  # a (least recently used) goes
    a, b, c = "http://a.test", "http://b.test", "http://c.test"
    assert events == [
        ("new", a),
        ("gone", a),
        ("new", a),
        ("new", b),
        ("new", c),
        ("gone", a),
    ]


def interval(hosts: HostTable, key: str) -> float | None:
    pacer = hosts.get(key).pacer
    return pacer.interval if pacer is not None else None


async def test_crawl_delays_are_bounded_with_the_robots_cache() -> None:
    clock = FakeClock()
    hosts = table(clock)
    cache = wired(Origin(body=DELAYED), clock, hosts, max_entries=4)
    for i in range(100):
        await cache.rules(URL(f"http://h{i}.test/"))
    assert len(hosts._crawl_delays) == 4
    # Every origin still cached keeps its delay for a host met anew...
    for i in range(96, 100):
        assert interval(hosts, f"h{i}.test:80") == 4.0
    # ...and one evicted learns it again when its robots.txt is read again.
    assert interval(hosts, "h0.test:80") is None
    hosts.sweep()
    await cache.rules(URL("http://h0.test/"))
    assert interval(hosts, "h0.test:80") == 4.0


async def test_a_live_host_keeps_its_delay_past_its_robots_eviction() -> None:
    clock = FakeClock()
    hosts = table(clock)
    cache = wired(Origin(body=DELAYED), clock, hosts, max_entries=1)
    await cache.rules(URL("http://a.test/"))
    host = hosts.get("a.test:80")
    host.active = 1  # a request in flight
    await cache.rules(URL("http://b.test/"))  # a's robots.txt evicted
    host.active = 0
    assert host.pacer is not None and host.pacer.interval == 4.0
    assert "a.test:80" in hosts._crawl_delays  # not dropped while the host is known
    hosts.release(host)
    assert "a.test:80" not in hosts._crawl_delays  # forgotten with its host


async def test_origins_sharing_a_host_key_keep_the_delay_until_the_last_goes() -> None:
    clock = FakeClock()
    hosts = table(clock)
    cache = wired(Origin(body=DELAYED), clock, hosts, max_entries=2)
    await cache.rules(URL("http://a.test/"))
    await cache.rules(URL("http://user@a.test/"))  # another origin, same host key
    await cache.rules(URL("http://b.test/"))  # http://a.test evicted
    assert interval(hosts, "a.test:80") == 4.0  # http://user@a.test still asks it
    hosts.sweep()
    await cache.rules(URL("http://c.test/"))  # the last one goes too
    assert "a.test:80" not in hosts._crawl_delays


def test_closing_a_spilled_link_queue_does_not_wait_for_its_thread(tmp_path: Path) -> None:
    queue = LinkQueue(1, str(tmp_path))
    for i in range(20_000):  # past the memory part: chunks go to the spill thread
        queue.push(Link(f"http://a.test/{i}", 1, None, i))
    assert queue._executor is not None
    gate = threading.Event()
    queue._executor.submit(gate.wait)  # the spill thread is busy (a slow disk)
    closer = threading.Thread(target=queue.close)
    closer.start()
    closer.join(10)
    try:
        assert not closer.is_alive(), "close() waited for the spill thread"
    finally:
        gate.set()
        closer.join()
