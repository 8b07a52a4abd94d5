"""An unexpected exception while fetching is a bug of ours: kind ``internal``, never
``protocol``; its traceback is printed once; the summary counts it; no retry, no breaker.

The bugs are provoked in our own code (a ``follow`` callable the fetcher calls, a method
of the fetcher replaced), never by patching aiohttp.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, NoReturn

import pytest
from rich.console import Console
from yarl import URL

from crawler import errors
from crawler.body import BodyReader
from crawler.config import FetchConfig
from crawler.errormap import map_exception
from crawler.fetcher import Fetcher
from crawler.progress import render_summary
from crawler.session import make_session
from tests.conftest import Server, run_engine


@pytest.mark.parametrize(
    "exc",
    [TypeError("x"), AttributeError("x"), KeyError("x"), RuntimeError("x"), AssertionError()],
)
def test_exceptions_that_are_bugs_map_to_internal(exc: BaseException) -> None:
    mapped = map_exception(exc, deadline_left=5)
    assert isinstance(mapped, errors.InternalError)
    assert mapped.kind == "internal" and not mapped.retryable
    assert type(exc).__name__ in mapped.message


def _bad_follow(url: URL) -> NoReturn:
    raise TypeError("follow() met a bug")


async def test_a_bug_in_the_fetcher_is_internal_and_reported_once(
    server: Server, capsys: pytest.CaptureFixture[str], expect_internal: None
) -> None:
    target = server.url("/ok/final")
    url = URL(server.url(f"/redirect?to={target}"))
    cfg = FetchConfig()
    before = Fetcher.bugs_met
    async with make_session(cfg) as session:
        fetcher = Fetcher(session, cfg)
        for _ in range(3):
            with pytest.raises(errors.FetchError) as info:
                await fetcher.fetch(url, 5.0, follow=_bad_follow)
            assert info.value.kind == "internal"
            assert "TypeError: follow() met a bug" in info.value.message
    assert Fetcher.bugs_met - before == 3
    err = capsys.readouterr().err
    assert err.count("crawler: internal error") == 1  # once per distinct bug, not per URL
    assert err.count("Traceback (most recent call last)") == 1
    assert "_bad_follow" in err and "TypeError: follow() met a bug" in err
    assert "/redirect" not in err  # the URL (credentials, maybe) stays in its record


async def test_internal_records_are_counted_not_retried_and_spare_the_breaker(
    server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    expect_internal: None,
) -> None:
    async def broken(self: BodyReader, resp: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise AttributeError("'NoneType' object has no attribute 'status'")

    monkeypatch.setattr(BodyReader, "read", broken)
    urls = [server.url(f"/ok/{i}") for i in range(6)]
    result, records = await run_engine(
        tmp_path, urls, retries=2, breaker_threshold=2, concurrency=1
    )
    assert len(records) == 6
    assert {r["error"]["kind"] for r in records} == {"internal"}  # never circuit_open
    assert all(r["attempts"] == 1 for r in records)  # a bug is not retried
    assert all("AttributeError" in r["error"]["message"] for r in records)
    assert result.snapshot.by_error == {"internal": 6}
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == 1
    out = io.StringIO()
    render_summary(result.snapshot, Console(file=out, width=200))
    assert "internal: 6" in out.getvalue()
