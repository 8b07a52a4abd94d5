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

from yarl import URL

from crawler.errors import InvalidURL

_SCHEMES: Final = frozenset(("http", "https"))
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# A host name after IDNA encoding: letters, digits, '-', '_' and dots. IP literals pass too.
_HOST_RE: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?", re.ASCII)
_BAD_CHARS: Final = re.compile(r"[ \t\r\n\x00]")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
# URLs with nothing for yarl to normalise: lower-case host, a port without leading zeros,
# and a path and query of characters that stand for themselves (no percent-escapes, no
# characters to quote, no fragment). Together with "no dot segment" (checked apart),
# yarl's pre-encoded parse gives exactly the URL its full parse would, ~30% faster.
_PLAIN_URL: Final = re.compile(
    r"https?://[a-z0-9_.-]+(?::[1-9][0-9]{0,4})?"
    r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(?:\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?",
    re.ASCII,
)


def parse_url(text: str) -> URL:
    """Return the parsed URL, or raise InvalidURL if it is not an absolute http(s) URL."""
    if not text or len(text) > 65_536:
        raise InvalidURL("empty URL" if not text else "URL longer than 65536 characters")
    plain = _PLAIN_URL.fullmatch(text) is not None and "/." not in text
    if not plain and _BAD_CHARS.search(text):
        raise InvalidURL("URL contains whitespace or control characters")
    try:
        url = URL(text, encoded=plain)
        host = url.raw_host
        port = url.port
    except Exception as exc:  # noqa: BLE001 - ValueError mostly; yarl 1.25 also raises
        # IndexError ("http://[::1]@"). Whatever the parser trips on, the line is invalid.
        raise InvalidURL(f"cannot parse URL: {exc or type(exc).__name__}") from None
    if url.scheme not in _SCHEMES:
        raise InvalidURL(
            f"unsupported scheme {url.scheme!r}" if url.scheme else "not an absolute URL"
        )
    if not host:
        raise InvalidURL("URL has no host")
    if ":" not in host:
        if not _HOST_RE.fullmatch(host):
            raise InvalidURL(f"invalid host {host!r}")
        last = host.rstrip(".").rpartition(".")[2]
        if (last.isdigit() or last.startswith("0x")) and not _IPV4_RE.fullmatch(host):
            # 127.1, 2130706433, 0x7f.0.0.1: legacy forms that resolvers map onto
            # addresses nobody wrote down. Refused, as WHATWG URL parsers and aiohttp do.
            raise InvalidURL(f"{host!r} is not a canonical IPv4 address")
    if port == 0:
        raise InvalidURL("port 0 is not a valid port")
    return url


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
