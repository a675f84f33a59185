"""Importer tests: the reference vectors, the balanced layout, the push builder, chunking.

This module also holds the helpers that regenerate the vector input files; test_exporter.py
and test_car.py import them from here.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InvalidInputError
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_PB, RAW, Cid
from medmesh.storage.importer import (
    KUBO_V0,
    KUBO_V1_RAW,
    DagBuilder,
    ImportParams,
    import_bytes,
    import_chunks,
    import_file,
    leaf_block_size,
    make_leaf,
    root_cid,
)
from medmesh.storage.unixfs import (
    DataType,
    PBLink,
    PBNode,
    UnixFSData,
    decode_pbnode,
    decode_unixfs,
    encode_pbnode,
    encode_unixfs,
)

# -- vector helpers (shared with test_exporter.py and test_car.py) ---------------------------

VECTORS_PATH = Path(__file__).resolve().parents[2] / "data" / "ipfs-unixfs-vectors.json"
VECTOR_DOC: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
VECTORS: list[dict[str, Any]] = VECTOR_DOC["vectors"]
FILES: dict[str, dict[str, Any]] = {f["name"]: f for f in VECTOR_DOC["files"]}
PROFILES = {"kubo-v1-raw": KUBO_V1_RAW, "kubo-v0": KUBO_V0}


def vector_id(v: dict[str, Any]) -> str:
    return f"{v['file']}-{v['profile']}"


@cache
def _prng_stream(seed: str) -> bytes:
    """The longest PRNG stream any file with this seed needs (generated once per run)."""
    size = max(f["size"] for f in FILES.values() if f["content"].get("seed") == seed)
    s = seed.encode("ascii")
    sha = hashlib.sha256
    return b"".join([sha(s + i.to_bytes(8, "big")).digest() for i in range(size // 32 + 1)])


def vector_file(name: str) -> bytes:
    """Regenerate a vector's input file from the JSON's generator description."""
    spec = FILES[name]
    content = spec["content"]
    if content["kind"] == "prng":
        data = _prng_stream(content["seed"])[: spec["size"]]
    elif content["kind"] == "zeros":
        data = bytes(spec["size"])
    elif content["kind"] == "literal":
        data = content["utf8"].encode("utf-8")
    else:
        raise AssertionError(f"unknown generator {content['kind']}")
    assert len(data) == spec["size"]
    return data


@lru_cache(maxsize=2)
def vector_dag(file: str, profile: str) -> tuple[Cid, dict[Cid, bytes]]:
    return import_bytes(vector_file(file), PROFILES[profile])


def dag_stats(root: Cid, blocks: dict[Cid, bytes]) -> tuple[int, int, int]:
    """(depth, cumulative DAG size, leaf references) computed from the blocks alone.

    Also asserts that every link's Tsize is the cumulative size of the child subtree.
    """
    memo: dict[Cid, tuple[int, int, int]] = {}

    def visit(cid: Cid) -> tuple[int, int, int]:
        if cid in memo:
            return memo[cid]
        data = blocks[cid]
        links = decode_pbnode(data).links if cid.codec == DAG_PB else ()
        if not links:
            result = (0, len(data), 1)
        else:
            kids = [visit(link.hash) for link in links]
            for link, kid in zip(links, kids, strict=True):
                assert link.tsize == kid[1]
                assert link.name == ""
            result = (
                1 + max(k[0] for k in kids),
                len(data) + sum(k[1] for k in kids),
                sum(k[2] for k in kids),
            )
        memo[cid] = result
        return result

    return visit(root)


VECTOR_PARAMS = [pytest.param(v, id=vector_id(v)) for v in VECTORS]


def test_vectors_cover_both_profiles_and_all_files() -> None:
    assert len(VECTORS) == 24
    assert {v["profile"] for v in VECTORS} == set(PROFILES)
    assert {v["file"] for v in VECTORS} == set(FILES)


@pytest.mark.parametrize("name", sorted(FILES))
def test_vector_inputs_regenerate(name: str) -> None:
    assert hashlib.sha256(vector_file(name)).hexdigest() == FILES[name]["sha256"]


# -- the vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_dag(vector: dict[str, Any]) -> None:
    root, blocks = vector_dag(vector["file"], vector["profile"])
    assert str(root) == vector["cid"]
    assert Cid.parse(vector["cid"]) == root
    assert len(blocks) == vector["unique_blocks"]
    assert sum(len(b) for b in blocks.values()) == vector["unique_block_bytes"]
    for cid, data in blocks.items():
        assert cid.matches(data)
    root_block = blocks[root]
    assert len(root_block) == vector["root_block_size"]
    assert hashlib.sha256(root_block).hexdigest() == vector["root_block_sha256"]
    depth, dag_size, leaf_refs = dag_stats(root, blocks)
    assert (depth, dag_size, leaf_refs) == (
        vector["depth"],
        vector["dag_size"],
        vector["leaf_refs"],
    )
    expected_ufs = vector["root_unixfs"]
    if expected_ufs is None:
        assert root.codec == RAW
    else:
        node = decode_pbnode(root_block)
        assert node.data is not None
        ufs = decode_unixfs(node.data)
        assert ufs.type == DataType.FILE == DataType[expected_ufs["type"].upper()]
        assert ufs.filesize == expected_ufs["fileSize"] == vector["size"]
        assert len(ufs.blocksizes) == expected_ufs["blockSizes"]
        assert len(node.links) == expected_ufs["links"]
        assert encode_pbnode(node) == root_block  # the codec reproduces the reference bytes


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_root_cid_and_threaded_builder(vector: dict[str, Any]) -> None:
    data = vector_file(vector["file"])
    params = PROFILES[vector["profile"]]
    assert str(root_cid(io.BytesIO(data), params)) == vector["cid"]

    # The push builder, fed by a thread pool that hashes the leaves (as the client does).
    size = params.chunk_size
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    builder = DagBuilder(params)
    leaf_cids: set[Cid] = set()
    interior: list[Block] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        leaves = pool.map(lambda c: make_leaf(c, params), chunks)
        for chunk, leaf in zip(chunks, leaves, strict=True):
            leaf_cids.add(leaf.cid)
            interior += builder.add_leaf(leaf.cid, len(chunk))
    root, rest = builder.finish()
    interior += rest
    assert str(root) == vector["cid"]
    assert len(leaf_cids | {b.cid for b in interior}) == vector["unique_blocks"]
    if interior:
        assert interior[-1].cid == root
        assert hashlib.sha256(interior[-1].data).hexdigest() == vector["root_block_sha256"]
    else:
        assert leaf_cids == {root}


# -- layout details discovered from the vectors ----------------------------------------------


def test_v0_leaves_are_unixfs_file_nodes() -> None:
    leaf = make_leaf(b"", KUBO_V0)
    assert leaf.data == bytes.fromhex("0a0408021800")  # PBNode{Data: {Type: File, filesize: 0}}
    assert str(leaf.cid) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    one = make_leaf(b"x", KUBO_V0)
    assert one.data == bytes.fromhex("0a07080212017818" + "01")
    ufs = decode_unixfs(decode_pbnode(one.data).data or b"")
    assert ufs == UnixFSData(DataType.FILE, data=b"x", filesize=1)


def test_empty_file_v1_is_empty_raw_block() -> None:
    root, blocks = import_bytes(b"")
    assert blocks == {root: b""}
    assert root == Cid.of(b"")


def test_trailing_single_leaf_gets_its_own_parent() -> None:
    params = ImportParams(chunk_size=1, max_links=4)
    root, blocks = import_bytes(b"abcde", params)  # 5 leaves -> [4 leaves] + [1 leaf]
    top = decode_pbnode(blocks[root])
    assert len(top.links) == 2
    first, second = (decode_pbnode(blocks[link.hash]) for link in top.links)
    assert len(first.links) == 4
    assert len(second.links) == 1 and second.links[0].hash == Cid.of(b"e")
    ufs = decode_unixfs(top.data or b"")
    assert ufs.blocksizes == (4, 1) and ufs.filesize == 5
    assert dag_stats(root, blocks)[0] == 2


def _oracle_root(leaves: list[tuple[Cid, int, int]], params: ImportParams) -> tuple[Cid, int]:
    """Reference balanced layout, written as the JS importer does it: batch level by level."""
    if len(leaves) == 1:
        return leaves[0][0], 0
    level = leaves
    made = 0
    while True:
        parents = []
        for i in range(0, len(level), params.max_links):
            group = level[i : i + params.max_links]
            ufs = UnixFSData(
                DataType.FILE,
                filesize=sum(g[1] for g in group),
                blocksizes=tuple(g[1] for g in group),
            )
            raw = encode_pbnode(
                PBNode(tuple(PBLink(g[0], "", g[2]) for g in group), encode_unixfs(ufs))
            )
            cid = Cid.of(raw, DAG_PB, version=params.cid_version)
            parents.append((cid, sum(g[1] for g in group), len(raw) + sum(g[2] for g in group)))
            made += 1
        if len(parents) == 1:
            return parents[0][0], made
        level = parents


@settings(max_examples=60, deadline=None)
@given(
    n_leaves=st.integers(1, 300),
    last_size=st.integers(1, 7),
    max_links=st.integers(2, 9),
    v0=st.booleans(),
)
def test_builder_matches_level_by_level_layout(
    n_leaves: int, last_size: int, max_links: int, v0: bool
) -> None:
    params = ImportParams(
        chunk_size=7, max_links=max_links, raw_leaves=not v0, cid_version=0 if v0 else 1
    )
    sizes = [7] * (n_leaves - 1) + [last_size]
    leaves = []
    for i, size in enumerate(sizes):
        cid = make_leaf(bytes([i % 256]) * size, params).cid
        leaves.append((cid, size, leaf_block_size(size, params)))
    builder = DagBuilder(params)
    early: list[Block] = []
    for cid, size, _ in leaves:
        early += builder.add_leaf(cid, size)
    root, rest = builder.finish()
    expected_root, expected_count = _oracle_root(leaves, params)
    assert root == expected_root
    assert len(early) + len(rest) == expected_count
    # every full first-level group is emitted before finish()
    assert len(early) >= len(sizes) // max_links
    if len(sizes) > 1:
        assert (early + rest)[-1].cid == root


def test_builder_emits_full_nodes_early() -> None:
    params = ImportParams(chunk_size=1, max_links=3)
    builder = DagBuilder(params)
    out = [builder.add_leaf(make_leaf(bytes([i]), params).cid, 1) for i in range(9)]
    assert [len(o) for o in out] == [0, 0, 1, 0, 0, 1, 0, 0, 2]  # the 9th completes the root
    root, rest = builder.finish()
    assert rest == [] and root == out[-1][-1].cid


def test_leaf_block_size_matches_make_leaf() -> None:
    for n in (0, 1, 127, 128, 16383, 16384, 262143, 262144):
        chunk = bytes(n)
        for params in (KUBO_V0, KUBO_V1_RAW, ImportParams(raw_leaves=False)):
            assert leaf_block_size(n, params) == len(make_leaf(chunk, params).data)


# -- chunking --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    chunk_size=st.integers(1, 300),
    max_links=st.integers(2, 6),
    v0=st.booleans(),
)
def test_import_chunks_is_independent_of_piece_sizes(
    data: bytes, cuts: list[int], chunk_size: int, max_links: int, v0: bool
) -> None:
    params = ImportParams(
        chunk_size=chunk_size, max_links=max_links, raw_leaves=not v0, cid_version=0 if v0 else 1
    )
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces: list[bytes | bytearray | memoryview] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        piece = data[a:b]
        pieces.append((bytes, bytearray, memoryview)[i % 3](piece))
    pieces.insert(len(pieces) // 2, b"")  # empty pieces are harmless
    one_shot = list(import_chunks([data], params))
    split = list(import_chunks(pieces, params))
    assert split == one_shot
    assert one_shot[-1].cid == root_cid(io.BytesIO(data), params)
    leaves = [b for b in one_shot if b.cid.codec == RAW] if not v0 else []
    if leaves:
        assert b"".join(b.data for b in leaves) == data
        assert all(len(b.data) == chunk_size for b in leaves[:-1])


class _TrickleStream(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        chunk = self._buf.read(min(len(b), 1000))
        b[: len(chunk)] = chunk
        return len(chunk)


class _ReadOnlyStream:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, 777))


@pytest.mark.parametrize("params", [KUBO_V1_RAW, KUBO_V0], ids=["v1-raw", "v0"])
def test_root_cid_handles_short_reads(params: ImportParams) -> None:
    data = vector_file("prng_1000000")
    expected = import_bytes(data, params)[0]
    assert root_cid(_TrickleStream(data), params) == expected  # type: ignore[arg-type]
    assert root_cid(_ReadOnlyStream(data), params) == expected  # type: ignore[arg-type]
    assert root_cid(io.BytesIO(b""), params) == import_bytes(b"", params)[0]


def test_import_file(tmp_path: Path) -> None:
    data = vector_file("prng_1000000")
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    root, blocks = import_bytes(data)
    assert import_file(path) == root
    got: dict[Cid, bytes] = {}
    assert import_file(path, KUBO_V1_RAW, put=lambda b: got.__setitem__(b.cid, b.data)) == root
    assert got == blocks


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": (1 << 20) + 1},
        {"chunk_size": 1.5},
        {"max_links": 1},
        {"cid_version": 2},
        {"cid_version": 0},  # raw leaves cannot be CIDv0
        {"raw_leaves": 1},
    ],
)
def test_import_params_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        ImportParams(**kwargs)


def test_import_params_limits_accepted() -> None:
    assert ImportParams(chunk_size=1 << 20, max_links=2).chunk_size == 1 << 20
    assert ImportParams(raw_leaves=False, cid_version=0) == KUBO_V0


def test_builder_rejects_misuse() -> None:
    builder = DagBuilder(KUBO_V1_RAW)
    with pytest.raises(InvalidInputError):
        builder.finish()  # no leaves
    with pytest.raises(InvalidInputError):
        builder.add_leaf(make_leaf(b"x", KUBO_V0).cid, 1)  # v0 dag-pb leaf in a raw DAG
    with pytest.raises(InvalidInputError):
        builder.add_leaf(Cid.of(b"x"), KUBO_V1_RAW.chunk_size + 1)
    with pytest.raises(InvalidInputError):
        builder.add_leaf(Cid.of(b"x"), -1)
    builder.add_leaf(Cid.of(b"x"), 1)
    full = DagBuilder(ImportParams(chunk_size=1))
    full.add_leaf(Cid.of(b"x"), 1)
    with pytest.raises(InvalidInputError, match="empty leaf"):
        full.add_leaf(Cid.of(b""), 0)  # an empty leaf after data
    builder.finish()
    with pytest.raises(InvalidInputError):
        builder.finish()
    with pytest.raises(InvalidInputError):
        builder.add_leaf(Cid.of(b"y"), 1)
    short = DagBuilder(ImportParams(chunk_size=4))
    short.add_leaf(Cid.of(b"abc"), 3)
    with pytest.raises(InvalidInputError):
        short.add_leaf(Cid.of(b"defg"), 4)  # only the last leaf may be short
    empty = DagBuilder(KUBO_V1_RAW)
    empty.add_leaf(Cid.of(b""), 0)
    with pytest.raises(InvalidInputError):
        empty.add_leaf(Cid.of(b"x"), 1)  # nothing may follow the empty leaf


def test_make_leaf_rejects_oversized_chunk() -> None:
    with pytest.raises(InvalidInputError):
        make_leaf(b"abc", ImportParams(chunk_size=2))


def _gen_pieces(data: bytes, n: int) -> Iterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i : i + n]


def test_import_chunks_is_lazy() -> None:
    """Blocks come out while the input is still being consumed (bounded memory)."""
    consumed = 0

    def pieces() -> Iterator[bytes]:
        nonlocal consumed
        for piece in _gen_pieces(bytes(100_000), 1000):
            consumed += len(piece)
            yield piece

    it = import_chunks(pieces(), ImportParams(chunk_size=1000))
    next(it)
    assert consumed <= 2000
