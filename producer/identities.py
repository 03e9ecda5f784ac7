"""The identities of the images a batch holds, for a resubmission: which inputs to skip.

A batch's images are listed in its shards' lists in S3 (``segq.shards``), not in Redis; a
submission that adds to an existing batch reads them first (every shard that joined the batch,
the batch's submission lock held, so nothing is added meanwhile) into an :class:`IdentityIndex`,
and adds each new input's identity as it goes, so that an input named twice in one submission is
skipped too. Memory: 16 bytes per image (a 64-bit digest of the identity and where its image
is), in sorted arrays, not a dict of strings (a million images: 16 MB, not 100).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

BUCKETS = 4096
#: New entries of a bucket kept unsorted, at most; then merged into its sorted arrays.
LOOSE = 64


def digest(identity: str) -> int:
    """A 64-bit digest of an identity (``segq.batches.identity``)."""
    return int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "big")


class IdentityIndex:
    """Digest -> value (a 64-bit number: where the image is), by buckets of sorted arrays."""

    def __init__(self) -> None:
        self._keys = [array("Q") for _ in range(BUCKETS)]
        self._values = [array("Q") for _ in range(BUCKETS)]
        self._loose: list[dict[int, int]] = [{} for _ in range(BUCKETS)]
        self.size = 0

    def get(self, identity: str) -> int | None:
        d = digest(identity)
        b = d % BUCKETS
        if d in self._loose[b]:
            return self._loose[b][d]
        keys = self._keys[b]
        i = bisect.bisect_left(keys, d)
        return self._values[b][i] if i < len(keys) and keys[i] == d else None

    def add(self, identity: str, value: int) -> None:
        d = digest(identity)
        b = d % BUCKETS
        loose = self._loose[b]
        if d in loose:
            return
        loose[d] = value
        self.size += 1
        if len(loose) >= LOOSE:
            self._merge(b)

    def _merge(self, b: int) -> None:
        pairs = sorted(list(zip(self._keys[b], self._values[b])) + list(self._loose[b].items()))
        self._keys[b] = array("Q", (k for k, _ in pairs))
        self._values[b] = array("Q", (v for _, v in pairs))
        self._loose[b] = {}


def load(index: IdentityIndex, shards: Iterable[int], read: Callable[[int], list[tuple[str, int]]],
         threads: int = 16) -> None:
    """Fill ``index`` from the lists of ``shards``: ``read(shard)`` gives its (identity, value)
    pairs; ``threads`` lists are read at once."""
    shards = iter(shards)
    with ThreadPoolExecutor(threads, thread_name_prefix="segq-identities") as pool:
        while window := list(itertools.islice(shards, threads * 8)):  # bounded: a window at a time
            for pairs in pool.map(read, window):
                for identity, value in pairs:
                    if identity:
                        index.add(identity, value)
