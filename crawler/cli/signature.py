"""``run_options``: gives a command of the CLI the run options it takes, in its signature
(typer reads a command's options from there), and hands it one ``RunOptions``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from crawler.cli.options import DEFAULTS, OPTIONS, RunOptions

Command = Callable[..., None]


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

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            opts = RunOptions(**hidden, **{n: kwargs.pop(n) for n in shared})
            command(**kwargs, opts=opts)

        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
