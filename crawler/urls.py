"""Parse and validate input URLs; the canonical key used for deduplication.

The canonical key of a URL (see README, "Deduplication") is what two input lines must
share to count as the same URL:

- scheme and host lower-cased, the host in its IDNA (punycode) form;
- the port dropped when it is the scheme's default (``http://h:80/`` == ``http://h/``);
- the fragment dropped (it never reaches the server);
- percent-encoding normalised: unreserved characters decoded (``%7E`` -> ``~``), other
  escapes upper-cased, unsafe characters encoded (yarl's requoting);
- an empty path is ``/``.

Query parameter order and trailing slashes are kept: servers may treat them differently.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from yarl import URL

from crawler.errors import InvalidURL, ProtocolError

_SCHEMES: Final = frozenset(("http", "https"))
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# A host name after IDNA encoding: letters, digits, '-', '_' and dots. IP literals pass too.
_HOST_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?", re.ASCII)
_BAD_CHARS: Final = re.compile(r"[ \t\r\n\x00]")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
# URLs with nothing for yarl to normalise: lower-case host, a port without leading zeros,
# and a path and query of characters that stand for themselves (no percent-escapes, no
# characters to quote, no fragment, no user info). Together with "no dot segment"
# (checked apart), such a URL is built from its parts, as yarl's pre-encoded build, and
# its keys are read off the same parts: the full parse would give exactly the same (a
# differential test holds the two to it), at under half the cost. Groups: scheme,
# netloc, host, port, path, query.
_PLAIN_URL: Final = re.compile(
    r"(https?)://(([a-z0-9_.-]+)(?::([1-9][0-9]{0,4}))?)"
    r"(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(?:\?([A-Za-z0-9._~!$&'()*+,;=:@/?-]*))?",
    re.ASCII,
)
_DEFAULT_PORT_TEXT: Final = {"http": "80", "https": "443"}
# Hosts of plain URLs that passed the host checks: input lists repeat their hosts, so
# most URLs pay one set lookup here. Bounded: cleared when it grows past the limit.
_HOSTS_OK: set[str] = set()
_HOSTS_OK_MAX: Final = 4096
# A URL typed without its scheme: a dotted host name ending in a letters-only label (or
# localhost, or an IPv4 address), maybe a port, then a path or query.
_SCHEMELESS: Final = re.compile(
    r"(?://)?(?P<host>localhost|\d{1,3}(?:\.\d{1,3}){3}|"
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+(?P<tld>[a-z]{2,63}))\.?"
    r"(?::\d{1,5})?(?:[/?#].*)?",
    re.ASCII | re.IGNORECASE,
)
# ...unless that last label is what file names end with: ``urls.txt`` is a file name.
_FILE_SUFFIXES: Final = frozenset(
    ("txt", "csv", "tsv", "json", "jsonl", "ndjson", "gz", "bz2", "xz", "zst", "zip", "tar",
     "lst", "list", "log", "xml", "md", "htm", "html", "warc", "state", "db", "sqlite", "out",
     "dat", "tmp", "py", "sh", "urls")
)  # fmt: skip


def parse_url(text: str) -> URL:
    """Return the parsed URL, or raise InvalidURL if it is not an absolute http(s) URL."""
    plain = _parse_plain(text)
    return plain[0] if plain is not None else _parse_any(text)


def parse_target(text: str) -> tuple[URL, str, str]:
    """``parse_url(text)`` with its ``canonical_key`` and ``host_key``, computed at once.

    This is the reader's per-line work: for a plain URL all three come from one regex
    match, without yarl's parse and without reading the parts back out of the URL."""
    plain = _parse_plain(text)
    if plain is not None:
        return plain
    url = _parse_any(text)
    return url, canonical_key(url), host_key(url)


def _parse_plain(text: str) -> tuple[URL, str, str] | None:
    """URL, canonical key and host key of a plain URL (see ``_PLAIN_URL``); None for
    anything else, including a plain URL that is invalid (the full parse says why)."""
    match = _PLAIN_URL.fullmatch(text)
    if match is None or "/." in text or len(text) > 65_536:
        return None
    scheme, netloc, host, port, path, query = match.groups()
    if host not in _HOSTS_OK:
        if not _host_ok(host):
            return None
        if len(_HOSTS_OK) >= _HOSTS_OK_MAX:
            _HOSTS_OK.clear()
        _HOSTS_OK.add(host)
    default = _DEFAULT_PORT_TEXT[scheme]
    if port is None or port == default:
        host_port, key_netloc = f"{host}:{default}", host
    elif len(port) < 5 or int(port) <= 65_535:
        host_port = key_netloc = netloc
    else:
        return None  # port out of range
    url = URL.build(
        scheme=scheme,
        authority=netloc,
        path=path or "",
        query_string=query or "",
        encoded=True,
    )
    if key_netloc == netloc and path and query != "":
        key = text  # the usual case: the line is its own canonical form
    else:
        key = f"{scheme}://{key_netloc}{path or '/'}"
        if query:
            key = f"{key}?{query}"
    return url, key, host_port


def suggest_url(text: str) -> str | None:
    """``https://example.org`` for ``example.org``: what ``text`` probably meant when it
    looks like a URL written without its scheme (``http://`` for localhost and IPv4
    addresses, as the embedded server and most local servers speak it); else None."""
    if "://" in text:
        return None
    match = _SCHEMELESS.fullmatch(text)
    if match is None:
        return None
    tld = match["tld"]
    if tld is not None and tld.lower() in _FILE_SUFFIXES:
        return None
    rest = text.removeprefix("//")
    local = tld is None  # localhost or an IPv4 address
    return f"{'http' if local else 'https'}://{rest}"


def _parse_any(text: str) -> URL:
    """yarl's full parse, then the checks (any http(s) URL, or InvalidURL), with a hint
    for a URL written without its scheme."""
    try:
        return _parse_checked(text)
    except InvalidURL as exc:  # what the checks said is moot: the scheme is missing
        hint = suggest_url(text)
        if hint is None:
            raise
        raise InvalidURL(f"not an absolute URL: did you mean {hint}?") from exc


def _parse_checked(text: str) -> URL:
    if not text or len(text) > 65_536:
        raise InvalidURL("empty URL" if not text else "URL longer than 65536 characters")
    if _BAD_CHARS.search(text):
        raise InvalidURL("URL contains whitespace or control characters")
    try:
        url = URL(text)
        host = url.raw_host
        port = url.explicit_port
    except Exception as exc:  # noqa: BLE001 - ValueError mostly; yarl 1.25 also raises
        # IndexError ("http://[::1]@"). Whatever the parser trips on, the line is invalid.
        raise InvalidURL(f"cannot parse URL: {exc or type(exc).__name__}") from None
    if url.scheme not in _SCHEMES:
        raise InvalidURL(
            f"unsupported scheme {url.scheme!r}" if url.scheme else "not an absolute URL"
        )
    if not host:
        raise InvalidURL("URL has no host")
    if ":" not in host and not _host_ok(host):
        if not _HOST_RE.fullmatch(host):
            raise InvalidURL(f"invalid host {host!r}")
        # 127.1, 2130706433, 0x7f.0.0.1: legacy forms that resolvers map onto
        # addresses nobody wrote down. Refused, as WHATWG URL parsers and aiohttp do.
        raise InvalidURL(f"{host!r} is not a canonical IPv4 address")
    if port is not None:
        bad = check_port(text)
        if bad is not None:
            raise InvalidURL(bad)
    return url


def check_port(text: str) -> str | None:
    """Why the port written in URL ``text`` (absolute or scheme-relative) is not valid,
    or None. yarl reads the port with ``int()``, which takes ``+80``, ``8_0``, `` 80``
    and non-ASCII digits: a port is ASCII digits only (leading zeros allowed, as WHATWG
    URL parsers do), 1 to 65535. Called only for URLs that have an explicit port."""
    try:
        netloc = urlsplit(text).netloc
    except ValueError as exc:
        return f"cannot parse URL: {exc}"
    hostport = netloc.rpartition("@")[2]
    if hostport.startswith("["):
        port = hostport.partition("]")[2].removeprefix(":")
    else:
        port = hostport.rpartition(":")[2] if ":" in hostport else ""
    if not port:
        return None
    if not (port.isascii() and port.isdigit()):
        return f"invalid port {port!r}"
    if not 0 < int(port) <= 65_535:
        return f"port {int(port)} is not a valid port"
    return None


def _host_ok(host: str) -> bool:
    """A host name (after IDNA encoding) or a canonical dotted IPv4 address."""
    if not _HOST_RE.fullmatch(host):
        return False
    last = host.rstrip(".").rpartition(".")[2]
    return not (last.isdigit() or last.startswith("0x")) or bool(_IPV4_RE.fullmatch(host))


def canonical_key(url: URL) -> str:
    """The dedup key of an already parsed URL (rules in the module docstring)."""
    scheme = url.scheme
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    port = url.explicit_port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    if url.raw_user is not None:
        userinfo = (
            url.raw_user if url.raw_password is None else f"{url.raw_user}:{url.raw_password}"
        )
        netloc = f"{userinfo}@{netloc}"
    path = url.raw_path or "/"
    query = url.raw_query_string
    return f"{scheme}://{netloc}{path}?{query}" if query else f"{scheme}://{netloc}{path}"


def host_key(url: URL) -> str:
    """The key of per-host state (limits, pacing, breaker): host and effective port."""
    return f"{url.raw_host}:{url.port}"


def redirect_target(url: URL, location: str) -> URL:
    """Where a redirect's ``Location`` leads from ``url`` (fragment dropped); a
    ProtocolError for one that cannot be followed."""
    if not location.isascii():
        location = _quote_non_utf8(location)
    try:
        nxt = url.join(URL(location))
        bad_port = check_port(location) if nxt.explicit_port is not None else None
    except Exception as exc:  # ValueError, or IndexError from yarl 1.25
        raise ProtocolError(f"invalid redirect Location {location!r}") from exc
    if bad_port is not None:
        raise ProtocolError(f"redirect to an invalid port: {bad_port} ({location!r})")
    if nxt.scheme not in ("http", "https") or not nxt.raw_host:
        raise ProtocolError(f"redirect to unsupported URL {location!r}")
    return nxt.with_fragment(None) if nxt.raw_fragment else nxt


def _quote_non_utf8(text: str) -> str:
    """A header value with bytes that are not UTF-8 (lone surrogates, from aiohttp's
    ``surrogateescape``) with each such byte percent-encoded: yarl would drop them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text  # an IRI: yarl encodes it (the host as IDNA)
    out = []
    for char in text:
        if "\udc80" <= char <= "\udcff":
            out.append(f"%{ord(char) - 0xDC00:02X}")
        elif "\ud800" <= char <= "\udfff":
            out.append("%EF%BF%BD")  # not from a byte: U+FFFD
        else:
            out.append(char)
    return "".join(out)
