"""A compact set of URL fingerprints: 8 bytes per slot, open addressing.

A Python ``set`` of URL strings costs ~100+ bytes per URL; ten million URLs would need a
gigabyte. Here each canonical key is reduced to a 64-bit BLAKE2b fingerprint stored in
flat ``array('Q')`` tables with linear probing. A table doubles when it is 3/4 full, so
it holds between 10.7 and 21.3 bytes per distinct URL (16 on average over growth).

A false "already seen" needs two distinct URLs with the same 64-bit fingerprint: for
10^7 URLs the probability is about n^2 / 2^65 ~ 3e-6 per run.
"""

from __future__ import annotations

from array import array
from hashlib import blake2b

_EMPTY = 0
_SHARDS = 256
_SHARD_MIN = 64  # slots per shard to start with: 128 KiB for an empty set


def fingerprint(key: str) -> int:
    """A non-zero 64-bit fingerprint of ``key`` (0 marks an empty slot)."""
    fp = int.from_bytes(
        blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )
    return fp or 1


def to_sql(fp: int) -> int:
    """SQLite integers are signed 64-bit: map an unsigned fingerprint onto one."""
    return fp - (1 << 64) if fp >= 1 << 63 else fp


def from_sql(value: int) -> int:
    """The fingerprint stored as ``to_sql(fp)``."""
    return value + (1 << 64) if value < 0 else value


class FingerprintSet:
    """Set of 64-bit fingerprints in flat open-addressing tables.

    The set is split into 256 shards by the fingerprint's top byte, each a table of its
    own: a shard that fills up doubles alone, so growing never needs the old and the new
    copy of the whole set at once (one big table would briefly need 3x its size).
    """

    __slots__ = ("_limits", "_masks", "_size", "_tables")

    def __init__(self) -> None:
        self._tables = [array("Q", bytes(8 * _SHARD_MIN)) for _ in range(_SHARDS)]
        self._masks = [_SHARD_MIN - 1] * _SHARDS
        self._limits = [_SHARD_MIN * 3 // 4] * _SHARDS
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Memory held by the tables themselves."""
        return sum(len(t) * t.itemsize for t in self._tables)

    def add(self, fp: int) -> bool:
        """Add a fingerprint; return True if it was not there before."""
        shard = fp >> 56
        table = self._tables[shard]
        mask = self._masks[shard]
        i = fp & mask
        while True:
            slot = table[i]
            if slot == _EMPTY:
                break
            if slot == fp:
                return False
            i = (i + 1) & mask
        table[i] = fp
        self._size += 1
        self._limits[shard] -= 1
        if self._limits[shard] < 0:
            self._grow(shard)
        return True

    def add_many(self, fps: list[int]) -> list[int]:
        """``[int(self.add(fp)) for fp in fps]`` (1: new, 0: there before), with the
        per-call overhead paid once."""
        tables, masks, limits = self._tables, self._masks, self._limits
        fresh = []
        for fp in fps:
            shard = fp >> 56
            table = tables[shard]
            mask = masks[shard]
            i = fp & mask
            slot = table[i]
            while slot and slot != fp:  # 0 (_EMPTY) ends the probe
                i = (i + 1) & mask
                slot = table[i]
            if slot:
                fresh.append(0)
                continue
            table[i] = fp
            self._size += 1
            limits[shard] -= 1
            if limits[shard] < 0:
                self._grow(shard)
            fresh.append(1)
        return fresh

    def __contains__(self, fp: object) -> bool:
        if not isinstance(fp, int):
            return False
        shard = fp >> 56
        table = self._tables[shard]
        mask = self._masks[shard]
        i = fp & mask
        while True:
            slot = table[i]
            if slot == _EMPTY:
                return False
            if slot == fp:
                return True
            i = (i + 1) & mask

    def _grow(self, shard: int) -> None:
        old = self._tables[shard]
        size = len(old) * 2
        table = array("Q", bytes(8 * size))
        mask = size - 1
        count = 0
        for fp in old:
            if fp != _EMPTY:
                i = fp & mask
                while table[i] != _EMPTY:
                    i = (i + 1) & mask
                table[i] = fp
                count += 1
        self._tables[shard] = table
        self._masks[shard] = mask
        self._limits[shard] = size * 3 // 4 - count
