"""``--help`` that reads like a man page: one metavar per option, defaults in the units a
user types (``10M``), repeatable options marked, and Examples and Exit status sections.

typer's own records leak its type placeholders (``<int range>``, ``<list[str]>``) and raw
byte counts; these classes write the records from the options' declarations instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from typer import _click
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

_UNITS = ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "k"))

_USAGE = ("2", "usage error: bad option or value, unreadable input; one line on stderr")
_INTERRUPTED = ("130", "interrupted (SIGINT, SIGTERM, SIGHUP, SIGQUIT)")
EXIT_STATUS: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        (
            "0",
            "the run completed, whatever the HTTP outcomes (also when the reader of stdout "
            "left); bare `crawler` prints this help and exits 0 too",
        ),
        ("1", "completed, --fail-on-error was given and some record has ok: false"),
        _USAGE,
        _INTERRUPTED,
    ),
    "fetch": (
        (
            "0",
            "the run completed, whatever the HTTP outcomes (also when the reader of stdout left)",
        ),
        ("1", "completed, --fail-on-error was given and some record has ok: false"),
        _USAGE,
        _INTERRUPTED,
    ),
    "serve": (("0", "stopped by SIGINT or SIGTERM"), ("2", "usage error, or cannot listen")),
    "bench": (("0", "measured"), _USAGE, _INTERRUPTED),
}
EXIT_STATUS["crawl"] = EXIT_STATUS["fetch"]

EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "": (
        ("Fetch a list; only records on stdout, the summary on stderr",
         "crawler fetch urls.txt > results.jsonl"),
        ("Fetch URLs given as arguments", "crawler fetch https://example.org/ https://example.com/"),
        ("Crawl a site 3 links deep into a WARC",
         "crawler crawl https://example.org/ --depth 3 --warc site.warc.gz -o pages.jsonl"),
        ("Try it with no network", "crawler bench -n 5000"),
        ("Shell completion (bash, zsh, fish)", "crawler --install-completion"),
    ),
    "fetch": (
        ("Fetch a list; only records on stdout, the summary on stderr",
         "crawler fetch urls.txt > results.jsonl"),
        ("URLs as arguments, files and stdin mixed",
         "crawler fetch https://example.org/ more.txt -"),
        ("Politely: 2 in flight and 1 request/s per host",
         "some-producer | crawler fetch --per-host 2 --per-host-rps 1 -o out.jsonl"),
        ("Failed URLs as a table",
         "crawler fetch urls.txt | jq -r 'select(.ok|not) | [.url, .error.kind] | @tsv'"),
        ("Resumable: run the same command again after a crash",
         "crawler fetch big.txt -o out.jsonl --state big.state"),
        ("Records to a file, the summary as JSON on stdout",
         "crawler fetch urls.txt -o out.jsonl --stats-json - | jq .urls_per_s"),
    ),
    "crawl": (
        ("Crawl a site (same host, robots.txt obeyed), 3 links deep",
         "crawler crawl https://docs.example.org/ --depth 3 -o pages.jsonl"),
        ("The embedded server's synthetic site",
         "crawler crawl 'http://127.0.0.1:8080/site/0?size=1111' | jq -c '{url, depth}'"),
        ("A crawl that survives being killed: run it again to resume",
         "crawler crawl https://example.org/ --max-pages 100000 --state crawl.state -o p.jsonl"),
    ),
    "serve": (
        ("The embedded server, its routes at /, requests logged on stderr",
         "crawler serve --port 8080 --access-log"),
        ("Slow and flaky: 50 ms latency, 10% 503s",
         "crawler serve --latency-ms 50 --error-rate 0.1"),
    ),
    "bench": (
        ("Throughput on this machine, no network", "crawler bench -n 5000"),
        ("Against bare aiohttp, 3 rounds, as JSON", "crawler bench --compare --rounds 3 --json"),
    ),
}  # fmt: skip


def human_size(n: int) -> str:
    """``10485760`` -> ``10M``: the largest binary unit that divides it."""
    for unit, suffix in _UNITS:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _default(param: _click.Parameter) -> str | None:
    show = getattr(param, "show_default", True)
    if isinstance(show, str):
        return str(show)
    if not show or param.default is None:
        return None
    value: Any = param.default
    if isinstance(param, TyperOption) and param.is_flag:
        if not param.secondary_opts:
            return None  # a plain flag: off unless given
        return (param.opts if value else param.secondary_opts)[0]
    if isinstance(value, (list, tuple)):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and param.metavar == "SIZE":
        return human_size(value)
    return str(value)


def _record(param: _click.Parameter) -> tuple[str, str]:
    help_text = (getattr(param, "help", None) or "").strip()
    if isinstance(param, TyperOption):
        names = ", ".join(sorted(param.opts, key=lambda o: o.startswith("--")))
        if param.secondary_opts:
            names += " / " + ", ".join(param.secondary_opts)
        if not param.is_flag and not param.count:
            names += f" {param.metavar or 'VALUE'}"
        if param.multiple and "repeatable" not in help_text.lower():
            help_text = f"{help_text} Repeatable.".strip()
    else:
        names = param.metavar or (param.name or "").upper()
    default = _default(param)
    if default is not None:
        help_text = f"{help_text}  [default: {default}]".strip()
    return names, help_text


def _write_options(
    params: Sequence[_click.Parameter], ctx: _click.Context, formatter: _click.HelpFormatter
) -> None:
    args: list[tuple[str, str]] = []
    opts: list[tuple[str, str]] = []
    for param in params:
        if getattr(param, "hidden", False) or not param.get_help_record(ctx):
            continue
        (args if isinstance(param, TyperArgument) else opts).append(_record(param))
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


def _write_epilog(name: str, formatter: _click.HelpFormatter) -> None:
    examples = EXAMPLES.get(name, ())
    if examples:
        with formatter.section("Examples"):
            for i, (what, command) in enumerate(examples):
                if i:
                    formatter.write("\n")
                formatter.write(f"{'':>{formatter.current_indent}}# {what}\n")
                formatter.write(f"{'':>{formatter.current_indent}}{command}\n")
    with formatter.section("Exit status"):
        formatter.write_dl(list(EXIT_STATUS.get(name, EXIT_STATUS[""])))


class ManCommand(TyperCommand):
    def collect_usage_pieces(self, ctx: _click.Context) -> list[str]:
        """The usage line, with a variadic argument's ``...`` (``[URL|FILE]...``) as click
        writes it: typer 0.28 leaves the dots off an argument that has a metavar."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            dots = "..." if isinstance(param, TyperArgument) and param.nargs != 1 else ""
            pieces.extend(p if p.endswith("...") else p + dots for p in param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _write_options(self.get_params(ctx), ctx, formatter)

    def format_epilog(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _write_epilog(self.name or "", formatter)


class ManGroup(TyperGroup):
    def format_options(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _write_options(self.get_params(ctx), ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_epilog(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        _write_epilog("", formatter)
