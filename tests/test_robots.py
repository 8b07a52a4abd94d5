"""robots.txt rules and their cache: RFC 9309 verdicts by status, wildcards, groups per
user agent, Crawl-delay and Sitemap lines, one fetch per origin at a time, expiry."""

from __future__ import annotations

import asyncio

import pytest
from yarl import URL

from crawler import errors
from crawler.response import Response
from crawler.robots import ROBOTS_MAX_BYTES, RobotsCache, Rules

UA = "crawler/1.0"
ROBOTS = b"""\
User-agent: *
Disallow: /private/
Allow: /private/open
Disallow: /*.pdf$
Disallow: /tmp*/cache
Crawl-delay: 2.5
Sitemap: http://a.test/sitemap.xml

User-agent: otherbot
Disallow: /
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Origin:
    """A fetch of robots.txt: answers from a table, counts requests, can be held."""

    def __init__(self, status: int = 200, body: bytes = ROBOTS) -> None:
        self.status, self.body = status, body
        self.requests: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.error: errors.FetchError | None = None

    async def __call__(self, url: URL) -> Response:
        self.requests.append(str(url))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return Response(
            status=self.status,
            final_url=str(url),
            content_type="text/plain",
            nbytes=len(self.body),
            body=self.body,
        )


def cache(origin: Origin, clock: FakeClock, ttl: float = 60.0, **kw: object) -> RobotsCache:
    return RobotsCache(origin, ttl=ttl, clock=clock, **kw)  # type: ignore[arg-type]


async def test_rules_allow_disallow_longest_match_and_wildcards() -> None:
    rules = await cache(Origin(), FakeClock()).rules(URL("http://a.test/x"))
    allowed = {
        "http://a.test/": True,
        "http://a.test/private/": False,
        "http://a.test/private/secret": False,
        "http://a.test/private/open": True,  # the longer Allow wins
        "http://a.test/doc.pdf": False,
        "http://a.test/doc.pdf?x=1": True,  # '$' anchors the end
        "http://a.test/tmp1/cache": False,
        "http://a.test/tmp/cache": False,  # '*' matches nothing too
        "http://a.test/cache": True,
    }
    assert {u: rules.allows(u, UA) for u in allowed} == allowed
    assert rules.allows("http://a.test/anything", "otherbot/2") is False
    assert rules.crawl_delay(UA) == 2.5
    assert rules.sitemaps == ["http://a.test/sitemap.xml"]


async def test_robots_is_fetched_from_the_origin_of_the_url() -> None:
    origin = Origin()
    robots = cache(origin, FakeClock())
    await robots.rules(URL("http://a.test:8080/deep/page?q=1"))
    await robots.rules(URL("https://a.test/other"))
    assert origin.requests == ["http://a.test:8080/robots.txt", "https://a.test/robots.txt"]


@pytest.mark.parametrize("status", [404, 403, 410])
async def test_4xx_allows_everything(status: int) -> None:
    rules = await cache(Origin(status=status), FakeClock()).rules(URL("http://a.test/"))
    assert rules.allows("http://a.test/private/", UA)
    assert rules.crawl_delay(UA) is None


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_disallows_the_origin_for_a_short_while(status: int) -> None:
    clock, origin = FakeClock(), Origin(status=status)
    robots = cache(origin, clock, ttl=86400.0)
    rules = await robots.rules(URL("http://a.test/"))
    assert not rules.allows("http://a.test/", UA)
    assert rules.disallow_all is not None and str(status) in rules.disallow_all
    assert rules.expires < clock.now + 86400.0  # not for the whole TTL
    clock.now = rules.expires + 1
    origin.status = 200
    assert (await robots.rules(URL("http://a.test/"))).allows("http://a.test/", UA)
    assert len(origin.requests) == 2


async def test_no_response_gives_no_verdict() -> None:
    origin = Origin()
    origin.error = errors.ConnectError("refused")
    rules = await cache(origin, FakeClock()).rules(URL("http://a.test/"))
    assert rules.parser is None and rules.disallow_all is None
    assert rules.allows("http://a.test/private/", UA)


async def test_rules_are_cached_until_the_ttl_then_fetched_again() -> None:
    clock, origin = FakeClock(), Origin()
    seen: list[str] = []
    robots = cache(origin, clock, ttl=60.0, on_new=lambda o, r: seen.append(o))
    first = await robots.rules(URL("http://a.test/1"))
    clock.now += 59.0
    assert await robots.rules(URL("http://a.test/2")) is first
    assert robots.fetched == 1 and seen == ["http://a.test"]
    clock.now += 2.0
    again = await robots.rules(URL("http://a.test/3"))
    assert again is not first
    assert robots.fetched == 2 and seen == ["http://a.test", "http://a.test"]


async def test_concurrent_callers_share_one_fetch() -> None:
    origin = Origin()
    origin.release.clear()
    robots = cache(origin, FakeClock())
    waiters = [asyncio.create_task(robots.rules(URL(f"http://a.test/{i}"))) for i in range(20)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(origin.requests) == 1
    origin.release.set()
    results = await asyncio.gather(*waiters)
    assert all(r is results[0] for r in results)
    assert robots.fetched == 1


async def test_a_cancelled_loader_does_not_cancel_its_waiters() -> None:
    origin = Origin()
    origin.release.clear()
    robots = cache(origin, FakeClock())
    loader = asyncio.create_task(robots.rules(URL("http://a.test/1")))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(robots.rules(URL("http://a.test/2")))
    await asyncio.sleep(0)
    loader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loader
    origin.release.set()
    rules = await waiter  # it loads the rules itself
    assert not rules.allows("http://a.test/private/", UA)
    assert len(origin.requests) == 2


async def test_a_long_robots_txt_is_read_to_the_limit_without_its_cut_line() -> None:
    head = b"User-agent: *\nDisallow: /first\n"
    last = b"Disallow: /cut-in-half-by-the-limit\n"
    kept = ROBOTS_MAX_BYTES - len(b"Disallow: /")  # the limit cuts the last line there
    filler = b"#" * (kept - len(head) - 1) + b"\n"
    body = head + filler + last
    rules = await cache(Origin(body=body[:ROBOTS_MAX_BYTES]), FakeClock()).rules(
        URL("http://a.test/")
    )
    assert not rules.allows("http://a.test/first", UA)
    # The cut line "Disallow: /cut..." would read "Disallow: /" and disallow everything.
    assert rules.allows("http://a.test/other", UA)


def test_a_url_too_costly_to_match_is_refused() -> None:
    from protego import Protego

    text = "User-agent: *\n" + "Disallow: /*a*b*c$\n" * 2000
    rules = Rules(Protego.parse(text), wildcards=text.count("*"))
    assert rules.allows("http://a.test/short", UA)
    assert not rules.allows("http://a.test/" + "z" * 1000, UA)
