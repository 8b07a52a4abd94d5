"""Start-up: what ``crawler --version`` and ``--help`` import (issue 16). A run's libraries
(aiohttp and its SSL contexts, asyncio, rich, the engine) load only for a run, pydantic never:
checked by the modules a fresh interpreter holds afterwards, never by timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import crawler

ROOT = Path(__file__).resolve().parent.parent

# Each entry: a top-level package, or a crawler module, a run needs and these paths do not.
RUN_ONLY = (
    "aiohttp",
    "asyncio",
    "rich",
    "pydantic",
    "uvloop",
    "yarl",
    "warcio",
    "selectolax",
    "protego",
    "defusedxml",
    "crawler.engine",
    "crawler.cli.run",
)

# Calls the entry point with argv, as the console script does, then prints what is loaded.
_PROBE = """
import sys
argv, wanted = sys.argv[1:-1], sys.argv[-1].split(",")
sys.argv = ["crawler", *argv]
from crawler.__main__ import main
status = None
try:
    main()
except SystemExit as exc:
    status = exc.code
loaded = sorted(w for w in wanted if any(m == w or m.startswith(w + ".") for m in sys.modules))
print(status, ",".join(loaded), file=sys.stderr)
"""


_PROBED_ERR: list[str] = [""]


def _probe(
    *argv: str, wanted: tuple[str, ...] = RUN_ONLY, env: dict[str, str] | None = None
) -> tuple[str, list[str], str]:
    """Run ``crawler ARGV`` in a fresh interpreter: its exit status, the ``wanted``
    modules it loaded, its standard output (``_PROBED_ERR``: its standard error)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv, ",".join(wanted)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    _PROBED_ERR[:] = [proc.stderr]
    status, _, loaded = proc.stderr.strip().splitlines()[-1].partition(" ")
    return status, [m for m in loaded.split(",") if m], proc.stdout


def test_version_loads_nothing_but_the_package() -> None:
    status, loaded, out = _probe("--version", wanted=(*RUN_ONLY, "typer", "crawler.cli"))
    assert (status, loaded, out) == ("0", [], f"crawler {crawler.__version__}\n")


def test_help_loads_no_run() -> None:
    """``--help`` needs typer and the option declarations, none of a run's libraries."""
    for argv in (["--help"], ["fetch", "--help"]):
        status, loaded, out = _probe(*argv)
        assert (status, loaded) == ("0", []), argv
        assert "Usage: crawler" in out


def test_fetch_loads_no_pydantic_nor_toml() -> None:
    """Options are coerced by typer's click types, not through pydantic (typer 0.29 imports
    pydantic and builds a TypeAdapter per option: ~0.2 s of a one-URL fetch); the TOML
    parser loads only for a config file."""
    url = "http://127.0.0.1:9/"
    argv = ("fetch", url, "-q", "--retries", "0", "-c", "2", "--timeout", "5", "--max-bytes", "1k")
    status, loaded, out = _probe(*argv, wanted=("pydantic", "tomllib"))
    assert (status, loaded) == ("0", []) and '"error"' in out


def test_a_command_builds_only_its_own_options() -> None:
    """``crawler fetch ...`` has typer build fetch's options, not every command's;
    anything else (``--help``, a mistyped name) gets the whole group."""
    from typer.core import TyperGroup

    from crawler.cli.app import _group

    every = {"fetch", "crawl", "config", "serve", "bench", "enqueue", "worker", "collect"}
    every |= {"status"}
    for args, commands in (
        (["fetch", "https://example.org/", "-q"], {"fetch"}),
        (["crawl", "--help"], {"crawl"}),
        (["--help"], every),
        (["fetc", "https://example.org/"], every),
        (["--version", "fetch"], every),
    ):
        group = _group(args)
        assert isinstance(group, TyperGroup) and set(group.commands) == commands, args


def test_a_fetch_loads_rich_for_a_terminal_only() -> None:
    """``fetch -q`` shows no progress and no summary: rich (the console they write to) is
    never imported. Without ``-q``, to a stderr that is not a terminal, the summary is
    plain text, rich not loaded either; to one rich is told is a terminal, rich lays it
    out. (Port 9 on loopback refuses: the run is a whole one, its one record an error.)"""
    url = "http://127.0.0.1:9/"
    status, loaded, out = _probe("fetch", url, "-q", "--retries", "0", wanted=("rich",))
    assert (status, loaded) == ("0", []) and '"error"' in out
    assert "crawler: done" not in _PROBED_ERR[0]
    plain = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    status, loaded, _ = _probe("fetch", url, "--retries", "0", wanted=("rich",), env=plain)
    assert (status, loaded) == ("0", [])
    rows = [line.split() for line in _PROBED_ERR[0].splitlines()]
    assert ["crawler:", "done"] in rows and ["errors", "connect:", "1"] in rows, rows
    assert "\x1b" not in _PROBED_ERR[0]
    env = {**plain, "TTY_COMPATIBLE": "1"}
    status, loaded, _ = _probe("fetch", url, "--retries", "0", wanted=("rich",), env=env)
    assert (status, loaded) == ("0", ["rich"]) and "crawler: done" in _PROBED_ERR[0]


_GC_PROBE = """
import gc, sys
sys.argv = ["crawler", *sys.argv[1:]]
from crawler.__main__ import main
try:
    main()
except SystemExit:
    pass
full_passes = gc.get_stats()[2]["collections"]
print(gc.isenabled(), gc.get_freeze_count() > 10_000, full_passes, file=sys.stderr)
"""


def test_start_up_is_not_garbage_collected() -> None:
    """The collector is off while a run starts (imports, options: all of it lives for the
    run), then what start-up made is frozen and the collector is back on: no full pass."""
    proc = subprocess.run(
        [sys.executable, "-c", _GC_PROBE, "fetch", "http://127.0.0.1:9/", "-q", "--retries", "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=30,
    )
    assert proc.stderr.split() == ["True", "True", "0"]


def test_a_command_imports_only_its_own_module() -> None:
    """``crawler fetch`` imports fetch's module, not the other commands' (their options
    and imports); COMMAND_MODULES names each command's module truly."""
    from crawler.cli.app import COMMAND_MODULES, _group, app

    others = tuple(f"crawler.cli.{m}" for m in set(COMMAND_MODULES.values()) - {"commands"})
    url = "http://127.0.0.1:9/"
    status, loaded, _ = _probe("fetch", url, "-q", "--retries", "0", wanted=others)
    assert (status, loaded) == ("0", [])
    _group(["--help"])  # every command's module
    names = {info.callback.__name__: info for info in app.registered_commands if info.callback}
    assert len(names) == len(COMMAND_MODULES)
    for name, module in COMMAND_MODULES.items():
        info = names.get(name) or next(i for i in names.values() if i.name == name)
        assert info.callback is not None
        assert info.callback.__module__ == f"crawler.cli.{module}", name


def test_a_plain_fetch_loads_no_module_of_an_option_it_lacks() -> None:
    """Records with headers or bodies (crawler.detail), proxies (crawler.proxies,
    crawler.proxied), per-host rules (crawler.hostfetch), SQLite (--state, --etags, a
    crawl's spilled links) and the config file's reader load only for a run that has
    them: a plain fetch loads none; one with --include-headers loads crawler.detail."""
    optional = ("crawler.detail", "crawler.proxies", "crawler.proxied", "crawler.hostfetch")
    optional += ("sqlite3", "crawler.cli.configfile")
    env = {k: v for k, v in os.environ.items() if k != "CRAWLER_CONFIG"}
    url = "http://127.0.0.1:9/"
    status, loaded, out = _probe("fetch", url, "-q", "--retries", "0", wanted=optional, env=env)
    assert (status, loaded) == ("0", []) and '"error"' in out
    argv = ("fetch", url, "-q", "--retries", "0", "--include-headers")
    status, loaded, _ = _probe(*argv, wanted=optional, env=env)
    assert (status, loaded) == ("0", ["crawler.detail"])
