"""dag-pb / UnixFS codec tests: known bytes, round trips, strict decoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InvalidInputError
from medmesh.storage.cid import DAG_PB, IDENTITY, RAW, Cid
from medmesh.storage.unixfs import (
    DataType,
    PBLink,
    PBNode,
    UnixFSData,
    UnixTime,
    decode_pbnode,
    decode_unixfs,
    encode_pbnode,
    encode_unixfs,
    encode_varint,
    read_varint,
    varint_size,
)

RAW_CID = Cid.of(b"leaf")
V0_CID = Cid.of(b"node", DAG_PB, version=0)
RAW_CID_HEX = bytes(RAW_CID).hex()


# -- varints ---------------------------------------------------------------------------------


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(n: int) -> None:
    enc = encode_varint(n)
    assert len(enc) == varint_size(n)
    assert read_varint(enc + b"\xff", 0) == (n, len(enc))


@pytest.mark.parametrize("n", [-1, 1 << 64])
def test_varint_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(InvalidInputError):
        encode_varint(n)


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # nothing
        b"\x80",  # truncated
        b"\xff" * 10 + b"\x01",  # 11 bytes
        b"\xff" * 9 + b"\x02",  # 10 bytes but >= 2**64
    ],
)
def test_bad_varints(raw: bytes) -> None:
    with pytest.raises(InvalidInputError):
        read_varint(raw, 0)


def test_largest_varint_is_accepted() -> None:
    assert read_varint(b"\xff" * 9 + b"\x01", 0) == ((1 << 64) - 1, 10)


# -- dag-pb: known bytes ---------------------------------------------------------------------


def test_pbnode_encodes_links_before_data() -> None:
    node = PBNode((PBLink(RAW_CID, "", 4),), b"\x08\x02")
    enc = encode_pbnode(node)
    # 12 <len> [0a 24 <cid> 12 00 18 04] then 0a 02 08 02
    link = "0a24" + RAW_CID_HEX + "1200" + "1804"
    assert enc.hex() == "12" + f"{len(link) // 2:02x}" + link + "0a020802"
    assert decode_pbnode(enc) == node


def test_pblink_absent_fields_are_not_written() -> None:
    enc = encode_pbnode(PBNode((PBLink(V0_CID),)))
    assert enc == b"\x12\x24\x0a\x22" + bytes(V0_CID)
    assert decode_pbnode(enc) == PBNode((PBLink(V0_CID, None, None),), None)


def test_empty_node_and_empty_data_differ() -> None:
    assert encode_pbnode(PBNode()) == b""
    assert encode_pbnode(PBNode(data=b"")) == b"\x0a\x00"
    assert decode_pbnode(b"").data is None
    assert decode_pbnode(b"\x0a\x00").data == b""


def test_unixfs_known_bytes() -> None:
    ufs = UnixFSData(DataType.FILE, filesize=262145, blocksizes=(262144, 1))
    assert encode_unixfs(ufs).hex() == "0802" + "1881801" + "0" + "2080801" + "0" + "2001"
    assert decode_unixfs(encode_unixfs(ufs)) == ufs
    assert encode_unixfs(UnixFSData(DataType.RAW, data=b"ab")).hex() == "08001202" + "6162"


def test_unixfs_packed_blocksizes_accepted() -> None:
    packed = bytes.fromhex("0802") + b"\x18\x03" + b"\x22\x02\x01\x02"
    assert decode_unixfs(packed).blocksizes == (1, 2)


def test_unixfs_mtime_and_mode() -> None:
    ufs = UnixFSData(DataType.FILE, filesize=0, mode=0o644, mtime=UnixTime(-5, 7))
    enc = encode_unixfs(ufs)
    assert decode_unixfs(enc) == ufs
    assert b"\x42" in enc


# -- round trips -----------------------------------------------------------------------------

cids = st.sampled_from(
    [
        RAW_CID,
        V0_CID,
        Cid.of(b"x", DAG_PB),
        Cid.of(b"inline", RAW, IDENTITY),
        Cid.of(b"", RAW, IDENTITY),
    ]
)
links = st.builds(
    PBLink,
    cids,
    st.one_of(st.none(), st.text(max_size=8)),
    st.one_of(st.none(), st.integers(0, (1 << 64) - 1)),
)
nodes = st.builds(
    PBNode,
    st.lists(links, max_size=6).map(tuple),
    st.one_of(st.none(), st.binary(max_size=40)),
)
u64 = st.integers(0, (1 << 64) - 1)
opt_u64 = st.one_of(st.none(), u64)
unixfs = st.builds(
    UnixFSData,
    st.sampled_from(DataType),
    st.one_of(st.none(), st.binary(min_size=0, max_size=40)),
    opt_u64,
    st.lists(u64, max_size=6).map(tuple),
    opt_u64,
    opt_u64,
    st.one_of(st.none(), st.integers(0, (1 << 32) - 1)),
    st.one_of(
        st.none(),
        st.builds(
            UnixTime,
            st.integers(-(1 << 63), (1 << 63) - 1),
            st.one_of(st.none(), st.integers(1, 999_999_999)),
        ),
    ),
)


@given(nodes)
def test_pbnode_round_trip(node: PBNode) -> None:
    enc = encode_pbnode(node)
    assert decode_pbnode(enc) == node
    assert encode_pbnode(decode_pbnode(enc)) == enc


@given(unixfs)
def test_unixfs_round_trip(ufs: UnixFSData) -> None:
    enc = encode_unixfs(ufs)
    assert decode_unixfs(enc) == ufs
    assert encode_unixfs(decode_unixfs(enc)) == enc


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_decoders_fail_only_with_invalid_input(raw: bytes) -> None:
    for decode in (decode_pbnode, decode_unixfs):
        with contextlib.suppress(InvalidInputError):
            decode(raw)


@given(nodes, st.data())
def test_truncated_pbnode_is_rejected_or_shorter(node: PBNode, data: st.DataObject) -> None:
    enc = encode_pbnode(node)
    if not enc:
        return
    cut = data.draw(st.integers(0, len(enc) - 1))
    try:
        decoded = decode_pbnode(enc[:cut])
    except InvalidInputError:
        return
    # a cut exactly between fields decodes to a prefix of the node
    assert decoded.links == node.links[: len(decoded.links)]
    assert decoded.data is None


# -- strict decoding -------------------------------------------------------------------------

LINK = b"\x0a\x24" + bytes(RAW_CID)


def _link_field(body: bytes) -> bytes:
    return b"\x12" + encode_varint(len(body)) + body


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x0b", id="wire type 3 (group)"),
        pytest.param(b"\x0e", id="wire type 6"),
        pytest.param(b"\x1a\x00", id="unknown field 3"),
        pytest.param(b"\x08\x01", id="Data as varint"),
        pytest.param(b"\x0a\x00\x0a\x00", id="duplicate Data"),
        pytest.param(b"\x0a\x00" + _link_field(LINK), id="Data before Links"),
        pytest.param(b"\x0a\x05ab", id="length past the end"),
        pytest.param(b"\x0a", id="missing length"),
        pytest.param(b"\x0a\x80", id="truncated length varint"),
        pytest.param(b"\x02\x00", id="field number 0"),
        pytest.param(_link_field(b""), id="link without Hash"),
        pytest.param(_link_field(b"\x12\x00"), id="link with only Name"),
        pytest.param(_link_field(b"\x12\x00" + LINK), id="Name before Hash"),
        pytest.param(_link_field(LINK + b"\x18\x01\x12\x00"), id="Tsize before Name"),
        pytest.param(_link_field(LINK + LINK), id="duplicate Hash"),
        pytest.param(_link_field(LINK + b"\x18\x01\x18\x01"), id="duplicate Tsize"),
        pytest.param(_link_field(LINK + b"\x22\x00"), id="unknown link field 4"),
        pytest.param(_link_field(LINK + b"\x1a\x01\x01"), id="Tsize as bytes"),
        pytest.param(_link_field(LINK + b"\x10\x00"), id="Name as varint"),
        pytest.param(_link_field(LINK + b"\x12\x01\xff"), id="Name not UTF-8"),
        pytest.param(_link_field(b"\x0a\x03\x01\x55\x12"), id="Hash not a CID"),
        pytest.param(_link_field(LINK + b"\x18" + b"\xff" * 9 + b"\x02"), id="Tsize >= 2**64"),
        pytest.param(_link_field(LINK + b"\x18\xff"), id="Tsize truncated"),
    ],
)
def test_malformed_pbnode_is_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidInputError):
        decode_pbnode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="missing Type"),
        pytest.param(b"\x18\x00", id="missing Type, with filesize"),
        pytest.param(b"\x08\x06", id="Type 6 unknown"),
        pytest.param(b"\x08\x02\x08\x02", id="duplicate Type"),
        pytest.param(b"\x08\x02\x18\x00\x18\x00", id="duplicate filesize"),
        pytest.param(b"\x08\x02\x4a\x00", id="unknown field 9"),
        pytest.param(b"\x0a\x00", id="Type as bytes"),
        pytest.param(b"\x08\x02\x1a\x00", id="filesize as bytes"),
        pytest.param(b"\x08\x02\x25\x00\x00\x00\x00", id="blocksizes as fixed32"),
        pytest.param(b"\x08\x02\x12\x05ab", id="Data past the end"),
        pytest.param(b"\x08\x02\x38\x80\x80\x80\x80\x10", id="mode >= 2**32"),
        pytest.param(b"\x08\x02\x42\x00", id="mtime without Seconds"),
        pytest.param(b"\x08\x02\x42\x07\x08\x01\x15\x00\x00\x00\x00", id="mtime nanos 0"),
        pytest.param(b"\x08\x02\x42\x07\x08\x01\x15\x00\xca\x9a\x3b", id="mtime nanos 1e9"),
        pytest.param(b"\x08\x02\x42\x04\x08\x01\x15\x01", id="mtime fixed32 truncated"),
        pytest.param(b"\x08\x02\x42\x02\x18\x01", id="mtime unknown field"),
        pytest.param(b"\x08\x02\x22\x01\x80", id="packed blocksizes truncated"),
        pytest.param(b"\x08\x02\x0b", id="group wire type"),
    ],
)
def test_malformed_unixfs_is_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidInputError):
        decode_unixfs(raw)


def test_encoder_refuses_out_of_range_values() -> None:
    with pytest.raises(InvalidInputError):
        encode_unixfs(UnixFSData(DataType.FILE, mode=1 << 32))
    with pytest.raises(InvalidInputError):
        encode_unixfs(UnixFSData(DataType.FILE, mtime=UnixTime(0, 0)))
    with pytest.raises(InvalidInputError):
        encode_unixfs(UnixFSData(DataType.FILE, mtime=UnixTime(1 << 63)))
    with pytest.raises(InvalidInputError):
        encode_unixfs(UnixFSData(DataType.FILE, filesize=-1))
    with pytest.raises(InvalidInputError):
        encode_pbnode(PBNode((PBLink(RAW_CID, None, 1 << 64),)))
