"""Tests for medmesh.storage.blockstore: durable, content-addressed, refuses bad writes."""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import random
import shutil
import sqlite3
import struct
import threading
from pathlib import Path

import pytest

from medmesh.errors import BlockMismatchError, InvalidInputError, NotFoundError, StorageFullError
from medmesh.storage import blockstore
from medmesh.storage.blockstore import PACK_MAX_BLOCK, Blockstore
from medmesh.storage.cid import BLAKE3, DAG_PB, IDENTITY, RAW, SHA2_256, Cid


def _files(root: Path) -> set[str]:
    """Every file under ``root``, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _packs(root: Path) -> list[Path]:
    """The store's pack files, in order."""
    return sorted((root / "packs").glob("*.pack"))


def _pack_bytes(root: Path) -> bytes:
    """Everything in the store's pack files, read raw from the disk."""
    return b"".join(p.read_bytes() for p in _packs(root))


def _entry_size(cid: Cid, data: bytes) -> int:
    """A pack entry: magic, u32 length, u16 multihash length, multihash, then the bytes."""
    return 4 + 4 + 2 + len(cid.multihash) + len(data)


Batch = list[tuple[Cid, bytes | bytearray | memoryview]]


def _block(n: int, size: int = 100) -> tuple[Cid, bytes]:
    data = bytes([n % 256]) * size + n.to_bytes(4, "big")
    return Cid.of(data), data


def _sealed(n: int, size: int = 700) -> tuple[Cid, bytes]:
    """A block of random bytes, like the ciphertext of a sealed record."""
    data = random.Random(n).randbytes(size)
    return Cid.of(data), data


def _flatfs_path(root: Path, cid: Cid) -> Path:
    """Where the flatfs layout (kubo's next-to-last/2) keeps ``cid``."""
    key = base64.b32encode(cid.multihash).decode().rstrip("=")
    return root / "blocks" / key[-3:-1] / f"{key}.data"


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
    assert _pack_bytes(tmp_path) == b""
    with pytest.raises(BlockMismatchError):
        store.put(cid, b"other")


def test_cidv0_and_cidv1_of_one_block_share_one_entry(tmp_path: Path) -> None:
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
    assert _pack_bytes(tmp_path).count(data) == 1  # one pack entry (a small block)
    assert len(_pack_bytes(tmp_path)) == _entry_size(v0, data)
    assert store.stats().blocks == 1
    assert list(store.keys()) == [raw]  # keys are raw CIDv1 of the multihash
    assert store.delete(v1) is True
    assert not store.has(v0)


def test_large_blocks_keep_the_flatfs_next_to_last_2_layout(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    cid, data = _block(4, size=PACK_MAX_BLOCK)  # 4 bytes over the pack limit
    store.put(cid, data)
    key = base64.b32encode(cid.multihash).decode().rstrip("=")
    assert key.startswith("CIQ")  # the familiar kubo key of a sha2-256 multihash
    expected = tmp_path / "blocks" / key[-3:-1] / f"{key}.data"
    assert expected.read_bytes() == data
    assert store.path_of(cid) == expected
    assert store.location(cid) == (expected, 0, len(data))
    assert _files(tmp_path / "blocks") == {str(expected.relative_to(tmp_path / "blocks"))}
    assert _pack_bytes(tmp_path) == b""
    assert store.path_of(_block(5)[0]) is None


def test_small_blocks_go_to_a_pack_and_survive_reopening(tmp_path: Path) -> None:
    # Prepare: blocks up to the pack limit, the largest exactly at it
    store = Blockstore(tmp_path)
    blocks = [_sealed(i, 100 + i) for i in range(50)]
    edge = b"e" * PACK_MAX_BLOCK
    blocks.append((Cid.of(edge), edge))
    # Execute
    assert store.put_many(list(blocks)) == len(blocks)
    # Assert: one pack holds them all, no block file; each is where the index says
    assert _files(tmp_path / "blocks") == set()
    (pack,) = _packs(tmp_path)
    raw = pack.read_bytes()
    assert len(raw) == sum(_entry_size(c, d) for c, d in blocks)
    for cid, data in blocks:
        assert store.path_of(cid) is None  # callers fall back to get()
        where = store.location(cid)
        assert where is not None and where[0] == pack
        assert raw[where[1] : where[1] + where[2]] == data
        assert store.size(cid) == len(data)
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (len(blocks), sum(len(d) for _, d in blocks))
    store.close()
    reopened = Blockstore(tmp_path)
    for cid, data in blocks:
        assert reopened.get(cid) == data
    assert sorted(reopened.keys()) == sorted(Cid(1, RAW, SHA2_256, c.digest) for c, _ in blocks)
    again = reopened.stats()
    assert (again.blocks, again.bytes_used) == (st.blocks, st.bytes_used)
    assert reopened.put_many(list(blocks)) == 0
    assert pack.read_bytes() == raw  # nothing appended for blocks already held


def test_a_full_pack_is_followed_by_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blockstore, "PACK_TARGET_SIZE", 1000)
    store = Blockstore(tmp_path)
    batches = [[_sealed(10 * b + i) for i in range(2)] for b in range(3)]
    for batch in batches:
        store.put_many(list(batch))
    # each batch (1,400 bytes and more) fills a pack past the target: three packs
    assert [p.name for p in _packs(tmp_path)] == [f"0000000{i}.pack" for i in (1, 2, 3)]
    assert store.delete(batches[0][0][0])
    reopened = Blockstore(tmp_path)
    assert not reopened.has(batches[0][0][0])
    for cid, data in [b for batch in batches for b in batch][1:]:
        assert reopened.get(cid) == data


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
    assert _pack_bytes(tmp_path) == b""
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
    packed = _pack_bytes(tmp_path)
    # Execute / Assert
    with pytest.raises(StorageFullError, match="quota"):
        store.put(c3, d3)
    assert not store.has(c3)
    assert _files(tmp_path) == before
    assert _pack_bytes(tmp_path) == packed  # not a byte appended
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
    before = _files(tmp_path)  # the empty index
    cid, data = _block(7)
    with pytest.raises(StorageFullError, match="disk is full"):
        store.put(cid, data)
    assert not store.has(cid)
    assert _files(tmp_path) == before
    assert _pack_bytes(tmp_path) == b""
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
    assert _pack_bytes(tmp_path) == b""
    assert store.stats().blocks == 0


def test_put_many_writes_nothing_if_one_block_is_too_big(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, max_block_size=200)
    big = b"y" * 201
    batch: Batch = [_block(1), (Cid.of(big), big)]
    with pytest.raises(InvalidInputError):
        store.put_many(batch)
    assert _files(tmp_path / "blocks") == set()
    assert _pack_bytes(tmp_path) == b""


def test_put_many_writes_nothing_when_the_batch_exceeds_the_quota(tmp_path: Path) -> None:
    store = Blockstore(tmp_path, quota=300)
    batch: Batch = [_block(i) for i in range(3)]  # 312 bytes
    with pytest.raises(StorageFullError):
        store.put_many(batch)
    assert _files(tmp_path / "blocks") == set()
    assert _pack_bytes(tmp_path) == b""
    assert store.stats().bytes_used == 0


def test_put_many_counts_new_blocks_once(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    a, b = _block(1), _block(2)
    store.put(*a)
    assert store.put_many([a, b, b]) == 1
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (2, len(a[1]) + len(b[1]))


@pytest.mark.parametrize("size", [700, PACK_MAX_BLOCK], ids=["packed", "file"])
def test_concurrent_puts_of_one_block_count_it_once(tmp_path: Path, size: int) -> None:
    # Prepare: many threads racing to store the same new block
    store = Blockstore(tmp_path, fsync=True)
    cid, data = _block(8, size=size)
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
    if len(data) > PACK_MAX_BLOCK:
        assert len(_files(tmp_path / "blocks")) == 1
    else:
        assert len(_pack_bytes(tmp_path)) == _entry_size(cid, data)  # written once
    reopened = Blockstore(tmp_path).stats()
    assert (reopened.blocks, reopened.bytes_used) == (st.blocks, st.bytes_used)


# -- durability ------------------------------------------------------------------------------


def test_stray_temporary_file_from_a_crash_is_removed_on_open(tmp_path: Path) -> None:
    # Prepare: a held (large) block, and a half-written temporary file left by a "crash"
    store = Blockstore(tmp_path)
    cid, data = _block(9, size=PACK_MAX_BLOCK)
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
    """Records how a write or deletion was made durable: folders and packs synced."""

    def __init__(self, root: Path) -> None:
        self.synced: list[tuple[set[Path], bool] | int] = []
        super().__init__(root, fsync=True)

    def _sync_dirs(self, dirs: set[Path], *, group: bool) -> None:
        self.synced.append((set(dirs), group))
        super()._sync_dirs(dirs, group=group)

    def _sync_pack(self, pack: int, fd: int) -> None:
        self.synced.append(pack)
        super()._sync_pack(pack, fd)


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


def test_packed_deletions_are_synced_before_returning_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    # Prepare
    store = _SyncSpy(tmp_path)
    blocks = [_block(i) for i in range(5)]
    store.put_many([(c, d) for c, d in blocks])
    assert store.synced == [1]  # the batch's append: one sync of pack 1
    store.synced.clear()
    # Execute
    one = store.delete(blocks[0][0])
    many = store.delete_many([c for c, _ in blocks[1:]])
    nothing = store.delete(blocks[0][0])
    reopened = Blockstore(tmp_path)
    # Assert: a delete and a batch each sync the pack they erased from, once; an absent
    # block syncs nothing
    assert (one, many, nothing) == (True, 4, False)
    assert store.synced == [1, 1]
    assert reopened.stats().blocks == 0
    assert not any(reopened.has(c) for c, _ in blocks)
    assert _pack_bytes(tmp_path).strip(b"\0") == b""


def test_file_deletions_are_synced_before_returning_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    # Prepare
    store = _SyncSpy(tmp_path)
    blocks = [_block(i, size=PACK_MAX_BLOCK) for i in range(5)]
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


# -- packs: crashes, erasure, blocks from before packs ----------------------------------------


class _Crash(Exception):
    """The process "dies" here: the test keeps a copy of the disk as it was at that moment."""


class _CrashingStore(Blockstore):
    """Copies its folder to ``disk`` and raises :class:`_Crash` at one step of a write."""

    def __init__(self, root: Path, disk: Path, at: str) -> None:
        super().__init__(root, fsync=True)
        self.disk = disk
        self.at = at

    def _crash(self, step: str) -> None:
        if step == self.at:
            shutil.copytree(self.root, self.disk)
            raise _Crash(step)

    def _index_add(self, locs: list[blockstore._Loc]) -> None:
        self._crash("before commit")  # the batch is appended and synced, not indexed
        super()._index_add(locs)

    def _erase(self, ranges: list[tuple[int, int, int]]) -> None:
        self._crash("before erasing")  # the rows are deleted (committed), bytes not erased
        super()._erase(ranges)


def test_bytes_appended_past_the_index_are_cut_when_opening(tmp_path: Path) -> None:
    # Prepare: held blocks, then a whole entry appended but never indexed (a crash
    # between the append and the commit)
    store = Blockstore(tmp_path)
    held = [_sealed(i) for i in range(3)]
    store.put_many(list(held))
    store.close()
    (pack,) = _packs(tmp_path)
    acked = pack.stat().st_size
    lost_cid, lost = _sealed(99)
    mh = lost_cid.multihash
    with pack.open("ab") as fh:
        fh.write(struct.pack("<4sIH", b"MMPK", len(lost), len(mh)) + mh + lost)
    # Execute
    reopened = Blockstore(tmp_path)
    # Assert: the unacknowledged entry is gone from the disk, the others are intact
    assert pack.stat().st_size == acked
    assert not reopened.has(lost_cid)
    assert [reopened.get(c) for c, _ in held] == [d for _, d in held]
    st = reopened.stats()
    assert (st.blocks, st.bytes_used) == (3, 3 * 700)
    # and the pack is appended to from there
    assert reopened.put(lost_cid, lost)
    assert Blockstore(tmp_path).get(lost_cid) == lost


def test_index_rows_past_a_pack_lost_tail_are_dropped_when_opening(tmp_path: Path) -> None:
    # Prepare: without fsync, a crash can lose a pack's tail that the index points at
    store = Blockstore(tmp_path, fsync=False)
    blocks = [_sealed(i) for i in range(3)]
    store.put_many(list(blocks))
    store.close()
    (pack,) = _packs(tmp_path)
    os.truncate(pack, pack.stat().st_size - 100)  # the last entry is cut short
    # Execute
    reopened = Blockstore(tmp_path, fsync=False)
    # Assert: the damaged block is absent (not served short), the others are intact
    assert not reopened.has(blocks[2][0])
    with pytest.raises(NotFoundError):
        reopened.get(blocks[2][0])
    assert [reopened.get(c) for c, _ in blocks[:2]] == [d for _, d in blocks[:2]]
    assert (reopened.stats().blocks, reopened.stats().bytes_used) == (2, 2 * 700)
    assert pack.stat().st_size == _entry_size(*blocks[0]) + _entry_size(*blocks[1])
    assert reopened.put(*blocks[2])  # and it can be stored again
    assert Blockstore(tmp_path).get(blocks[2][0]) == blocks[2][1]


def test_crash_between_append_and_commit_leaves_nothing_visible(tmp_path: Path) -> None:
    # Prepare
    root, disk = tmp_path / "store", tmp_path / "disk-at-crash"
    store = _CrashingStore(root, disk, at="before commit")
    held = [_sealed(i) for i in range(3)]
    store.at = ""
    store.put_many(list(held))
    store.at = "before commit"
    acked = _pack_bytes(root)
    batch = [_sealed(i) for i in range(10, 20)]
    # Execute
    with pytest.raises(_Crash):
        store.put_many(list(batch))
    # Assert: the batch's bytes were on the disk at the crash, yet a store opened on that
    # disk shows none of them and cuts them off
    assert all(d in _pack_bytes(disk) for _, d in batch)
    after_crash = Blockstore(disk)
    assert not any(after_crash.has(c) for c, _ in batch)
    assert _pack_bytes(disk) == acked
    assert [after_crash.get(c) for c, _ in held] == [d for _, d in held]
    st = after_crash.stats()
    assert (st.blocks, st.bytes_used) == (3, 3 * 700)
    # ... and the store that survived the failed commit removed the bytes itself
    assert not any(store.has(c) for c, _ in batch)
    assert _pack_bytes(root) == acked
    assert (store.stats().blocks, store.stats().bytes_used) == (3, 3 * 700)
    store.at = ""
    assert store.put_many(list(batch)) == len(batch)


def test_disk_full_while_appending_is_storage_full_and_leaves_no_bytes(tmp_path: Path) -> None:
    class FullDisk(Blockstore):
        def _sync_pack(self, pack: int, fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    store = FullDisk(tmp_path, fsync=True)
    batch = [_sealed(i) for i in range(4)]
    with pytest.raises(StorageFullError, match="disk is full"):
        store.put_many(list(batch))
    assert _pack_bytes(tmp_path) == b""
    assert not any(store.has(c) for c, _ in batch)
    assert store.stats().blocks == 0


def test_deleting_a_packed_block_erases_its_bytes_from_the_disk(tmp_path: Path) -> None:
    # Prepare: three sealed records' blocks in one pack
    store = Blockstore(tmp_path, fsync=True)
    blocks = [_sealed(i) for i in range(3)]
    store.put_many(list(blocks))
    (pack,) = _packs(tmp_path)
    size = pack.stat().st_size
    gone_cid, gone = blocks[1]
    assert gone in pack.read_bytes()
    # Execute
    assert store.delete(gone_cid) is True
    # Assert: neither the ciphertext nor its header (the multihash) is left in the file
    raw = pack.read_bytes()
    assert gone not in raw and gone_cid.multihash not in raw
    assert gone[:64] not in raw and gone[-64:] not in raw
    assert blocks[0][1] in raw and blocks[2][1] in raw
    assert pack.stat().st_size == size  # a hole (or zeros): the other offsets stay valid
    assert [store.get(c) for c, _ in (blocks[0], blocks[2])] == [blocks[0][1], blocks[2][1]]
    with pytest.raises(NotFoundError):
        store.get(gone_cid)
    reopened = Blockstore(tmp_path)
    assert not reopened.has(gone_cid)
    assert sorted(reopened.keys()) == sorted([blocks[0][0], blocks[2][0]])
    st = reopened.stats()
    assert (st.blocks, st.bytes_used) == (2, 2 * 700)
    assert store.put(gone_cid, gone) is True  # it can be stored again
    assert Blockstore(tmp_path).get(gone_cid) == gone


def test_erasure_interrupted_by_a_crash_is_finished_when_opening(tmp_path: Path) -> None:
    # Prepare
    root, disk = tmp_path / "store", tmp_path / "disk-at-crash"
    store = _CrashingStore(root, disk, at="before erasing")
    blocks = [_sealed(i) for i in range(4)]
    store.put_many(list(blocks))
    doomed = blocks[1:3]
    # Execute: the rows are gone, the bytes not yet
    with pytest.raises(_Crash):
        store.delete_many([c for c, _ in doomed])
    assert all(d in _pack_bytes(disk) for _, d in doomed)
    after_crash = Blockstore(disk)
    # Assert: opening erased them; nothing is pending any more
    raw = _pack_bytes(disk)
    assert not any(d in raw for _, d in doomed)
    assert not any(after_crash.has(c) for c, _ in doomed)
    assert after_crash.get(blocks[0][0]) == blocks[0][1]
    assert after_crash.get(blocks[3][0]) == blocks[3][1]
    assert (after_crash.stats().blocks, after_crash.stats().bytes_used) == (2, 2 * 700)
    after_crash.close()
    with sqlite3.connect(disk / "packs" / "index.db") as db:
        assert db.execute("SELECT COUNT(*) FROM erasing").fetchone() == (0,)
    db.close()
    # the store that raised does not show them either
    assert not any(store.has(c) for c, _ in doomed)


def test_small_block_files_from_before_packs_still_work(tmp_path: Path) -> None:
    # Prepare: a node upgraded from the one-file-per-block layout
    old_cid, old = _sealed(1)
    path = _flatfs_path(tmp_path, old_cid)
    path.parent.mkdir(parents=True)
    path.write_bytes(old)
    # Execute
    store = Blockstore(tmp_path)
    # Assert: read, listed, sized and counted as before
    assert store.has(old_cid) and store.get(old_cid) == old
    assert store.size(old_cid) == len(old)
    assert store.path_of(old_cid) == path
    assert store.location(old_cid) == (path, 0, len(old))
    new_cid, new = _sealed(2)
    store.put(new_cid, new)
    assert sorted(store.keys()) == sorted([old_cid, new_cid])
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (2, 2 * 700)
    # storing it again adds no second copy to a pack
    assert store.put_many([(old_cid, old)]) == 0
    assert old not in _pack_bytes(tmp_path)
    # and deleting removes the file
    assert store.delete_many([old_cid, new_cid]) == 2
    assert not path.exists()
    reopened = Blockstore(tmp_path)
    assert not reopened.has(old_cid) and not reopened.has(new_cid)
    assert reopened.stats().blocks == 0


def test_concurrent_put_many_get_and_delete_from_threads(tmp_path: Path) -> None:
    # Prepare: blocks held from the start (some to be deleted while they are read), and
    # batches that writers store, overlapping each other
    store = Blockstore(tmp_path, fsync=True)
    kept = [_sealed(i) for i in range(100)]
    doomed = [_sealed(i) for i in range(100, 200)]
    store.put_many(kept + doomed)
    batches = [[_sealed(1000 + (40 * w + i) % 150) for i in range(60)] for w in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        rng = random.Random(threading.get_ident())
        while not stop.is_set():
            cid, data = rng.choice(kept)
            assert store.get(cid) == data
            cid, data = rng.choice(doomed)
            with contextlib.suppress(NotFoundError):  # the right bytes or none, never zeros
                assert store.get(cid) == data

    def write(batch: list[tuple[Cid, bytes]]) -> None:
        store.put_many(list(batch))

    def delete() -> None:
        for i in range(0, len(doomed), 10):
            store.delete_many(c for c, _ in doomed[i : i + 10])

    def run(fn: object, *args: object) -> threading.Thread:
        def guarded() -> None:
            try:
                fn(*args)  # type: ignore[operator]
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=guarded)
        t.start()
        return t

    # Execute
    readers = [run(read) for _ in range(3)]
    workers = [run(write, b) for b in batches] + [run(delete)]
    for t in workers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    # Assert: every written block once, the doomed ones gone, counters match a reopen
    assert errors == []
    written = {c: d for batch in batches for c, d in batch}
    for cid, data in [*kept, *written.items()]:
        assert store.get(cid) == data
    assert not any(store.has(c) for c, _ in doomed)
    st = store.stats()
    assert (st.blocks, st.bytes_used) == (len(kept) + len(written), 700 * (100 + len(written)))
    reopened = Blockstore(tmp_path).stats()
    assert (reopened.blocks, reopened.bytes_used) == (st.blocks, st.bytes_used)
    assert not any(d in _pack_bytes(tmp_path) for _, d in doomed)


def test_a_read_overtaken_by_an_erasure_never_returns_the_erased_bytes(tmp_path: Path) -> None:
    # Prepare: a get that finds the index row, then waits while the block is erased
    store = Blockstore(tmp_path)
    cid, data = _sealed(1)
    store.put(cid, data)
    packs = store._packs
    real_read = packs.read

    def read_after_erasure(loc: blockstore._Loc) -> bytes | None:
        eraser = threading.Thread(target=store.delete, args=(cid,))
        eraser.start()
        eraser.join()
        return real_read(loc)

    packs.read = read_after_erasure  # type: ignore[method-assign]
    # Execute / Assert: the read notices and reports the block absent
    with pytest.raises(NotFoundError):
        store.get(cid)
    assert not store.has(cid)
