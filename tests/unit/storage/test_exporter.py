"""Exporter tests: vectors, round trips, and DAGs that lie."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import BlockMismatchError, IntegrityError, InvalidInputError, NotFoundError
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_CBOR, DAG_PB, IDENTITY, RAW, Cid
from medmesh.storage.exporter import decode_file_node, export_file, leaf_cids, walk_dfs
from medmesh.storage.importer import KUBO_V0, KUBO_V1_RAW, ImportParams, import_bytes
from medmesh.storage.unixfs import (
    DataType,
    PBLink,
    PBNode,
    UnixFSData,
    decode_pbnode,
    encode_pbnode,
    encode_unixfs,
)
from tests.unit.storage.test_importer import VECTOR_PARAMS, vector_dag, vector_file


class Store:
    """A dict of blocks that counts fetches and can be made to lie."""

    def __init__(self, blocks: dict[Cid, bytes]) -> None:
        self.blocks = dict(blocks)
        self.fetched: list[Cid] = []

    def get(self, cid: Cid) -> bytes:
        self.fetched.append(cid)
        try:
            return self.blocks[cid]
        except KeyError:
            raise NotFoundError(f"no block {cid}") from None

    def put(self, data: bytes, codec: int = DAG_PB, version: int = 1) -> Cid:
        cid = Cid.of(data, codec, version=version)
        self.blocks[cid] = data
        return cid


def _file_node(links: list[tuple[Cid, int, int]], ufs: UnixFSData) -> bytes:
    return encode_pbnode(PBNode(tuple(PBLink(c, "", t) for c, _, t in links), encode_unixfs(ufs)))


def _interior(store: Store, children: list[tuple[Cid, int]], **kw: Any) -> Cid:
    sizes = tuple(s for _, s in children)
    ufs = UnixFSData(
        DataType.FILE,
        filesize=kw.pop("filesize", sum(sizes)),
        blocksizes=kw.pop("blocksizes", sizes),
        **kw,
    )
    return store.put(_file_node([(c, s, s) for c, s in children], ufs))


# -- vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_export(vector: dict[str, Any]) -> None:
    root, blocks = vector_dag(vector["file"], vector["profile"])
    store = Store(blocks)
    h = hashlib.sha256()
    n = 0
    for piece in export_file(root, store.get):
        h.update(piece)
        n += len(piece)
    assert n == vector["size"]
    assert h.hexdigest() == hashlib.sha256(vector_file(vector["file"])).hexdigest()

    walked = list(walk_dfs(root, store.get))
    assert walked[0].cid == root
    assert len(walked) == len({b.cid for b in walked}) == vector["unique_blocks"]
    assert sum(len(b.data) for b in walked) == vector["unique_block_bytes"]

    store.fetched.clear()
    leaves = list(leaf_cids(root, store.get))
    assert len(leaves) == vector["leaf_refs"]
    assert sum(size for _, size in leaves) == vector["size"]
    assert all(blocks[c] for c, _ in leaves) or vector["size"] == 0
    if vector["profile"] == "kubo-v1-raw" and vector["depth"] > 0:
        # only interior nodes were read
        assert all(c.codec == DAG_PB for c in store.fetched)
        assert len(store.fetched) == vector["unique_blocks"] - len({c for c, _ in leaves})


# -- round trips -----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=2000), st.integers(0, 3000).map(bytes)),
    chunk_size=st.integers(1, 200),
    max_links=st.integers(2, 7),
    profile=st.sampled_from(["v1-raw", "v1-pb", "v0"]),
)
def test_import_export_round_trip(
    data: bytes, chunk_size: int, max_links: int, profile: str
) -> None:
    params = ImportParams(
        chunk_size=chunk_size,
        max_links=max_links,
        raw_leaves=profile == "v1-raw",
        cid_version=0 if profile == "v0" else 1,
    )
    root, blocks = import_bytes(data, params)
    store = Store(blocks)
    assert b"".join(export_file(root, store.get)) == data
    leaves = list(leaf_cids(root, store.get))
    assert sum(s for _, s in leaves) == len(data)
    assert b"".join(b"".join(export_file(c, store.get)) for c, _ in leaves) == data
    walked = [b.cid for b in walk_dfs(root, store.get)]
    assert set(walked) == set(blocks) and len(walked) == len(blocks)


# -- faults ----------------------------------------------------------------------------------


def _tamper(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:] if data else b"\x00"


@pytest.mark.parametrize("params", [KUBO_V1_RAW, KUBO_V0], ids=["v1-raw", "v0"])
@pytest.mark.parametrize("which", ["root", "first-leaf", "last-leaf"])
def test_tampered_block_is_detected(params: ImportParams, which: str) -> None:
    data = vector_file("prng_1000000")
    root, blocks = import_bytes(data, params)
    leaves = [link.hash for link in decode_pbnode(blocks[root]).links]
    target = {"root": root, "first-leaf": leaves[0], "last-leaf": leaves[-1]}[which]
    store = Store(blocks)
    store.blocks[target] = _tamper(blocks[target])
    with pytest.raises(BlockMismatchError):
        b"".join(export_file(root, store.get))
    with pytest.raises(BlockMismatchError):
        list(walk_dfs(root, store.get))


def test_tampered_single_block_file() -> None:
    root, _ = import_bytes(b"hello")
    with pytest.raises(BlockMismatchError):
        list(export_file(root, lambda c: b"hellO"))


def test_missing_block_propagates() -> None:
    root, blocks = import_bytes(bytes(range(200)) * 10, ImportParams(chunk_size=100))
    store = Store({root: blocks[root]})
    with pytest.raises(NotFoundError):
        list(export_file(root, store.get))


def test_blocksizes_that_lie_about_a_child() -> None:
    store = Store({})
    a, b = store.put(b"aaaa", RAW), store.put(b"bb", RAW)
    # sums are consistent (filesize 6) but the first child really holds 4 bytes, not 3
    root = _interior(store, [(a, 3), (b, 3)])
    with pytest.raises(IntegrityError, match="parent says 3"):
        b"".join(export_file(root, store.get))


def test_filesize_that_disagrees_with_blocksizes() -> None:
    store = Store({})
    a = store.put(b"aaaa", RAW)
    root = _interior(store, [(a, 4)], filesize=5)
    with pytest.raises(IntegrityError, match="filesize 5"):
        list(export_file(root, store.get))


def test_blocksizes_count_differs_from_links() -> None:
    store = Store({})
    a = store.put(b"aaaa", RAW)
    root = _interior(store, [(a, 4)], blocksizes=(4, 0), filesize=4)
    with pytest.raises(IntegrityError, match="blocksizes"):
        list(export_file(root, store.get))


def test_lying_interior_child() -> None:
    """A lie one level down (an interior child claiming more bytes) is caught too."""
    store = Store({})
    a = store.put(b"aaaa", RAW)
    mid = _interior(store, [(a, 4)])
    root = _interior(store, [(mid, 5)])
    with pytest.raises(IntegrityError):
        list(export_file(root, store.get))
    with pytest.raises(IntegrityError):
        list(leaf_cids(root, store.get))


@pytest.mark.parametrize(
    ("ufs", "links"),
    [
        (UnixFSData(DataType.DIRECTORY), False),
        (UnixFSData(DataType.SYMLINK, data=b"/etc/passwd"), False),
        (UnixFSData(DataType.HAMT_SHARD, fanout=256), False),
        (UnixFSData(DataType.RAW, data=b"x", filesize=1, blocksizes=(4,)), True),
    ],
    ids=["directory", "symlink", "hamt", "raw-with-links"],
)
def test_non_file_nodes_are_rejected(ufs: UnixFSData, links: bool) -> None:
    store = Store({})
    kids = [(store.put(b"aaaa", RAW), 4, 4)] if links else []
    root = store.put(_file_node(kids, ufs))
    with pytest.raises(InvalidInputError):
        list(export_file(root, store.get))


def test_node_without_unixfs_data_is_rejected() -> None:
    store = Store({})
    root = store.put(encode_pbnode(PBNode((PBLink(store.put(b"x", RAW), "", 1),))))
    with pytest.raises(InvalidInputError, match="no UnixFS data"):
        list(export_file(root, store.get))


def test_malformed_protobuf_in_dag_is_rejected() -> None:
    store = Store({})
    root = store.put(b"\x0a\x05ab")  # Data field runs past the end, yet hashes fine
    with pytest.raises(InvalidInputError):
        list(export_file(root, store.get))
    with pytest.raises(InvalidInputError):
        list(walk_dfs(root, store.get))
    bad_ufs = store.put(encode_pbnode(PBNode(data=b"\x08\x09")))  # UnixFS Type 9
    with pytest.raises(InvalidInputError):
        list(export_file(bad_ufs, store.get))


def test_unsupported_codec_is_rejected() -> None:
    store = Store({})
    root = store.put(b"\xa0", DAG_CBOR)
    with pytest.raises(InvalidInputError):
        list(export_file(root, store.get))
    with pytest.raises(InvalidInputError):
        list(walk_dfs(root, store.get))


# -- other shapes ----------------------------------------------------------------------------


def test_identity_cids_are_never_fetched() -> None:
    inline = Cid.of(b"inline!", RAW, IDENTITY)
    assert b"".join(export_file(inline, lambda c: pytest.fail("fetched"))) == b"inline!"
    store = Store({})
    real = store.put(b"tail", RAW)
    root = _interior(store, [(inline, 7), (real, 4)])
    assert b"".join(export_file(root, store.get)) == b"inline!tail"
    assert inline not in store.fetched
    assert list(leaf_cids(root, store.get)) == [(inline, 7), (real, 4)]
    assert [b.cid for b in walk_dfs(root, store.get)] == [root, inline, real]
    lying = _interior(store, [(inline, 6)])
    with pytest.raises(IntegrityError):
        list(leaf_cids(lying, store.get))


def test_identity_dag_pb_root() -> None:
    node = encode_pbnode(PBNode(data=encode_unixfs(UnixFSData(DataType.FILE, b"hi", 2))))
    root = Cid.of(node, DAG_PB, IDENTITY)
    assert b"".join(export_file(root, lambda c: pytest.fail("fetched"))) == b"hi"


def test_legacy_raw_type_leaves_and_inline_data_with_links() -> None:
    """Older go-ipfs DAGs: UnixFS Raw leaves, and trickle-style nodes with data and links."""
    store = Store({})
    leaf1 = store.put(
        encode_pbnode(PBNode(data=encode_unixfs(UnixFSData(DataType.RAW, b"BB", 2)))), version=0
    )
    leaf2 = store.put(
        encode_pbnode(PBNode(data=encode_unixfs(UnixFSData(DataType.RAW, b"C")))), version=0
    )
    ufs = UnixFSData(DataType.FILE, data=b"A", filesize=4, blocksizes=(2, 1))
    root = store.put(_file_node([(leaf1, 2, 20), (leaf2, 1, 20)], ufs), version=0)
    assert b"".join(export_file(root, store.get)) == b"ABBC"
    assert list(leaf_cids(root, store.get)) == [(root, 1), (leaf1, 2), (leaf2, 1)]
    node = decode_file_node(root, store.blocks[root])
    assert node.size == 4 and node.data == b"A" and len(node.children) == 2


def test_walk_dfs_order_and_dedup() -> None:
    params = ImportParams(chunk_size=2, max_links=2)
    root, blocks = import_bytes(b"aaaaaabb", params)  # leaves aa aa aa bb
    walked = list(walk_dfs(root, Store(blocks).get))
    assert walked[0] == Block(root, blocks[root])
    assert [b.data for b in walked if b.cid.codec == RAW] == [b"aa", b"bb"]
    # the same order as a recursive pre-order walk that skips blocks already seen
    expected: list[Cid] = []

    def visit(cid: Cid) -> None:
        if cid in expected:
            return
        expected.append(cid)
        if cid.codec == DAG_PB:
            for link in decode_pbnode(blocks[cid]).links:
                visit(link.hash)

    visit(root)
    assert [b.cid for b in walked] == expected
    assert len(expected) == 5  # root, [aa aa], [aa bb], aa, bb
