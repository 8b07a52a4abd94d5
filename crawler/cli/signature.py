"""``run_options``: gives a command of the CLI the run options it takes, in its signature
(typer reads a command's options from there), and hands it one ``RunOptions``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, Final

import typer

from crawler.cli.options import DEFAULTS, OPTIONS, RunOptions, config_path

Command = Callable[..., None]

ConfigPath = Annotated[
    str | None,
    typer.Option(
        "--config",
        metavar="FILE",
        show_default="$CRAWLER_CONFIG",
        help='Options from this TOML file (long names; [hosts."NAME"] tables); flags '
        "given here win over it.",
    ),
]
# Options of crawl's own that a config file may set (crawler.cli.configfile.CRAWL_OWN).
_CRAWL_OWN = frozenset(
    ("scope", "include", "exclude", "depth", "max_pages", "assets", "ignore_robots", "sitemaps")
) | {"sitemap"}


def run_options(*names: str, **defaults: Any) -> Callable[[Command], Command]:
    """Give a command the run options ``names``, in that order, after its own parameters,
    in place of its ``opts: RunOptions`` parameter, which receives them all.

    A name among ``names`` that is one of the command's own parameters places that one
    there. ``defaults`` are the command's own defaults, for options it shows as well as
    for ones it does not take (``bench`` waits no grace)."""

    def decorate(command: Command) -> Command:
        own = {
            p.name: p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "opts"
        }
        unknown = [n for n in names if n not in OPTIONS and n not in own]
        unknown += [n for n in defaults if n not in OPTIONS]
        if unknown:
            raise TypeError(f"{command.__name__}: no such option: {', '.join(unknown)}")
        shared = [n for n in names if n in OPTIONS]
        params = [p for n, p in own.items() if n not in names]
        for name in names:
            if name in own:
                params.append(own[name])
                continue
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=defaults.get(name, DEFAULTS[name]),
                    annotation=OPTIONS[name],
                )
            )
        hidden = {n: v for n, v in defaults.items() if n not in names}
        params.append(
            inspect.Parameter(
                "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigPath
            )
        )
        crawl_own = _CRAWL_OWN & own.keys()

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            path = kwargs.pop("config")
            fields = {n: kwargs.pop(n) for n in shared}
            _from_config_file(path, fields, kwargs, crawl_own)
            opts = RunOptions(**hidden, **fields)
            command(**kwargs, opts=opts)

        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# Options of which a run takes one at most: a flag typed overrides the file's other one.
_EITHER: Final = (frozenset(("proxy", "proxy_file")), frozenset(("data", "json")))


def _from_config_file(
    path: str | None, fields: dict[str, Any], own: dict[str, Any], crawl_own: frozenset[str]
) -> None:
    """The config file's values (``--config``, else $CRAWLER_CONFIG) in place of the
    defaults of the options the command takes (its RunOptions ``fields``, and ``own``
    parameters among ``crawl_own``), and its hosts: never of a flag given on the command
    line (typer's context says which were)."""
    path = config_path(path)
    if path is None:
        return
    from crawler.cli.configfile import load

    file = load(path)
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context

    ctx = get_current_context()
    takes = {*fields, *crawl_own, "hosts"}
    typed = {n for n in takes if ctx.get_parameter_source(n) is ParameterSource.COMMANDLINE}
    for group in _EITHER:  # a flag of one of them typed: the file's others give way too
        if typed & group:
            typed |= group
    for name, value in file.taken(takes - typed).items():
        if name in crawl_own:
            own[name] = value
        else:
            fields[name] = value
