"""CAR v1 tests: byte-identical vector exports, round trips, hostile input."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID as MfCid

from medmesh.errors import BlockMismatchError, InvalidInputError
from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes, encode_header, export_car, read_car, write_car
from medmesh.storage.cid import DAG_PB, IDENTITY, RAW, Cid
from medmesh.storage.exporter import export_file
from medmesh.storage.importer import KUBO_V0, ImportParams, import_bytes, make_leaf
from medmesh.storage.unixfs import encode_varint
from tests.unit.storage.test_importer import VECTOR_PARAMS, vector_dag


def _read_all(raw: bytes, **kw: Any) -> tuple[list[Cid], list[Block]]:
    roots, blocks = read_car(io.BytesIO(raw), **kw)
    return roots, list(blocks)


def _section(cid_bytes: bytes, data: bytes) -> bytes:
    return encode_varint(len(cid_bytes) + len(data)) + cid_bytes + data


def _header(obj: object) -> bytes:
    enc = dag_cbor.encode(obj)
    return encode_varint(len(enc)) + enc


# -- vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTOR_PARAMS)
def test_vector_car(vector: dict[str, Any]) -> None:
    root, blocks = vector_dag(vector["file"], vector["profile"])
    out = io.BytesIO()
    n = export_car(root, blocks.__getitem__, out)
    raw = out.getvalue()
    assert n == len(raw) == vector["car_v1_dfs_size"]
    assert hashlib.sha256(raw).hexdigest() == vector["car_v1_dfs_sha256"]

    roots, it = read_car(io.BytesIO(raw))
    assert roots == [root]
    read = [b.cid for b in it]
    assert len(read) == len(set(read)) == len(blocks)  # each block once
    assert set(read) == set(blocks)  # and verified against its CID by read_car


def test_empty_file_car_bytes() -> None:
    leaf = make_leaf(b"")
    raw = car_bytes([leaf.cid], [leaf])
    header = dag_cbor.encode({"roots": [MfCid.decode(bytes(leaf.cid))], "version": 1})
    assert raw[:1] == bytes([len(header)]) and raw[1 : 1 + len(header)] == header
    assert header.startswith(b"\xa2eroots")  # canonical order: roots before version
    assert raw[1 + len(header) :] == b"\x24" + bytes(leaf.cid)
    assert len(raw) == 96


def test_v0_root_round_trips_through_header() -> None:
    root, blocks = import_bytes(b"hello world\n", KUBO_V0)
    raw = car_bytes([root], [Block(c, d) for c, d in blocks.items()])
    roots, read = _read_all(raw)
    assert roots == [root] and str(roots[0]).startswith("Qm")
    assert read == [Block(root, blocks[root])]


# -- round trips -----------------------------------------------------------------------------

block_data = st.binary(max_size=300)
codecs = st.sampled_from([(RAW, 1), (DAG_PB, 1), (DAG_PB, 0)])


@settings(max_examples=80, deadline=None)
@given(
    items=st.lists(st.tuples(block_data, codecs), max_size=12),
    dup_every=st.integers(1, 4),
    n_roots=st.integers(0, 3),
)
def test_write_read_round_trip(
    items: list[tuple[bytes, tuple[int, int]]], dup_every: int, n_roots: int
) -> None:
    blocks = [Block(Cid.of(d, codec, version=v), d) for d, (codec, v) in items]
    with_dups = blocks + blocks[::dup_every]
    roots = [b.cid for b in blocks[:n_roots]]
    out = io.BytesIO()
    n = write_car(roots, with_dups, out)
    raw = out.getvalue()
    assert n == len(raw)
    read_roots, read = _read_all(raw)
    assert read_roots == roots
    unique = list(dict.fromkeys(blocks))  # first occurrence of each CID, in order
    assert read == unique


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=1500), chunk_size=st.integers(1, 100))
def test_dag_round_trips_through_car(data: bytes, chunk_size: int) -> None:
    params = ImportParams(chunk_size=chunk_size, max_links=3)
    root, blocks = import_bytes(data, params)
    raw_car = io.BytesIO()
    export_car(root, blocks.__getitem__, raw_car)
    roots, read = read_car(io.BytesIO(raw_car.getvalue()))
    got = {b.cid: b.data for b in read}
    assert roots == [root] and got == blocks
    assert b"".join(export_file(root, got.__getitem__)) == data


# -- hostile input ---------------------------------------------------------------------------


def _sample_car() -> tuple[bytes, list[Block], list[int]]:
    """A small multi-block CAR and the offsets at which its sections start."""
    root, blocks = import_bytes(bytes(range(256)) * 4, ImportParams(chunk_size=300))
    out = io.BytesIO()
    export_car(root, blocks.__getitem__, out)
    raw = out.getvalue()
    roots, it = read_car(io.BytesIO(raw))
    ordered = list(it)
    boundaries = [len(encode_header(roots))]
    for b in ordered:
        boundaries.append(boundaries[-1] + len(_section(bytes(b.cid), b.data)))
    assert boundaries[-1] == len(raw)
    return raw, ordered, boundaries


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_block_in_car(where: str) -> None:
    raw, _blocks, bounds = _sample_car()
    i = {"first": 0, "middle": len(bounds) // 2, "last": len(bounds) - 2}[where]
    pos = bounds[i + 1] - 1  # last data byte of section i
    bad = raw[:pos] + bytes([raw[pos] ^ 0x40]) + raw[pos + 1 :]
    _roots, it = read_car(io.BytesIO(bad))
    got = []
    with pytest.raises(BlockMismatchError):
        for b in it:
            got.append(b)
    assert len(got) == i  # everything before the bad block was delivered, nothing after


def test_truncated_car_at_every_offset() -> None:
    raw, blocks, bounds = _sample_car()
    for cut in range(len(raw)):
        if cut in bounds:
            _roots, got = _read_all(raw[:cut])  # a clean cut between sections is a valid CAR
            assert got == blocks[: bounds.index(cut)]
            continue
        with pytest.raises(InvalidInputError):
            _read_all(raw[:cut])


def test_tampered_cid_in_car() -> None:
    leaf = make_leaf(b"data")
    other = Cid.of(b"other")
    raw = encode_header([leaf.cid]) + _section(bytes(other), leaf.data)
    with pytest.raises(BlockMismatchError):
        _read_all(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty input"),
        pytest.param(b"\x00", id="zero-length header"),
        pytest.param(b"\x05\xa0", id="header shorter than its length"),
        pytest.param(b"\x80", id="truncated header varint"),
        pytest.param(b"\xff" * 11, id="over-long header varint"),
        pytest.param(b"\x03abc", id="header not CBOR"),
        pytest.param(_header([1]), id="header not a map"),
        pytest.param(_header({"version": 1}), id="no roots"),
        pytest.param(_header({"roots": [], "version": 2}), id="CARv2 pragma"),
        pytest.param(_header({"roots": [], "version": 3}), id="version 3"),
        pytest.param(_header({"roots": [], "version": 1, "extra": 0}), id="extra key"),
        pytest.param(_header({"roots": "x", "version": 1}), id="roots not a list"),
        pytest.param(_header({"roots": [b"\x01"], "version": 1}), id="root not a CID"),
        pytest.param(
            _header(
                {"roots": [MfCid("base32", 1, "raw", ("sha2-512", b"\x00" * 64))], "version": 1}
            ),
            id="root with unsupported hash",
        ),
        pytest.param(_header({"roots": [], "version": True}), id="version not an int"),
    ],
)
def test_malformed_header(raw: bytes) -> None:
    with pytest.raises(InvalidInputError):
        _read_all(raw)


def test_carv2_is_refused_clearly() -> None:
    pragma = bytes.fromhex("0aa16776657273696f6e02")  # the CARv2 pragma from the spec
    with pytest.raises(InvalidInputError, match="CARv2"):
        read_car(io.BytesIO(pragma + bytes(40)))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00", id="zero-length section"),
        pytest.param(encode_varint(9 << 20), id="section larger than the limit"),
        pytest.param(b"\xff" * 10 + b"\x01", id="over-long section varint"),
        pytest.param(b"\x80", id="truncated section varint"),
        pytest.param(_section(b"\x02\x55\x12\x20" + bytes(32), b""), id="CID version 2"),
        pytest.param(
            _section(b"\x01\x55\x12\x20" + bytes(8), b""), id="CID digest runs past the section"
        ),
        pytest.param(
            _section(b"\x01\x55\x13\x40" + bytes(64), b""), id="unsupported hash function"
        ),
        pytest.param(_section(b"\x01\x55", b""), id="section cut inside the CID"),
    ],
)
def test_malformed_section(body: bytes) -> None:
    raw = encode_header([]) + body
    with pytest.raises(InvalidInputError):
        _read_all(raw)


def test_section_limit_is_configurable() -> None:
    leaf = make_leaf(bytes(1000))
    raw = car_bytes([leaf.cid], [leaf])
    assert _read_all(raw, max_section_size=1036)[1] == [leaf]
    with pytest.raises(InvalidInputError):
        _read_all(raw, max_section_size=1035)
    with pytest.raises(InvalidInputError):
        _read_all(raw, max_header_size=10)


def test_identity_block_in_car() -> None:
    inline = Cid.of(b"hi", RAW, IDENTITY)
    raw = car_bytes([inline], [Block(inline, b"hi")])
    assert _read_all(raw) == ([inline], [Block(inline, b"hi")])
    with pytest.raises(BlockMismatchError):
        _read_all(car_bytes([inline], [Block(inline, b"ho")]))
