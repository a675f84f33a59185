"""The verified-object cache: bounded by bytes, least recently used out first."""

from __future__ import annotations

import hashlib

from medmesh.storage.cache import ObjectCache
from medmesh.storage.cid import Cid


def _raw(data: bytes) -> Cid:
    # CIDv1, raw codec (0x55), sha2-256 multihash
    return Cid.from_bytes(bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest())


def test_lru_by_bytes_and_size_limit() -> None:
    cache = ObjectCache(100, max_object=40)
    blobs = [bytes([i]) * 30 for i in range(4)]
    cids = [_raw(b) for b in blobs]
    for c, b in zip(cids[:3], blobs[:3], strict=True):
        cache.put(c, b)
    assert cache.size == 90 and len(cache) == 3
    assert cache.get(cids[0]) == blobs[0]  # now the most recent
    cache.put(cids[3], blobs[3])  # 120 > 100: the least recent (cids[1]) goes
    assert cids[1] not in cache and cids[0] in cache and cache.size == 90
    big = b"x" * 41
    cache.put(_raw(big), big)  # over max_object: not kept
    assert _raw(big) not in cache
    assert cache.get(cids[1]) is None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.discard(cids[0])
    assert cids[0] not in cache and cache.size == 60
