"""Share manifests: DAG-CBOR encoding (checked against the reference codec) and validation."""

from __future__ import annotations

import dag_cbor
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID as MfCid

from medmesh.errors import BlockMismatchError, InvalidInputError
from medmesh.storage import dagcbor
from medmesh.storage.cid import BLAKE3, Cid
from medmesh.storage.erasure import ErasureParams
from medmesh.storage.manifest import (
    TABLE_STRIPES,
    Manifest,
    ManifestError,
    decode_head,
    decode_manifest,
    decode_table,
    encode_manifest,
)
from medmesh.storage.stripes import encode_stripe_group


def _to_ref(value: object) -> object:
    """The same value with CIDs as multiformats CIDs, for the reference codec."""
    if isinstance(value, Cid):
        return MfCid.decode(bytes(value))
    if isinstance(value, list):
        return [_to_ref(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_ref(v) for k, v in value.items()}
    return value


ipld = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.binary(min_size=32, max_size=32).map(lambda d: Cid(1, 0x55, 0x12, d)),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=200)
@given(ipld)
def test_dagcbor_encoding_is_byte_identical_to_the_reference(value: object) -> None:
    ours = dagcbor.encode(value)
    assert ours == dag_cbor.encode(_to_ref(value))  # type: ignore[arg-type]
    assert dagcbor.decode(ours) == value


@pytest.mark.parametrize("bad", [b"", b"\xff", b"\xc1\x00", b"\xd8\x2b\x41\x00", b"\x9f"])
def test_dagcbor_refuses_malformed_input_and_foreign_tags(bad: bytes) -> None:
    with pytest.raises(InvalidInputError):
        dagcbor.decode(bad)


def make_manifest(stripes: int, k: int = 3, n: int = 5) -> Manifest:
    leaves = [bytes([i % 256]) * 1000 for i in range(stripes * k - 1)]
    encoded = encode_stripe_group(0, leaves, ErasureParams(k, n), 256)
    return Manifest(
        object=Cid.of(b"object"),
        size=sum(len(x) for x in leaves),
        chunk_size=262144,
        max_links=174,
        k=k,
        n=n,
        proof_segment=256,
        dag=(Cid.of(b"interior"),),
        stripes=tuple(st.row() for st in encoded),
    )


@pytest.mark.parametrize("stripes", [1, 7, TABLE_STRIPES + 3])
def test_round_trip_across_tables(stripes: int) -> None:
    m = make_manifest(stripes)
    root, blocks = encode_manifest(m)
    assert blocks[-1].cid == root
    tables = [b.data for b in blocks[:-1]]
    assert len(tables) == -(-stripes // TABLE_STRIPES)
    for b in blocks:
        assert len(b.data) < 1 << 20  # every block well under IPFS's 1 MiB
        b.cid.verify(b.data)
    back = decode_manifest(blocks[-1].data, tables)
    assert back.stripes == m.stripes and back.object == m.object and back.k == 3
    last = back.stripes[-1]
    assert last.shares[2] is None  # the short last stripe's virtual share
    assert all(c is not None and c.hash_code == BLAKE3 for c in last.shares[3:])


def test_tampered_table_is_refused() -> None:
    _, blocks = encode_manifest(make_manifest(3))
    table = bytearray(blocks[0].data)
    table[-5] ^= 1
    with pytest.raises(BlockMismatchError):
        decode_manifest(blocks[-1].data, [bytes(table)])


def test_misplaced_or_malformed_tables_are_refused() -> None:
    m = make_manifest(TABLE_STRIPES + 1)
    _, blocks = encode_manifest(m)
    with pytest.raises(ManifestError):
        decode_table(blocks[1].data, m.n, 0)  # the second table claims to start at 0
    with pytest.raises(ManifestError):
        decode_table(blocks[0].data, 4, 0)  # wrong share count
    with pytest.raises(ManifestError):
        decode_head(blocks[0].data)  # a table is not a manifest root
    with pytest.raises(ManifestError):
        decode_head(dagcbor.encode({"type": "medmesh/manifest", "version": 2}))
