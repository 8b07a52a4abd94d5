"""A compact set of URL fingerprints: 8 bytes per slot, open addressing.

A Python ``set`` of URL strings costs ~100+ bytes per URL; ten million URLs would need a
gigabyte. Here each canonical key is reduced to a 64-bit BLAKE2b fingerprint stored in
one flat ``array('Q')`` with linear probing. The table doubles when it is 3/4 full, so
it holds between 10.7 and 21.3 bytes per distinct URL (16 on average over growth).

A false "already seen" needs two distinct URLs with the same 64-bit fingerprint: for
10^7 URLs the probability is about n^2 / 2^65 ~ 3e-6 per run.
"""

from __future__ import annotations

from array import array
from hashlib import blake2b

_EMPTY = 0
_MIN_CAPACITY = 1 << 10


def fingerprint(key: str) -> int:
    """A non-zero 64-bit fingerprint of ``key`` (0 marks an empty slot)."""
    fp = int.from_bytes(
        blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )
    return fp or 1


class FingerprintSet:
    """Set of 64-bit fingerprints in a flat open-addressing table."""

    __slots__ = ("_limit", "_mask", "_size", "_table")

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        size = _MIN_CAPACITY
        while size < capacity:
            size <<= 1
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._size = 0
        self._limit = size * 3 // 4

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Memory held by the table itself."""
        return len(self._table) * self._table.itemsize

    def add_key(self, key: str) -> bool:
        """Add ``key``'s fingerprint; return True if it was not there before."""
        return self.add(fingerprint(key))

    def add(self, fp: int) -> bool:
        """Add a fingerprint; return True if it was not there before."""
        table = self._table
        mask = self._mask
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
        if self._size > self._limit:
            self._grow()
        return True

    def __contains__(self, fp: object) -> bool:
        if not isinstance(fp, int):
            return False
        table = self._table
        mask = self._mask
        i = fp & mask
        while True:
            slot = table[i]
            if slot == _EMPTY:
                return False
            if slot == fp:
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._table
        size = len(old) * 2
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._limit = size * 3 // 4
        self._size = 0
        for fp in old:
            if fp != _EMPTY:
                self.add(fp)
