"""``crawler config --show``: the options a run would take, from the defaults and the
config file (``--config``, else ``CRAWLER_CONFIG``), as TOML (a config file itself) or
JSON. Flags and the environment's proxies are not part of it."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer

from crawler.cli.app import app
from crawler.cli.signature import ConfigPath
from crawler.errors import UsageError
from crawler.helptext import ManCommand


@app.command("config", cls=ManCommand, short_help="Show the configuration a run would take.")
def config_command(
    show: Annotated[
        bool, typer.Option("--show", help="Print the merged configuration on stdout.")
    ] = False,
    config: ConfigPath = None,
    command: Annotated[
        str, typer.Option("--command", metavar="fetch|crawl", help="Whose options to show.")
    ] = "fetch",
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of TOML.")] = False,
) -> None:
    """Print the configuration a fetch or crawl would run with: the defaults, overridden
    by the config file (--config FILE, else $CRAWLER_CONFIG), [hosts] tables included."""
    from crawler.cli.configfile import effective, load, to_plain, to_toml
    from crawler.cli.options import config_path

    if not show:
        raise UsageError("config: nothing to do (use --show)")
    if command not in ("fetch", "crawl"):
        raise UsageError(f"invalid --command {command!r}: expected fetch or crawl")
    path = config_path(config)
    options = to_plain(effective(load(path) if path is not None else None, command))
    if json_out:
        text = orjson.dumps(options, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        text = to_toml(options)
    sys.stdout.write(text)
    sys.stdout.flush()
