"""The compact fingerprint set used for dedup."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crawler.dedup import FingerprintSet, fingerprint


def test_add_reports_new_and_seen() -> None:
    s = FingerprintSet()
    assert s.add(fingerprint("http://a/")) is True
    assert s.add(fingerprint("http://a/")) is False
    assert s.add(fingerprint("http://b/")) is True
    assert len(s) == 2
    assert fingerprint("http://a/") in s


def test_grows_and_keeps_everything() -> None:
    s = FingerprintSet()
    keys = [f"http://h/{i}" for i in range(50_000)]
    assert all(s.add(fingerprint(k)) for k in keys)
    assert not any(s.add(fingerprint(k)) for k in keys)
    assert len(s) == 50_000


def test_memory_is_about_16_bytes_per_url() -> None:
    s = FingerprintSet()
    per_url = []
    for i in range(1, 400_001):
        s.add(fingerprint(f"http://h/{i}"))
        if i % 50_000 == 0:
            per_url.append(s.nbytes / i)
    # 8-byte slots, at most 3/4 full before a shard doubles: 10.7 to 21.3 bytes/URL,
    # and since shards double one at a time the figure moves smoothly around 16.
    assert all(10.6 < b < 21.4 for b in per_url)
    assert 12 < sum(per_url) / len(per_url) < 20


def test_zero_fingerprint_is_never_stored_as_empty() -> None:
    s = FingerprintSet()
    assert s.add(1) is True and s.add(1) is False


@given(st.lists(st.text(max_size=30), max_size=200))
def test_behaves_like_a_set(keys: list[str]) -> None:
    s = FingerprintSet()
    seen: set[str] = set()
    for k in keys:
        assert s.add(fingerprint(k)) == (k not in seen)
        seen.add(k)
    assert len(s) == len(seen)


@given(st.lists(st.integers(min_value=1, max_value=(1 << 64) - 1), max_size=3000))
def test_add_many_answers_as_add_one_by_one(fps: list[int]) -> None:
    one, many = FingerprintSet(), FingerprintSet()
    # Colliding low bits in one shard make long probe runs and force growth.
    fps += [(fp & 0xFF00_0000_0000_0000) | 7 for fp in fps[:100]]
    assert many.add_many(fps) == [one.add(fp) for fp in fps]
    assert len(many) == len(one)
    assert all(fp in many for fp in fps)
