"""Hostile input lines never raise: each gets a record or is skipped as blank/comment."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.errors import InvalidURL
from crawler.urls import canonical_key, parse_url
from tests.conftest import run_engine

URLISH = st.builds(
    lambda scheme, userinfo, host, port, path: f"{scheme}{userinfo}{host}{port}{path}",
    st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "//", "", "http:/", "https:///"]),
    st.sampled_from(["", "user@", "user:pw@", "@", ":@"]),
    st.sampled_from(
        ["localhost", "127.0.0.1", "[::1]", "bücher.example", "xn--bcher-kva.example",
         "EXAMPLE.test", "a" * 300, "", "[fe80::1%25eth0]", "1.2.3", "ex ample.test",
         "example.test."]
    ),
    st.sampled_from(["", ":0", ":1", ":80", ":65535", ":65536", ":-1", ":abc", ":"]),
    st.text(max_size=40),
)  # fmt: skip
LINE = st.one_of(
    URLISH,
    st.text(max_size=60),
    st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    st.just("x" * 100_000),
    st.just("http://127.0.0.1:9/" + "a" * 100_000),
)


def expected_keys(data: bytes) -> set[str]:
    keys = set()
    for raw in data.removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        text = line.decode("utf-8", "replace")
        try:
            keys.add(canonical_key(parse_url(text)))
        except InvalidURL:
            keys.add("invalid:" + text)
    return keys


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(
        st.one_of(LINE.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=80)),
        max_size=25,
    )
)
def test_any_lines_get_one_record_each_and_never_crash(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    data = b"\n".join(lines)
    tmp_path = tmp_path_factory.mktemp("case")  # one per example, under pytest's temp root
    (tmp_path / "urls.txt").write_bytes(data)
    # Every name resolves to loopback and nothing outside 127/8 may be reached: the
    # fuzzer's URLs never leave this machine.
    _, records = asyncio.run(
        run_engine(
            tmp_path,
            None,
            resolve=(("*", "127.0.0.1"),),
            allow_only=("127.0.0.0/8", "::1/128"),
            retries=0,
            timeout=2.0,
            connect_timeout=1.0,
        )
    )
    got = set()
    for r in records:
        if r["error"] and r["error"]["kind"] == "invalid_url":
            got.add("invalid:" + r["url"])
        else:
            got.add(canonical_key(parse_url(r["url"])))
    assert len(records) == len(got)  # no duplicates
    assert got == expected_keys(data)
