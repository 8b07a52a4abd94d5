"""URL validation and the canonical dedup key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from crawler import urls
from crawler.errors import InvalidURL
from crawler.urls import canonical_key, host_key, parse_target, parse_url


def key(text: str) -> str:
    return canonical_key(parse_url(text))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTP://Example.COM/a", "http://example.com/a"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/", "https://example.com/"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com/a#frag", "http://example.com/a"),
        ("http://example.com/%7euser", "http://example.com/~user"),
        ("http://example.com/a%2fb", "http://example.com/a%2Fb"),
        ("http://bücher.de/", "http://xn--bcher-kva.de/"),
    ],
)
def test_equivalent_urls_share_a_key(a: str, b: str) -> None:
    assert key(a) == key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://example.com/a", "https://example.com/a"),
        ("http://example.com:8080/a", "http://example.com/a"),
        ("http://example.com/a?x=1&y=2", "http://example.com/a?y=2&x=1"),
        ("http://example.com/a/", "http://example.com/a"),
        ("http://example.com/A", "http://example.com/a"),
        ("http://u:p@example.com/", "http://example.com/"),
    ],
)
def test_different_urls_keep_different_keys(a: str, b: str) -> None:
    assert key(a) != key(b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example.com",
        "/relative/path",
        "ftp://example.com/",
        "mailto:a@b.c",
        "http://",
        "http:///path",
        "http://exa mple.com/",
        "http://host:99999/",
        "http://host:0/",
        "http://ho\x00st/",
        "javascript:alert(1)",
        "http://[::1/",
        "http://[::1]@",  # yarl 1.25 raises IndexError on these, not ValueError
        "https://-h]-[@",
        "http://1.2.3/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://127.0.0.01/",
        "http://256.0.0.1/",
    ],
)
def test_invalid_urls_raise_invalid_url(text: str) -> None:
    with pytest.raises(InvalidURL):
        parse_url(text)


def test_valid_forms() -> None:
    assert parse_url("http://[::1]:8080/x").port == 8080
    assert key("http://[::1]:80/x") == "http://[::1]/x"
    assert parse_url("https://user:pw@host.example/").raw_host == "host.example"
    assert host_key(parse_url("http://h/")) == "h:80"
    assert host_key(parse_url("https://h/")) == "h:443"


@given(st.text(max_size=300))
def test_any_text_is_either_valid_or_invalid_url(text: str) -> None:
    try:
        url = parse_url(text)
    except InvalidURL:
        return
    assert url.scheme in ("http", "https")
    assert canonical_key(url) == canonical_key(parse_url(canonical_key(url)))


@given(
    st.sampled_from(["http", "HTTP", "https"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|org|test)", fullmatch=True),
    st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True), max_size=4),
)
def test_key_is_stable_under_case_and_default_port(
    scheme: str, host: str, parts: list[str]
) -> None:
    path = "/" + "/".join(parts)
    port = ":443" if scheme.lower() == "https" else ":80"
    assert key(f"{scheme}://{host.upper()}{port}{path}") == key(f"{scheme.lower()}://{host}{path}")


# -- the pre-encoded fast path ------------------------------------------------------------
def _full_parse(text: str) -> URL | InvalidURL:
    """parse_url's answer with the fast path switched off: yarl's full parse always."""
    try:
        with_slow = urls._PLAIN_URL
        urls._PLAIN_URL = re.compile(r"(?!)")  # matches nothing
        try:
            return parse_url(text)
        finally:
            urls._PLAIN_URL = with_slow
    except InvalidURL as exc:
        return exc


_PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "9",
        "-",
        ".",
        "_",
        "~",
        "/",
        "?",
        "=",
        "&",
        "+",
        ";",
        ":",
        "@",
        "!",
        "$",
        "'",
        "(",
        ")",
        "*",
        ",",
        "%",
        "%2e",
        "%7E",
        "..",
        "/./",
        "/../",
        "#",
        " ",
        "é",
        "[",
        "]",
    ]
)
_HOSTS = st.sampled_from(
    [
        "h",
        "example.com",
        "Example.COM",
        "127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "h.",
        "h..x",
        "-h",
        "a_b",
        "xn--bcher-kva.de",
        "bücher.de",
        "[::1]",
        "",
    ]
)
_PORTS = st.sampled_from(
    ["", ":80", ":443", ":8080", ":080", ":0", ":65535", ":65536", ":99999", ":1"]
)


@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ftp"]),
    host=_HOSTS,
    port=_PORTS,
    rest=st.lists(_PIECES, max_size=12).map("".join),
)
def test_fast_path_parses_exactly_as_yarls_full_parse(
    scheme: str, host: str, port: str, rest: str
) -> None:
    text = f"{scheme}://{host}{port}{rest}"
    slow = _full_parse(text)
    try:
        fast: URL | InvalidURL = parse_url(text)
    except InvalidURL as exc:
        fast = exc
    if isinstance(slow, InvalidURL):
        assert isinstance(fast, InvalidURL), (text, fast)
        return
    assert isinstance(fast, URL), (text, fast)
    assert fast == slow and str(fast) == str(slow)
    for attr in (
        "raw_host",
        "port",
        "explicit_port",
        "raw_path",
        "raw_query_string",
        "raw_fragment",
        "path_qs",
        "raw_path_qs",
    ):
        assert getattr(fast, attr) == getattr(slow, attr), (text, attr)
    assert canonical_key(fast) == canonical_key(slow)
    assert host_key(fast) == host_key(slow)
    # The reader's variant reads both keys off the regex match, not off the URL.
    assert parse_target(text) == (slow, canonical_key(slow), host_key(slow))


def test_fast_path_is_taken_for_plain_urls() -> None:
    for text in (
        "http://127.0.0.1:8080/page/1?a=b&c=d",
        "https://example.com",
        "http://h:80/a?",
        "http://h?x",
    ):
        assert urls._parse_plain(text) is not None, text
    for text in (
        "http://Example.com/",
        "http://h/a%20b",
        "http://h/./x",
        "http://h:080/",
        "http://h/#top",
        "http://h/a b",
    ):
        assert urls._parse_plain(text) is None, text


def test_fast_path_leaves_invalid_plain_urls_to_the_full_parse() -> None:
    """Hosts and ports the regex lets through but the checks refuse: the full parse
    gives the reason, and a refused host is not remembered as good."""
    for text, reason in (
        ("http://127.1/", "not a canonical IPv4 address"),
        ("http://-h/", "invalid host"),
        ("http://h:65536/", "cannot parse URL"),
        ("http://h/" + "a" * 65_536, "longer than 65536"),
    ):
        assert urls._parse_plain(text) is None, text
        with pytest.raises(InvalidURL, match=reason):
            parse_target(text)
    assert "127.1" not in urls._HOSTS_OK
    assert "-h" not in urls._HOSTS_OK


def test_the_remembered_good_hosts_are_bounded() -> None:
    urls._HOSTS_OK.clear()
    for i in range(urls._HOSTS_OK_MAX + 10):
        parse_target(f"http://h{i}.example/")
    assert 0 < len(urls._HOSTS_OK) <= urls._HOSTS_OK_MAX
