"""``--config FILE`` (or ``CRAWLER_CONFIG``): a TOML file of options by their long names
(``per-host`` or ``per_host``), and ``[hosts."PATTERN"]`` tables (crawler.hostrules).

The file is checked whole when it is read, whichever command reads it: an unknown key, a
value of the wrong type or one the config refuses is one line naming the file, the key and
the reason (a UsageError: exit 2). A command then takes the keys that are its options and
ignores the others (``depth`` in a file read by ``fetch``), so one file serves both, and a
flag given on the command line wins over the file (crawler.cli.signature decides which
were given). Values go through the same ``run_config`` as flags: one check of each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from crawler.cli.options import DEFAULTS
from crawler.config import ConfigError, RunConfig
from crawler.errors import UsageError
from crawler.options import _FIELDS, CrawlOptions, FetchOptions, run_config

_FETCH_KEYS: Final = FetchOptions.__optional_keys__ - {"scheme_proxy"}  # the environment's
CRAWL_OWN: Final = CrawlOptions.__optional_keys__ - FetchOptions.__optional_keys__
# Options of the command line only (not of the Python API): how a run reports, where to.
_CLI_ONLY: Final = {
    "output": str,
    "stats_json": str,
    "state": str,
    "progress": bool,
    "quiet": bool,
    "fail_on_error": bool,
    "no_uvloop": bool,
    "no_env_proxy": bool,
}
KEYS: Final = frozenset(_FETCH_KEYS | CRAWL_OWN | _CLI_ONLY.keys())
_LISTS: Final = ("header", "secret_header", "resolve", "cookie", "include", "exclude", "sitemap")
_SIZES: Final = ("max_bytes", "warc_max_size")


class ConfigFile:
    """A config file read and checked: ``values`` by the options' Python names."""

    def __init__(self, path: str, values: dict[str, Any], spelled: dict[str, str]) -> None:
        self.path = path
        self.values = values
        self._spelled = spelled  # Python name -> the key as the file spells it

    def fail(self, key: str | None, reason: str) -> UsageError:
        """The one line for a problem with ``key`` (None: the file as a whole)."""
        where = f"config file {self.path!r}"
        if key is None:
            return UsageError(f"{where}: {reason}")
        shown = self._spelled.get(key, key)
        reason = reason.removeprefix(f"{key} ") if reason.startswith(f"{key} must") else reason
        return UsageError(f"{where}: key {shown!r}: {reason}")

    def taken(self, names: set[str] | frozenset[str]) -> dict[str, Any]:
        """The file's values of the options ``names`` (a command's), as its fields take
        them (``state`` as a path)."""
        found = {k: v for k, v in self.values.items() if k in names}
        if "state" in found:
            from pathlib import Path

            found["state"] = Path(found["state"])
        return found

    def check(self) -> None:
        """Every value through ``run_config`` (fetch's options, then crawl's own), a
        refused one named by its key."""
        groups = ((_FETCH_KEYS, False), (CRAWL_OWN, True))
        for keys, crawl in groups:
            values = {k: v for k, v in self.values.items() if k in keys}
            try:
                run_config(values, crawl=crawl)
            except ConfigError as exc:
                raise self._blame(exc, values, crawl) from None

    def _blame(self, exc: ConfigError, values: dict[str, Any], crawl: bool) -> UsageError:
        """The key ``exc`` is about: the first that is refused alone, else the option it
        names (two keys that cannot be combined)."""
        for key, value in values.items():
            try:
                run_config({key: value}, crawl=crawl)
            except ConfigError as alone:
                return self.fail(
                    key, alone.naming(self._spelled[key]) if alone.option else str(alone)
                )
        if exc.option in values:
            return self.fail(exc.option, exc.naming(self._spelled[exc.option]))
        return self.fail(None, str(exc))


def load(path: str) -> ConfigFile:
    """Read, parse and check ``path``; a UsageError (one line) if anything is wrong."""
    import difflib  # a run without a config file needs neither (tomllib: ~3 ms)
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path!r}: invalid TOML: {exc}") from None
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    config = ConfigFile(path, values, spelled)
    for raw, value in data.items():
        key = raw.replace("-", "_")
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise config.fail(None, f"unknown key {raw!r}{hint}")
        if key in values:
            raise config.fail(key, f"given twice (as {spelled[key]!r} and {raw!r})")
        spelled[key] = raw
        values[key] = _value(config, key, value)
    config.check()
    return config


def _value(config: ConfigFile, key: str, value: object) -> object:
    """``value`` as the option takes it: a size may be ``"10M"``, a list option one string."""
    if key in _CLI_ONLY:
        kind = _CLI_ONLY[key]
        if not isinstance(value, kind):
            raise config.fail(key, f"must be {kind.__name__}, got {value!r}")
    elif key in _SIZES and isinstance(value, str):
        from typer import BadParameter

        from crawler.cli.values import parse_size

        try:
            return parse_size(value)
        except BadParameter as exc:
            raise config.fail(key, exc.message) from None
    elif key in _LISTS and isinstance(value, str):
        return [value]
    elif key == "hosts":
        from crawler.hostoptions import host_overrides

        try:
            return host_overrides(value)
        except ValueError as exc:  # the message names the pattern and its key
            raise config.fail(None, str(exc)) from None
    return value


def effective(file: ConfigFile | None, command: str) -> dict[str, object]:
    """The options of ``command`` (fetch or crawl) as a run would take them: the
    defaults, overridden by ``file``. Unset ones (no proxy, ...) are None."""
    from crawler.cli.optionlists import CRAWL_OPTIONS, FETCH_OPTIONS

    crawl = command == "crawl"
    names = [*(sorted(CRAWL_OWN) if crawl else ()), *(CRAWL_OPTIONS if crawl else FETCH_OPTIONS)]
    given = file.values if file is not None else {}
    takes = (CrawlOptions if crawl else FetchOptions).__optional_keys__
    config = run_config({k: v for k, v in given.items() if k in takes}, crawl=crawl)
    shown: dict[str, object] = {}
    for name in [*names, "hosts"]:
        # As given where the config keeps no field of its own (a proxy, a body).
        as_given = name in given and name not in _FIELDS
        shown[name] = given[name] if as_given else _from_config(config, name)
    return shown


def _from_config(config: RunConfig, name: str) -> object:
    """An option's value in ``config`` (its default where it has no field)."""
    if name in _FIELDS:
        where, field, _, negated = _FIELDS[name]
        value = getattr(getattr(config, where), field)
        return not value if negated else value
    fetch = config.fetch
    special: dict[str, object] = {
        "grace": config.grace,
        "max_time": config.max_time,
        "retry_on": sorted(config.retry.retry_on),
        "backoff": [config.retry.backoff_base, config.retry.backoff_cap],
        "header": [f"{n}: {v}" for n, v in fetch.headers],
        "secret_header": list(fetch.secret_headers),
        "resolve": [f"{n}:{a}" for n, a in fetch.resolve],
        "cookie": list(fetch.cookie),
        "method": fetch.method,
        "noproxy": list(fetch.noproxy),
        "hosts": fetch.hosts,
    }
    if name in special:
        return special[name]
    if name in ("include", "exclude"):
        return list(getattr(config.crawl, name))
    if name == "sitemap":
        return list(config.crawl.sitemap_urls) if config.crawl else []
    if name in ("save_dir", "warc"):
        return getattr(config.store, name)
    if name in ("cookie_jar", "cacert", "cert", "key", "etags"):
        return getattr(fetch, name)
    value = DEFAULTS.get(name)
    return str(value) if isinstance(value, os.PathLike) else value


def to_plain(options: Mapping[str, object]) -> dict[str, object]:
    """``options`` with the hosts as plain tables (for JSON and TOML)."""
    from crawler.hostrules import HostOverrides

    out = dict(options)
    hosts = out.get("hosts")
    if isinstance(hosts, HostOverrides):
        tables: dict[str, object] = {}
        for pattern, settings in hosts.items():
            table: dict[str, object] = {}
            for key in ("per_host", "per_host_rps", "proxy"):
                if getattr(settings, key) is not None:
                    table[key] = getattr(settings, key)
            if settings.headers:
                table["headers"] = dict(settings.headers)
            tables[pattern] = table
        out["hosts"] = tables
    return out


def to_toml(options: Mapping[str, object]) -> str:
    """``options`` (plain: see to_plain) as a TOML config file; None values are left
    out (TOML has no null), as comments."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in options.items():
        if key == "hosts" and isinstance(value, Mapping):
            for pattern, table in value.items():
                tables += ["", f"[hosts.{_toml_key(pattern)}]"]
                tables += [f"{k} = {_toml(v)}" for k, v in table.items()]
        elif value is None:
            lines.append(f"# {key}: not set")
        else:
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join([*lines, *tables]) + "\n"


def _toml_key(key: str) -> str:
    import orjson

    bare = key.replace("-", "").replace("_", "")
    return key if bare.isascii() and bare.isalnum() else orjson.dumps(key).decode()


def _toml(value: object) -> str:
    import orjson

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple | frozenset | set):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return orjson.dumps(str(value)).decode()
