"""Issue 14: the command line is a thin client of the Python API's option mapping: one
function (``crawler.options.run_config``) turns options into a RunConfig for both, and a
value the config refuses is the same error, named the way the user typed the option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec.structs
import pytest

import crawler
from crawler.cli.app import _main
from crawler.cli.options import RunOptions
from crawler.options import run_config


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        _main([*args, "-q", "-"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("crawler: error: ")
    return err.removeprefix("crawler: error: ").rstrip("\n")


@pytest.mark.parametrize(
    ("flag", "value", "option", "api_value"),
    [
        ("--header", "X A: v", "header", ["X A: v"]),
        ("--header", "X-A: a\nb", "header", {"X-A": "a\nb"}),
        ("--header", "Content-Length: 5", "header", ["Content-Length: 5"]),
        ("--header", "no colon", "header", ["no colon"]),
        ("--secret-header", "bad name", "secret_header", ["bad name"]),
        ("--user-agent", "a\r\nX: 1", "user_agent", "a\r\nX: 1"),
    ],
)
@pytest.mark.parametrize("command", ["fetch", "crawl"])
def test_the_cli_and_the_api_refuse_a_value_with_one_message(
    capsys: pytest.CaptureFixture[str],
    command: str,
    flag: str,
    value: str,
    option: str,
    api_value: object,
) -> None:
    call = crawler.fetch if command == "fetch" else crawler.crawl
    with pytest.raises(crawler.ConfigError) as refused:
        call([], **{option: api_value})  # type: ignore[arg-type]
    assert refused.value.option == option
    assert str(refused.value).startswith(f"invalid {option} ")  # the Python name
    message = cli_error(capsys, command, flag, value)
    assert message == refused.value.naming(flag)
    assert message.startswith(f"invalid {flag} ")  # the name as typed


def test_a_regex_is_refused_by_the_crawl_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(crawler.ConfigError) as refused:
        crawler.crawl([], include=["("])
    assert cli_error(capsys, "crawl", "--include", "(") == str(refused.value)


def test_the_cli_config_is_the_api_config(tmp_path: Path) -> None:
    shared: dict[str, Any] = {
        "concurrency": 7,
        "per_host": 3,
        "per_host_rps": 2.5,
        "retries": 0,
        "insecure": True,
        "header": ["X-A:  b "],
        "secret_header": [" x-a "],
        "user_agent": "ua/1",
        "resolve": ["*:127.0.0.1"],
        "save_dir": tmp_path / "bodies",
        "grace": 1.0,
    }
    cli = RunOptions(**shared, no_dedup=True, method="HEAD", output="out.jsonl").config()
    api = run_config({**shared, "no_dedup": True, "method": "HEAD"}, crawl=False)
    assert cli.sink.output == "out.jsonl" and api.sink.output is None
    assert cli.fetch.headers == (("X-A", "b"),) and cli.fetch.secret_headers == ("x-a",)
    assert cli.store.save_dir == str(tmp_path / "bodies")
    assert msgspec.structs.replace(cli, sink=api.sink) == api

    crawl = {"depth": 2, "ignore_robots": True, "sitemap": ["http://a/s"], "max_pages": None}
    cli = RunOptions(**shared).config(crawl=crawl)
    api = run_config(
        {**shared, "depth": 2, "ignore_robots": True, "sitemap": ["http://a/s"]}, crawl=True
    )
    assert cli == api  # a crawl's options not given (None) take the config's defaults
    assert cli.crawl is not None and cli.crawl.sitemaps and not cli.crawl.obey_robots
