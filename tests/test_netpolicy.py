"""--block-private and --resolve: addresses are checked after DNS and on every hop."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.errors import Blocked
from crawler.netpolicy import AddressPolicy, parse_resolve
from crawler.urls import parse_url
from tests.conftest import Server, run_engine


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "224.0.0.1",
     "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_block_private_refuses_internal_addresses(address: str) -> None:
    assert AddressPolicy(block_private=True).refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_block_private_allows_public_addresses(address: str) -> None:
    assert AddressPolicy(block_private=True).refusal(address) is None


def test_ip_literal_urls_are_checked_before_connecting() -> None:
    policy = AddressPolicy(block_private=True)
    with pytest.raises(Blocked):
        policy.check_url(parse_url("http://169.254.169.254/latest/meta-data/"))
    with pytest.raises(Blocked):
        policy.check_url(parse_url("http://[::1]:8080/"))
    policy.check_url(parse_url("http://example.com/"))  # names are checked after DNS


def test_parse_resolve() -> None:
    assert parse_resolve("example.com:127.0.0.2") == ("example.com", "127.0.0.2")
    assert parse_resolve("*:[::1]") == ("*", "::1")
    for bad in ("nocolon", "x:notanip", ":1.2.3.4"):
        with pytest.raises(ValueError, match="--resolve"):
            parse_resolve(bad)


async def test_block_private_refuses_loopback_names_after_dns(
    server: Server, tmp_path: Path
) -> None:
    port = server.ports["127.0.0.1"]
    lines = [f"http://localhost:{port}/ok/1", server.url("/ok/2")]
    _, records = await run_engine(tmp_path, lines, block_private=True)
    assert {r["error"]["kind"] for r in records} == {"blocked"}
    assert sum(server.rec.hits.values()) == 0


async def test_redirect_into_a_private_address_is_blocked(server: Server, tmp_path: Path) -> None:
    # The first hop is allowed (resolved via --resolve to an allowed network), the
    # redirect target is a loopback literal outside it.
    port = server.ports["127.0.0.2"]
    target = server.url("/ok/secret", "127.0.0.1")
    lines = [f"http://public.test:{port}/redirect?to={target}"]
    _, records = await run_engine(
        tmp_path,
        lines,
        resolve=(("public.test", "127.0.0.2"),),
        allow_only=("127.0.0.2/32",),
    )
    [rec] = records
    assert rec["error"]["kind"] == "blocked"
    assert server.rec.hits["/ok/secret"] == 0


async def test_resolve_maps_names_to_fixed_addresses(server: Server, tmp_path: Path) -> None:
    port = server.ports["127.0.0.3"]
    lines = [f"http://anything.example:{port}/ok/x"]
    _, records = await run_engine(tmp_path, lines, resolve=(("*", "127.0.0.3"),))
    [rec] = records
    assert rec["ok"] and rec["status"] == 200
    assert server.rec.headers[-1]["Host"] == f"anything.example:{port}"
