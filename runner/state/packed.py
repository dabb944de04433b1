"""A map from job id to two 64-bit numbers in about 24 bytes an entry, for the done jobs
of a big ledger (a ``dict[str, int]`` costs about 150).

Entries live in sorted ``array('Q')`` triples (id hash, fingerprint prefix, meta), split
into 4,096 buckets by the top bits of a 64-bit blake2b hash of the id, so an insert or
delete moves a few hundred numbers at most. Ids are not kept: two ids with the same
64-bit hash would share an entry (about one chance in 10**7 for a million ids, and then
only the done-ness of one of them is mistaken: it is downloaded or submitted again).

Owns: the packing. Must not know: what the numbers mean (:mod:`runner.state.index`).
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["PackedDone"]

_BUCKET_SHIFT = 64 - 12


def _hash(job: str) -> int:
    return int.from_bytes(hashlib.blake2b(job.encode(), digest_size=8).digest(), "big")


class PackedDone:
    #: the bucket of a key is its top bits: ``key >> BUCKET_SHIFT``
    BUCKET_SHIFT = _BUCKET_SHIFT

    def __init__(self) -> None:
        buckets = 1 << (64 - _BUCKET_SHIFT)
        self._keys = [array("Q") for _ in range(buckets)]
        self._fps = [array("Q") for _ in range(buckets)]
        self._meta = [array("Q") for _ in range(buckets)]
        self._len = 0

    def _find(self, job: str) -> tuple[int, int, int, bool]:
        h = _hash(job)
        b = h >> _BUCKET_SHIFT
        keys = self._keys[b]
        i = bisect_left(keys, h)
        return h, b, i, i < len(keys) and keys[i] == h

    def get(self, job: str) -> tuple[int, int] | None:
        """(fingerprint prefix, meta) of ``job``, or None."""
        _, b, i, found = self._find(job)
        return (self._fps[b][i], self._meta[b][i]) if found else None

    def put(self, job: str, fp: int, meta: int) -> None:
        h, b, i, found = self._find(job)
        if found:
            self._fps[b][i], self._meta[b][i] = fp, meta
            return
        self._keys[b].insert(i, h)
        self._fps[b].insert(i, fp)
        self._meta[b].insert(i, meta)
        self._len += 1

    def put_new(self, job: str, fp: int, meta: int) -> bool:
        """Add ``job`` if it is not there; False (nothing changed) if it is."""
        h, b, i, found = self._find(job)
        if found:
            return False
        self._keys[b].insert(i, h)
        self._fps[b].insert(i, fp)
        self._meta[b].insert(i, meta)
        self._len += 1
        return True

    def pop(self, job: str) -> bool:
        """Remove ``job``; False if it was not there."""
        _, b, i, found = self._find(job)
        if found:
            del self._keys[b][i], self._fps[b][i], self._meta[b][i]
            self._len -= 1
        return found

    def metas(self) -> Iterator[int]:
        for bucket in self._meta:
            yield from bucket

    def __contains__(self, job: object) -> bool:
        return isinstance(job, str) and self._find(job)[3]

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def columns(self) -> tuple[list[array[int]], list[array[int]], list[array[int]]]:
        """The buckets' sorted keys, fingerprint prefixes and metas (read, not changed)."""
        return self._keys, self._fps, self._meta

    def dump(self) -> dict[str, list[array[int]]]:
        """The whole map as four columns of chunks, one a bucket (bucket lengths, keys,
        fps, metas): what :meth:`load` takes back, once each column is made one array."""
        lengths = array("Q", (len(bucket) for bucket in self._keys))
        return {"lengths": [lengths], "keys": self._keys, "fps": self._fps, "metas": self._meta}

    @classmethod
    def load(
        cls, lengths: array[int], keys: array[int], fps: array[int], metas: array[int]
    ) -> PackedDone:
        """The map :meth:`dump` gave these arrays of (emptied as they are taken, so the
        map never needs twice its memory); ValueError if they are not one."""
        buckets = 1 << (64 - _BUCKET_SHIFT)
        if len(lengths) != buckets or not len(keys) == len(fps) == len(metas) == sum(lengths):
            raise ValueError("not a packed done map")
        packed = cls()
        packed._len = len(keys)
        end = len(keys)
        for b in range(buckets - 1, -1, -1):  # from the end: each cut gives memory back
            start = end - lengths[b]
            packed._keys[b], packed._fps[b], packed._meta[b] = (
                keys[start:],
                fps[start:],
                metas[start:],
            )
            del keys[start:], fps[start:], metas[start:]
            bucket = packed._keys[b]
            if bucket and (bucket[0] >> _BUCKET_SHIFT != b or bucket[-1] >> _BUCKET_SHIFT != b):
                raise ValueError("not a packed done map")
            end = start
        return packed
