"""A bounded in-memory cache of small, verified objects, keyed by CID.

Content addressing makes caching safe: an object's bytes are fixed by its CID, and they enter
the cache only after the store has verified them against it, so a hit is as good as a fetch.
What a cache must not do is decide who may read: the consent gateway checks the ledger on
every request, hit or miss, and only then serves bytes (ciphertext, at that).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from medmesh.storage.cid import Cid

__all__ = ["DEFAULT_CACHE_BYTES", "MAX_CACHED_OBJECT", "ObjectCache"]

DEFAULT_CACHE_BYTES: Final = 64 * 1024 * 1024
MAX_CACHED_OBJECT: Final = 256 * 1024  # larger objects stream from the network every time


class ObjectCache:
    """Least-recently-used objects of at most ``max_object`` bytes, ``capacity`` in all."""

    def __init__(
        self, capacity: int = DEFAULT_CACHE_BYTES, *, max_object: int = MAX_CACHED_OBJECT
    ) -> None:
        self.capacity = capacity
        self.max_object = min(max_object, capacity)
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Cid, bytes] = OrderedDict()

    def get(self, cid: Cid) -> bytes | None:
        data = self._items.get(cid)
        if data is None:
            self.misses += 1
            return None
        self._items.move_to_end(cid)
        self.hits += 1
        return data

    def put(self, cid: Cid, data: bytes) -> None:
        """Keep ``data`` (already verified against ``cid``) if it is small enough."""
        if len(data) > self.max_object or cid in self._items:
            return
        self._items[cid] = data
        self.size += len(data)
        while self.size > self.capacity:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def discard(self, cid: Cid) -> None:
        data = self._items.pop(cid, None)
        if data is not None:
            self.size -= len(data)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, cid: object) -> bool:
        return cid in self._items
