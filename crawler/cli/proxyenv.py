"""The proxies the environment sets, read as curl reads them (the command line's only:
nothing below the CLI reads the environment).

curl takes ``http_proxy`` in lower case only (an upper-case ``HTTP_PROXY`` can be set by a
web server's CGI from a request's ``Proxy:`` header, "httpoxy"); ``https_proxy``,
``all_proxy`` and ``no_proxy`` in either case, the lower-case one first. An empty value is
unset. ``--proxy`` and ``--proxy-file`` replace the proxies (but not ``no_proxy``, which
applies to them too, as in curl); ``--noproxy`` replaces ``no_proxy``.
"""

from __future__ import annotations

from collections.abc import Mapping


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def env_proxies(env: Mapping[str, str]) -> dict[str, str]:
    """{"http"|"https"|"all": proxy URL} as the environment gives them."""
    found = {
        "http": _first(env, "http_proxy"),
        "https": _first(env, "https_proxy", "HTTPS_PROXY"),
        "all": _first(env, "all_proxy", "ALL_PROXY"),
    }
    return {scheme: url for scheme, url in found.items() if url is not None}


def env_noproxy(env: Mapping[str, str]) -> str | None:
    return _first(env, "no_proxy", "NO_PROXY")
