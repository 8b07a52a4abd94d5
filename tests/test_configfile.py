"""The config file (crawler.cli.configfile) and per-host overrides (crawler.hostrules:
limits in crawler.limiter, headers and proxies in crawler.hostfetch)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler.cli.app import _main
from crawler.config import LimitConfig, SinkConfig
from crawler.engine import Engine
from crawler.hostoptions import host_overrides
from crawler.inputs import LineSource
from crawler.limiter import HostTable
from crawler.options import run_config
from tests.conftest import Server, read_records
from tests.test_cli import CRAWLER, ENV
from tests.test_proxies import pproxy  # noqa: F401 - the fixture

_SHORT = {"timeout": 5.0, "backoff": "0.01,0.01"}


async def _run(tmp_path: Path, lines: list[str], **options: Any) -> list[dict[str, Any]]:
    """A run in-process, its config built as the Python API builds it (run_config)."""
    (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    config = run_config(
        {**_SHORT, **options}, crawl=False, sink=SinkConfig(output=str(out), flush_interval=0.05)
    )
    await Engine(
        config, LineSource(str(tmp_path / "urls.txt")), install_signal_handlers=False
    ).run()
    return read_records(out)


def _seen(server: Server, host: str) -> list[dict[str, str]]:
    """The headers of the requests the test server got for ``host``."""
    return [h for h in server.rec.headers if h["Host"].split(":")[0] == host]


def test_host_patterns_match_the_most_specific() -> None:
    hosts = host_overrides(
        {
            "Example.COM.": {"per_host": 1},
            "example.com:8443": {"per_host": 2},
            "*.example.com": {"per_host": 3},
            "*.a.example.com": {"per_host": 4},
        }
    )
    found = {
        (h, p): getattr(hosts.find(h, p), "per_host", None)
        for h, p in [
            ("example.com", 80),
            ("example.com", 8443),
            ("www.example.com", 80),
            ("x.a.example.com", 80),
            ("a.example.com", 80),
            ("example.org", 80),
            ("notexample.com", 80),
        ]
    }
    assert list(found.values()) == [1, 2, 3, 4, 3, None, None]
    assert hosts.find_key("example.com:8443") is hosts.find("example.com", 8443)


def test_host_limits_are_set_when_the_host_state_is_made() -> None:
    limits = LimitConfig(
        per_host=8,
        per_host_rps=10.0,
        hosts=host_overrides({"slow.test": {"per_host": 2, "per_host_rps": 0.5}}),
    )
    table = HostTable(limits, run_config({}, crawl=False).breaker, clock=lambda: 0.0)
    slow, other = table.get("slow.test:80"), table.get("other.test:80")
    assert slow.limit == 2 and other.limit == 8
    assert slow.pacer is not None and slow.pacer.interval == 2.0
    assert other.pacer is not None and other.pacer.interval == 0.1


async def test_per_host_bounds_only_that_host(tmp_path: Path, server: Server) -> None:
    urls = [
        server.url(f"/slow/{i}?s=0.1", h) for h in ("127.0.0.2", "127.0.0.3") for i in range(10)
    ]
    records = await _run(
        tmp_path, urls, concurrency=20, per_host=10, hosts={"127.0.0.2": {"per-host": 2}}
    )
    assert len(records) == 20 and all(r["ok"] for r in records)
    peak = {host.split(":")[0]: n for host, n in server.rec.peak.items()}
    assert peak["127.0.0.2"] <= 2 < peak["127.0.0.3"]


async def test_host_headers_go_to_that_host_only(tmp_path: Path, server: Server) -> None:
    hop = server.url("/ok/after", "127.0.0.3")
    urls = [server.url(f"/redirect?to={hop}", "127.0.0.2"), server.url("/ok/own", "127.0.0.3")]
    hosts = {"127.0.0.2": {"headers": {"X-Token": "t0ken", "User-Agent": "per-host"}}}
    records = await _run(tmp_path, urls, hosts=hosts, header=["X-All: 1"])
    assert all(r["ok"] for r in records)
    (first,) = _seen(server, "127.0.0.2")
    assert first["X-Token"] == "t0ken" and first["User-Agent"] == "per-host"
    others = _seen(server, "127.0.0.3")
    assert len(others) == 2  # the redirect's target and a URL of its own
    assert all("X-Token" not in h and h["User-Agent"] != "per-host" for h in others)
    assert all(h["X-All"] == "1" for h in server.rec.headers)


async def test_host_proxy(tmp_path: Path, server: Server, pproxy: dict[str, int]) -> None:  # noqa: F811
    proxy = f"http://127.0.0.1:{pproxy['plain']}"
    urls = [server.url("/ok/a", "127.0.0.2"), server.url("/ok/b", "127.0.0.3")]
    records = await _run(tmp_path, urls, hosts={"127.0.0.2": {"proxy": proxy}})
    by_host = {r["url"].split("/")[2].split(":")[0]: r for r in records}
    assert by_host["127.0.0.2"]["ok"] and by_host["127.0.0.2"]["proxy"] == proxy
    assert by_host["127.0.0.3"]["ok"] and by_host["127.0.0.3"]["proxy"] is None


def _cli_error(capsys: pytest.CaptureFixture[str], path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        _main(["fetch", "--config", str(path), "http://127.0.0.1:9/"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("concurency = 4\n", "unknown key 'concurency' (did you mean 'concurrency'?)"),
        ("per-host = -1\n", "key 'per-host': must be a finite number >= 0, got -1"),
        ("retries = 'two'\n", "key 'retries': must be int, got 'two'"),
        ('[hosts."a.test"]\nper_host = 1\nproxi = "x"\n', 'hosts."a.test".proxi'),
        ("rps = 1\nrps 2\n", "invalid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    path = tmp_path / "c.toml"
    err = _cli_error(capsys, path, text)
    assert f"config file {str(path)!r}" in err and says in err


def test_config_show_merges_defaults_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'per-host = 3\ndepth = 2\nmax_bytes = "1M"\n'
        '[hosts."*.example.com"]\nper_host_rps = 0.5\nheaders = { X-Token = "t" }\n'
    )
    assert _main(["config", "--show", "--config", str(path), "--command", "crawl"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["per_host"] == 3 and shown["depth"] == 2 and shown["max_bytes"] == 1 << 20
    assert shown["concurrency"] == 64 and shown["cookies"] is True  # defaults: a crawl's
    assert shown["hosts"] == {"*.example.com": {"per_host_rps": 0.5, "headers": {"X-Token": "t"}}}
    assert _main(["config", "--show", "--config", str(path), "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert "depth" not in shown and shown["per_host"] == 3 and shown["cookies"] is False


async def test_cli_file_applies_flags_win_env_names_it(tmp_path: Path, server: Server) -> None:
    import asyncio
    import subprocess

    path = tmp_path / "c.toml"
    path.write_text(
        'user-agent = "from-file"\nheader = ["X-File: 1"]\ninclude_headers = true\n'
        "depth = 3  # a crawl's: fetch ignores it\n"
    )
    proc = await asyncio.create_subprocess_exec(
        *CRAWLER,
        "fetch",
        "--user-agent",
        "from-flag",
        server.url("/ok/cli"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**ENV, "CRAWLER_CONFIG": os.fspath(path)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    (rec,) = [orjson.loads(line) for line in out.splitlines()]
    assert rec["ok"] and rec["headers"] is not None  # include_headers from the file
    (seen,) = server.rec.headers
    assert seen["User-Agent"] == "from-flag" and seen["X-File"] == "1"


def test_a_flag_overrides_the_files_alternative_to_it(tmp_path: Path) -> None:
    """The file's `proxy` gives way to a typed --proxy-file (a run takes one of them), as
    any file value gives way to its own flag."""
    import subprocess

    from tests.faultserver import closed_port

    port = closed_port()
    path, pool = tmp_path / "c.toml", tmp_path / "proxies.txt"
    path.write_text('proxy = "http://127.0.0.1:9/"\n')
    pool.write_text(f"http://127.0.0.1:{port}\n")
    done = subprocess.run(
        [*CRAWLER, "fetch", "http://127.0.0.2:1/x", "--config", str(path),
         "--proxy-file", str(pool), "--retries", "0", "-q"],
        capture_output=True, env=ENV, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (rec,) = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert rec["error"]["kind"] == "proxy" and rec["proxy"] == f"http://127.0.0.1:{port}"
