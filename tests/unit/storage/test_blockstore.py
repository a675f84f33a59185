"""Tests for medmesh.storage.blockstore: durable, content-addressed, refuses bad writes."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest

from medmesh.errors import BlockMismatchError, InvalidInputError, NotFoundError, StorageFullError
from medmesh.storage.blockstore import Blockstore
from medmesh.storage.cid import BLAKE3, DAG_PB, IDENTITY, RAW, SHA2_256, Cid


def _files(root: Path) -> set[str]:
    """Every file under ``root``, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


Batch = list[tuple[Cid, bytes | bytearray | memoryview]]


def _block(n: int, size: int = 100) -> tuple[Cid, bytes]:
    data = bytes([n % 256]) * size + n.to_bytes(4, "big")
    return Cid.of(data), data


# -- put / get / has / delete ------------------------------------------------------------


def test_put_get_has_delete_round_trip(tmp_path: Path) -> None:
    # Prepare
    store = Blockstore(tmp_path)
    cid, data = _block(1)
    # Execute / Assert
    assert not store.has(cid)
    assert store.put(cid, data) is True
    assert store.has(cid)
    assert store.get(cid) == data
    assert store.size(cid) == len(data)
    assert store.put(cid, data) is False  # already held
    assert store.stats().blocks == 1
    assert store.delete(cid) is True
    assert not store.has(cid)
    assert store.delete(cid) is False
    with pytest.raises(NotFoundError, match="not found"):
        store.get(cid)
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (0, 0)


def test_accepts_bytearray_and_memoryview(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid, data = _block(2)
    assert store.put(cid, memoryview(bytearray(data)))
    other_cid, other = _block(3)
    assert store.put(other_cid, bytearray(other))
    assert store.get(cid) == data
    assert store.get(other_cid) == other


def test_blake3_blocks_are_stored(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    data = b"parity share"
    cid = Cid.of(data, RAW, BLAKE3)
    assert store.put(cid, data)
    assert store.get(cid) == data
    assert not store.has(Cid.of(data))  # sha2-256 of the same bytes is another block


def test_identity_cids_are_inline_and_never_written(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid = Cid.of(b"inline", RAW, IDENTITY)
    assert store.has(cid)
    assert store.get(cid) == b"inline"
    assert store.put(cid, b"inline") is False
    assert _files(tmp_path / "blocks") == set()
    with pytest.raises(BlockMismatchError):
        store.put(cid, b"other")


def test_cidv0_and_cidv1_of_one_block_share_one_file(tmp_path: Path) -> None:
    # Prepare: a dag-pb block reached as CIDv0, CIDv1 dag-pb and CIDv1 raw
    store = Blockstore(tmp_path)
    data = b"\x0a\x02\x08\x01"  # a tiny dag-pb node (UnixFS directory)
    v0 = Cid.of(data, DAG_PB, SHA2_256, version=0)
    v1 = v0.to_v1()
    raw = Cid(1, RAW, SHA2_256, v0.digest)
    assert str(v0).startswith("Qm") and str(v1).startswith("bafy")
    # Execute
    assert store.put(v0, data) is True
    # Assert
    assert store.put(v1, data) is False
    assert store.has(v1) and store.has(raw)
    assert store.get(v1) == store.get(raw) == data
    assert len(_files(tmp_path / "blocks")) == 1
    assert store.stats().blocks == 1
    assert list(store.keys()) == [raw]  # keys are raw CIDv1 of the multihash
    assert store.delete(v1) is True
    assert not store.has(v0)


def test_layout_is_flatfs_next_to_last_2(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid, data = _block(4)
    store.put(cid, data)
    key = base64.b32encode(cid.multihash).decode().rstrip("=")
    assert key.startswith("CIQ")  # the familiar kubo key of a sha2-256 multihash
    expected = tmp_path / "blocks" / key[-3:-1] / f"{key}.data"
    assert expected.read_bytes() == data
    assert store.path_of(cid) == expected
    assert _files(tmp_path) == {str(expected.relative_to(tmp_path))}
    assert store.path_of(_block(5)[0]) is None


def test_keys_lists_every_block_and_skips_temporary_files(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cids = []
    for i in range(5):
        cid, data = _block(i)
        store.put(cid, data)
        cids.append(cid)
    assert sorted(store.keys()) == sorted(cids)


# -- refusals ------------------------------------------------------------------------------


def test_mismatching_bytes_are_refused_and_nothing_written(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid, _ = _block(6)
    with pytest.raises(BlockMismatchError, match="does not match"):
        store.put(cid, b"not the block")
    assert not store.has(cid)
    assert _files(tmp_path / "blocks") == set()
    assert store.stats().blocks == 0


def test_oversized_block_is_refused(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, max_block_size=1000)
    ok = b"x" * 1000
    big = b"x" * 1001
    assert store.put(Cid.of(ok), ok)
    with pytest.raises(InvalidInputError, match="1001 bytes exceeds the 1000-byte limit"):
        store.put(Cid.of(big), big)
    assert not store.has(Cid.of(big))
    assert store.stats().blocks == 1


def test_quota_is_enforced_and_nothing_written(tmp_path: Path) -> None:
    # Prepare: a quota that two 104-byte blocks fill exactly
    store = Blockstore(tmp_path, quota=208)
    (c1, d1), (c2, d2), (c3, d3) = _block(1), _block(2), _block(3)
    store.put(c1, d1)
    store.put(c2, d2)
    before = _files(tmp_path)
    # Execute / Assert
    with pytest.raises(StorageFullError, match="quota"):
        store.put(c3, d3)
    assert not store.has(c3)
    assert _files(tmp_path) == before
    st = store.stats()
    assert (st.blocks, st.bytes_used, st.quota) == (2, 208, 208)
    # a block already held needs no room
    assert store.put(c1, d1) is False
    # deleting makes room again
    store.delete(c1)
    assert store.put(c3, d3) is True


def test_disk_full_reserve_refuses_and_writes_nothing(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    store = Blockstore(tmp_path, reserve=free + (1 << 30))
    cid, data = _block(7)
    with pytest.raises(StorageFullError, match="disk is full"):
        store.put(cid, data)
    assert not store.has(cid)
    assert _files(tmp_path) == set()
    assert store.stats().disk_free > 0


def test_put_many_writes_nothing_if_one_block_is_bad(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    good = [_block(i) for i in range(4)]
    bad_cid, _ = _block(99)
    batch: Batch = [*good[:2], (bad_cid, b"tampered"), *good[2:]]
    with pytest.raises(BlockMismatchError):
        store.put_many(batch)
    assert not any(store.has(c) for c, _ in good)
    assert _files(tmp_path / "blocks") == set()
    assert store.stats().blocks == 0


def test_put_many_writes_nothing_if_one_block_is_too_big(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, max_block_size=200)
    big = b"y" * 201
    batch: Batch = [_block(1), (Cid.of(big), big)]
    with pytest.raises(InvalidInputError):
        store.put_many(batch)
    assert _files(tmp_path / "blocks") == set()


def test_put_many_writes_nothing_when_the_batch_exceeds_the_quota(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, quota=300)
    batch: Batch = [_block(i) for i in range(3)]  # 312 bytes
    with pytest.raises(StorageFullError):
        store.put_many(batch)
    assert _files(tmp_path / "blocks") == set()
    assert store.stats().bytes_used == 0


def test_put_many_counts_new_blocks_once(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    a, b = _block(1), _block(2)
    store.put(*a)
    assert store.put_many([a, b, b]) == 1
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (2, len(a[1]) + len(b[1]))


def test_concurrent_puts_of_one_block_count_it_once(tmp_path: Path) -> None:
    # Prepare: many threads racing to store the same new block
    store = Blockstore(tmp_path, fsync=True)
    cid, data = _block(8, size=65536)
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def put() -> None:
        barrier.wait()
        results.append(store.put(cid, data))

    # Execute
    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert: one writer reports it new; the usage counters match the disk
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (1, len(data))
    assert results.count(True) == 1
    assert len(_files(tmp_path / "blocks")) == 1
    reopened = Blockstore(tmp_path).stats()
    assert (reopened.blocks, reopened.bytes_used) == (st.blocks, st.bytes_used)


# -- durability ------------------------------------------------------------------------------


def test_stray_temporary_file_from_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    # Prepare: a held block, and a half-written temporary file left by a "crash"
    store = Blockstore(tmp_path)
    cid, data = _block(9)
    store.put(cid, data)
    shard = store.path_of(cid)
    assert shard is not None
    stray = shard.parent / f".tmp-4242-1-{shard.name}"
    stray.write_bytes(b"half a block")
    other_shard = tmp_path / "blocks" / "ZZ"
    other_shard.mkdir()
    stray2 = other_shard / ".tmp-1-2-CIQXXX.data"
    stray2.write_bytes(b"x" * 5000)
    # Execute
    reopened = Blockstore(tmp_path)
    # Assert
    assert not stray.exists() and not stray2.exists()
    st = reopened.stats()
    assert (st.blocks, st.bytes_used) == (1, len(data))
    assert list(reopened.keys()) == [Cid(1, RAW, SHA2_256, cid.digest)]
    assert reopened.get(cid) == data


def test_reopened_store_has_every_acknowledged_block(tmp_path: Path) -> None:
    # Prepare
    store = Blockstore(tmp_path, fsync=True)
    blocks = [_block(i, size=100 + i) for i in range(20)]
    acked = [cid for cid, data in blocks if store.put(cid, data)]
    store.delete(blocks[0][0])
    expected = {cid: data for cid, data in blocks[1:]}
    # Execute
    reopened = Blockstore(tmp_path)
    # Assert
    assert len(acked) == 20
    for cid, data in expected.items():
        assert reopened.get(cid) == data
    assert not reopened.has(blocks[0][0])
    st = reopened.stats()
    assert st.blocks == 19
    assert st.bytes_used == sum(len(d) for d in expected.values())
    assert (st.blocks, st.bytes_used) == (store.stats().blocks, store.stats().bytes_used)


def test_quota_applies_to_blocks_found_on_reopen(tmp_path: Path) -> None:
    Blockstore(tmp_path).put(*_block(1))  # 104 bytes
    store = Blockstore(tmp_path, quota=150)
    with pytest.raises(StorageFullError):
        store.put(*_block(2))
    assert store.stats().bytes_used == 104


# -- deleting in batches -----------------------------------------------------------------


class _SyncSpy(Blockstore):
    """Records how a deletion was made durable."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=True)
        self.synced: list[tuple[set[Path], bool]] = []

    def _sync_dirs(self, dirs: set[Path], *, group: bool) -> None:
        self.synced.append((set(dirs), group))
        super()._sync_dirs(dirs, group=group)


def test_delete_many_removes_present_blocks_once_and_counts_them(tmp_path: Path) -> None:
    # Prepare
    store = Blockstore(tmp_path)
    blocks = [_block(i) for i in range(6)]
    store.put_many([(c, d) for c, d in blocks[:4]])
    v0 = Cid(0, DAG_PB, SHA2_256, blocks[0][0].digest)  # the same multihash as blocks[0]
    identity = Cid(1, RAW, IDENTITY, b"inline")
    # Execute
    deleted = store.delete_many([blocks[0][0], v0, blocks[1][0], blocks[5][0], identity])
    # Assert: two files went (blocks[0] once, whatever CID named it); absent ones count 0
    assert deleted == 2
    assert {c for c, _ in blocks if store.has(c)} == {blocks[2][0], blocks[3][0]}
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (2, 2 * len(blocks[2][1]))
    assert store.delete_many([]) == 0


def test_deletions_are_synced_before_returning_and_survive_a_reopen(tmp_path: Path) -> None:
    # Prepare
    store = _SyncSpy(tmp_path)
    blocks = [_block(i) for i in range(5)]
    store.put_many([(c, d) for c, d in blocks])
    store.synced.clear()
    # Execute
    one = store.delete(blocks[0][0])
    many = store.delete_many([c for c, _ in blocks[1:]])
    nothing = store.delete(blocks[0][0])
    reopened = Blockstore(tmp_path)
    # Assert: a single delete fsyncs its shard folder, a batch is one group commit
    assert (one, many, nothing) == (True, 4, False)
    assert store.synced == [
        ({store._path(blocks[0][0]).parent}, False),
        ({store._path(c).parent for c, _ in blocks[1:]}, True),
    ]
    assert reopened.stats().blocks == 0
    assert not any(reopened.has(c) for c, _ in blocks)
    assert not [p for p in (tmp_path / "blocks").rglob("*") if p.is_file()]
