"""The dag-pb node codec and the UnixFS ``Data`` message, hand-written.

Both are protobuf (proto2) messages. They are small, and the exact bytes matter (a block's CID
is the hash of its encoding), so they are encoded here by hand rather than with a protobuf
runtime, which would neither guarantee the field order below nor decode strictly.

dag-pb (IPLD spec ``specs/codecs/dag-pb``, https://ipld.io/specs/codecs/dag-pb/spec/)::

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Format decisions, all taken from that spec and from what go-codec-dagpb and @ipld/dag-pb emit:

- A PBNode is encoded **Links first (field 2), then Data (field 1)**, the reverse of field-number
  order. Each PBLink is encoded Hash, Name, Tsize. A field is written when it is present, even if
  empty: the importers always set ``Name = ""``, which appears on the wire as ``12 00``, and that
  is part of every reference CID.
- Decoding is strict, as the spec asks: in a PBNode only fields 1 and 2, both length-delimited,
  all Links before the (single) Data; in a PBLink only fields 1, 2, 3 in that order, each at most
  once, with Hash required and a valid binary CID, Name valid UTF-8 and Tsize a varint. Unknown
  fields, wrong wire types, truncated or over-long varints (more than 10 bytes or >= 2**64) and
  lengths running past the end are all rejected with :class:`~medmesh.errors.InvalidInputError`.
- Links are kept in the order given; the importers only produce links with the empty name, so
  the spec's sort-by-name rule never reorders them.

UnixFS (``ipfs/specs`` ``src/unixfs.md``, https://specs.ipfs.tech/unixfs/)::

    message Data {
      enum DataType { Raw = 0; Directory = 1; File = 2; Metadata = 3; Symlink = 4; HAMTShard = 5; }
      required DataType Type = 1;   optional bytes Data = 2;     optional uint64 filesize = 3;
      repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
      optional uint32 mode = 7;     optional UnixTime mtime = 8;
    }
    message UnixTime { required int64 Seconds = 1; optional fixed32 FractionalNanoseconds = 2; }

- Fields are encoded in field-number order; ``blocksizes`` is *not* packed (one ``0x20`` key per
  entry), exactly as js-ipfs-unixfs and go-unixfs emit it. Which optional fields are present is
  the importer's decision (it mirrors the reference importer); this codec writes whatever is set.
- Decoding rejects unknown field numbers, wrong wire types, duplicate singular fields, an unknown
  ``Type`` and out-of-range values. Repeated ``blocksizes`` is accepted both unpacked and packed,
  since protobuf parsers must accept either. Field order is not enforced for UnixFS (protobuf does
  not require it and other encoders may differ); the CID covers the exact bytes anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from medmesh.errors import InvalidCidError, InvalidInputError
from medmesh.storage.cid import Cid
from medmesh.storage.varint import encode_varint, read_varint, varint_size

__all__ = [
    "DataType",
    "PBLink",
    "PBNode",
    "UnixFSData",
    "UnixTime",
    "decode_pbnode",
    "decode_unixfs",
    "encode_pbnode",
    "encode_unixfs",
    "encode_varint",
    "read_varint",
    "varint_size",
]

_U64: Final = 1 << 64
_U32: Final = 1 << 32
_WT_VARINT: Final = 0
_WT_I64: Final = 1
_WT_LEN: Final = 2
_WT_I32: Final = 5


class DataType(IntEnum):
    """UnixFS node types (``Data.DataType``)."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


# -- varints ---------------------------------------------------------------------------------


def _read_key(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    key, pos = read_varint(buf, pos, what)
    field_no, wire = key >> 3, key & 7
    if wire not in (_WT_VARINT, _WT_I64, _WT_LEN, _WT_I32):
        raise InvalidInputError(f"{what}: invalid or unsupported wire type {wire}")
    if field_no == 0 or field_no >= 1 << 29:
        raise InvalidInputError(f"{what}: invalid field number {field_no}")
    return field_no, wire, pos


def _read_bytes(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    length, pos = read_varint(buf, pos, what)
    end = pos + length
    if end > len(buf):
        raise InvalidInputError(f"{what}: length-delimited field runs past the end")
    return buf[pos:end], end


def _expect(wire: int, expected: int, what: str, name: str) -> None:
    if wire != expected:
        raise InvalidInputError(f"{what}: field {name} has wire type {wire}, expected {expected}")


# -- dag-pb ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link. ``name``/``tsize`` of ``None`` mean *absent* (not written)."""

    hash: Cid
    name: str | None = None
    tsize: int | None = None


@dataclass(frozen=True, slots=True)
class PBNode:
    """A dag-pb node: links (in order) and optional opaque data (``None`` = absent)."""

    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


def _encode_link(link: PBLink) -> bytes:
    h = bytes(link.hash)
    parts = [b"\x0a", encode_varint(len(h)), h]
    if link.name is not None:
        name = link.name.encode("utf-8")
        parts += [b"\x12", encode_varint(len(name)), name]
    if link.tsize is not None:
        parts += [b"\x18", encode_varint(link.tsize)]
    return b"".join(parts)


def encode_pbnode(node: PBNode) -> bytes:
    """Encode a dag-pb node: all Links (field 2) first, then Data (field 1) if present.

    >>> encode_pbnode(PBNode(data=b"\\x08\\x02\\x18\\x00")).hex()
    '0a0408021800'
    """
    parts: list[bytes] = []
    for link in node.links:
        enc = _encode_link(link)
        parts += [b"\x12", encode_varint(len(enc)), enc]
    if node.data is not None:
        parts += [b"\x0a", encode_varint(len(node.data)), node.data]
    return b"".join(parts)


def _decode_link(buf: bytes) -> PBLink:
    what = "dag-pb PBLink"
    pos = 0
    last = 0
    h: Cid | None = None
    name: str | None = None
    tsize: int | None = None
    while pos < len(buf):
        fno, wire, pos = _read_key(buf, pos, what)
        if fno <= last:
            raise InvalidInputError(f"{what}: fields out of order or repeated (field {fno})")
        last = fno
        if fno == 1:
            _expect(wire, _WT_LEN, what, "Hash")
            raw, pos = _read_bytes(buf, pos, what)
            try:
                h = Cid.from_bytes(raw)
            except InvalidCidError as exc:
                raise InvalidInputError(f"{what}: Hash is not a valid CID") from exc
        elif fno == 2:
            _expect(wire, _WT_LEN, what, "Name")
            raw, pos = _read_bytes(buf, pos, what)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{what}: Name is not valid UTF-8") from exc
        elif fno == 3:
            _expect(wire, _WT_VARINT, what, "Tsize")
            tsize, pos = read_varint(buf, pos, what)
        else:
            raise InvalidInputError(f"{what}: unknown field {fno}")
    if h is None:
        raise InvalidInputError(f"{what}: missing Hash")
    return PBLink(h, name, tsize)


def decode_pbnode(block: bytes) -> PBNode:
    """Strictly decode a dag-pb block (see the module docstring for the rules)."""
    what = "dag-pb PBNode"
    block = bytes(block)
    pos = 0
    links: list[PBLink] = []
    data: bytes | None = None
    while pos < len(block):
        fno, wire, pos = _read_key(block, pos, what)
        if fno == 1:
            _expect(wire, _WT_LEN, what, "Data")
            if data is not None:
                raise InvalidInputError(f"{what}: duplicate Data field")
            data, pos = _read_bytes(block, pos, what)
        elif fno == 2:
            _expect(wire, _WT_LEN, what, "Links")
            if data is not None:
                raise InvalidInputError(f"{what}: Links after Data (invalid order)")
            raw, pos = _read_bytes(block, pos, what)
            links.append(_decode_link(raw))
        else:
            raise InvalidInputError(f"{what}: unknown field {fno}")
    return PBNode(tuple(links), data)


# -- UnixFS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixTime:
    """UnixFS ``mtime``: seconds (int64) and optional nanoseconds in ``1..999_999_999``."""

    seconds: int
    nanos: int | None = None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS ``Data`` message. ``None`` (or ``()`` for blocksizes) means *absent*."""

    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default=())
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None


def _encode_mtime(t: UnixTime) -> bytes:
    if not -(1 << 63) <= t.seconds < 1 << 63:
        raise InvalidInputError("UnixFS mtime seconds out of int64 range")
    parts = [b"\x08", encode_varint(t.seconds % _U64)]  # int64: two's complement varint
    if t.nanos is not None:
        if not 0 < t.nanos < 1_000_000_000:
            raise InvalidInputError("UnixFS mtime nanoseconds must be in 1..999999999")
        parts += [b"\x15", t.nanos.to_bytes(4, "little")]
    return b"".join(parts)


def encode_unixfs(d: UnixFSData) -> bytes:
    """Encode a UnixFS ``Data`` message, fields in number order, ``blocksizes`` unpacked.

    >>> encode_unixfs(UnixFSData(DataType.FILE, filesize=0)).hex()
    '08021800'
    """
    parts = [b"\x08", encode_varint(int(d.type))]
    if d.data is not None:
        parts += [b"\x12", encode_varint(len(d.data)), d.data]
    if d.filesize is not None:
        parts += [b"\x18", encode_varint(d.filesize)]
    for size in d.blocksizes:
        parts += [b"\x20", encode_varint(size)]
    if d.hash_type is not None:
        parts += [b"\x28", encode_varint(d.hash_type)]
    if d.fanout is not None:
        parts += [b"\x30", encode_varint(d.fanout)]
    if d.mode is not None:
        if not 0 <= d.mode < _U32:
            raise InvalidInputError("UnixFS mode out of uint32 range")
        parts += [b"\x38", encode_varint(d.mode)]
    if d.mtime is not None:
        mt = _encode_mtime(d.mtime)
        parts += [b"\x42", encode_varint(len(mt)), mt]
    return b"".join(parts)


def _decode_mtime(buf: bytes) -> UnixTime:
    what = "UnixFS UnixTime"
    pos = 0
    seconds: int | None = None
    nanos: int | None = None
    while pos < len(buf):
        fno, wire, pos = _read_key(buf, pos, what)
        if fno == 1:
            _expect(wire, _WT_VARINT, what, "Seconds")
            if seconds is not None:
                raise InvalidInputError(f"{what}: duplicate Seconds")
            raw, pos = read_varint(buf, pos, what)
            seconds = raw - _U64 if raw >= 1 << 63 else raw
        elif fno == 2:
            _expect(wire, _WT_I32, what, "FractionalNanoseconds")
            if nanos is not None:
                raise InvalidInputError(f"{what}: duplicate FractionalNanoseconds")
            if pos + 4 > len(buf):
                raise InvalidInputError(f"{what}: truncated fixed32")
            nanos = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
            if not 0 < nanos < 1_000_000_000:
                raise InvalidInputError(f"{what}: FractionalNanoseconds out of range")
        else:
            raise InvalidInputError(f"{what}: unknown field {fno}")
    if seconds is None:
        raise InvalidInputError(f"{what}: missing Seconds")
    return UnixTime(seconds, nanos)


def decode_unixfs(buf: bytes) -> UnixFSData:
    """Strictly decode a UnixFS ``Data`` message (see the module docstring for the rules)."""
    what = "UnixFS Data"
    buf = bytes(buf)
    pos = 0
    seen: set[int] = set()
    dtype: DataType | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None
    mtime: UnixTime | None = None
    while pos < len(buf):
        fno, wire, pos = _read_key(buf, pos, what)
        if fno != 4:
            if fno in seen:
                raise InvalidInputError(f"{what}: duplicate field {fno}")
            seen.add(fno)
        if fno == 1:
            _expect(wire, _WT_VARINT, what, "Type")
            raw, pos = read_varint(buf, pos, what)
            try:
                dtype = DataType(raw)
            except ValueError:
                raise InvalidInputError(f"{what}: unknown Type {raw}") from None
        elif fno == 2:
            _expect(wire, _WT_LEN, what, "Data")
            data, pos = _read_bytes(buf, pos, what)
        elif fno == 3:
            _expect(wire, _WT_VARINT, what, "filesize")
            filesize, pos = read_varint(buf, pos, what)
        elif fno == 4:
            if wire == _WT_VARINT:
                size, pos = read_varint(buf, pos, what)
                blocksizes.append(size)
            elif wire == _WT_LEN:  # packed encoding
                packed, pos = _read_bytes(buf, pos, what)
                ppos = 0
                while ppos < len(packed):
                    size, ppos = read_varint(packed, ppos, what)
                    blocksizes.append(size)
            else:
                raise InvalidInputError(f"{what}: field blocksizes has wire type {wire}")
        elif fno == 5:
            _expect(wire, _WT_VARINT, what, "hashType")
            hash_type, pos = read_varint(buf, pos, what)
        elif fno == 6:
            _expect(wire, _WT_VARINT, what, "fanout")
            fanout, pos = read_varint(buf, pos, what)
        elif fno == 7:
            _expect(wire, _WT_VARINT, what, "mode")
            mode, pos = read_varint(buf, pos, what)
            if mode >= _U32:
                raise InvalidInputError(f"{what}: mode out of uint32 range")
        elif fno == 8:
            _expect(wire, _WT_LEN, what, "mtime")
            raw_mt, pos = _read_bytes(buf, pos, what)
            mtime = _decode_mtime(raw_mt)
        else:
            raise InvalidInputError(f"{what}: unknown field {fno}")
    if dtype is None:
        raise InvalidInputError(f"{what}: missing required Type")
    return UnixFSData(dtype, data, filesize, tuple(blocksizes), hash_type, fanout, mode, mtime)
