"""CAR v1 (Content Addressable aRchive) reading and writing.

Format (CARv1 spec, https://ipld.io/specs/transport/car/carv1/)::

    varint(len(header)) | header | { varint(len(cid) + len(block)) | cid | block }*

- ``header`` is the DAG-CBOR map ``{"roots": [CID, ...], "version": 1}`` (canonical key order,
  ``roots`` first, CIDs as tag 42; see :mod:`medmesh.storage.dagcbor`).
  Empty ``roots`` are accepted and written, as the JS implementation and go-car/v2 do.
- ``cid`` is the binary CID (34 bytes for v0, ``0x01 codec multihash`` for v1), followed directly
  by the block bytes. Varints are unsigned LEB128.

Writing skips blocks already written (by CID). :func:`export_car` writes a DAG in DFS pre-order
(:func:`medmesh.storage.exporter.walk_dfs`), which gives byte-identical files to
``@ipld/car``'s ``CarWriter`` fed the same order, and to the reference vectors.

Reading treats the file as untrusted: every block is hashed and checked against its CID as it is
read (:class:`~medmesh.errors.BlockMismatchError`); a malformed header, a bad or truncated varint,
a bad CID, an empty, oversized or truncated section raise
:class:`~medmesh.errors.InvalidInputError`.
Sizes are bounded (``max_header_size``, ``max_section_size``) so a hostile length prefix cannot
make the reader allocate gigabytes. CARv2 files are recognised and refused with a clear message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO, Final, cast

from medmesh.errors import InvalidCidError, InvalidInputError
from medmesh.storage import dagcbor
from medmesh.storage.block import Block
from medmesh.storage.cid import Cid
from medmesh.storage.exporter import BlockGetter, walk_dfs
from medmesh.storage.unixfs import encode_varint, read_varint

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_SECTION_SIZE",
    "car_bytes",
    "encode_header",
    "export_car",
    "read_car",
    "write_car",
]

#: Largest header accepted by :func:`read_car` (medmesh headers are under 100 bytes).
DEFAULT_MAX_HEADER_SIZE: Final = 1 << 20
#: Largest section (CID + block) accepted by :func:`read_car`; go-car's default is 8 MiB too.
DEFAULT_MAX_SECTION_SIZE: Final = 8 << 20

_MAX_VARINT_BYTES: Final = 10


def encode_header(roots: Sequence[Cid]) -> bytes:
    """The length-prefixed CARv1 header for ``roots``."""
    header = dagcbor.encode({"roots": list(roots), "version": 1})
    return encode_varint(len(header)) + header


def write_car(roots: Sequence[Cid], blocks: Iterable[Block], out: BinaryIO) -> int:
    """Write a CARv1 file; return the number of bytes written.

    Blocks are written in the given order; a block whose CID was already written is skipped.
    Blocks are trusted (they are not re-hashed here).
    """
    header = encode_header(roots)
    out.write(header)
    total = len(header)
    seen: set[Cid] = set()
    for cid, data in blocks:
        if cid in seen:
            continue
        seen.add(cid)
        raw_cid = bytes(cid)
        prefix = encode_varint(len(raw_cid) + len(data))
        out.write(prefix)
        out.write(raw_cid)
        out.write(data)
        total += len(prefix) + len(raw_cid) + len(data)
    return total


def export_car(root: Cid, get_block: BlockGetter, out: BinaryIO) -> int:
    """Write the DAG under ``root`` as a CARv1 file (DFS pre-order, no duplicates).

    Every block is verified against its CID on the way (see
    :func:`~medmesh.storage.exporter.walk_dfs`). Returns the number of bytes written.
    """
    return write_car([root], walk_dfs(root, get_block), out)


def car_bytes(roots: Sequence[Cid], blocks: Iterable[Block]) -> bytes:
    """A whole CARv1 file in memory (upload batches, bulk reads, small DAGs).

    >>> from medmesh.storage.importer import make_leaf
    >>> leaf = make_leaf(b"")
    >>> len(car_bytes([leaf.cid], [leaf]))
    96
    """
    parts: list[bytes] = []
    write_car(roots, blocks, cast(BinaryIO, _Parts(parts)))
    return b"".join(parts)  # one copy of the block bytes, not two as through BytesIO


class _Parts:
    """A write-only sink collecting the pieces :func:`write_car` writes."""

    def __init__(self, parts: list[bytes]) -> None:
        self.write = parts.append


# -- reading ---------------------------------------------------------------------------------


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        piece = stream.read(n - got)
        if not piece:
            raise InvalidInputError(f"CAR: truncated {what} ({got} of {n} bytes)")
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _read_stream_varint(stream: BinaryIO, what: str) -> int | None:
    """Read a varint from the stream; ``None`` on a clean EOF before its first byte."""
    raw = bytearray()
    while True:
        b = stream.read(1)
        if not b:
            if raw:
                raise InvalidInputError(f"CAR: truncated {what} varint")
            return None
        raw += b
        if not b[0] & 0x80:
            break
        if len(raw) >= _MAX_VARINT_BYTES:
            raise InvalidInputError(f"CAR: {what} varint longer than 10 bytes")
    value, _ = read_varint(bytes(raw), 0, f"CAR {what}")
    return value


def _parse_header(raw: bytes) -> list[Cid]:
    try:
        header = dagcbor.decode(raw)
    except InvalidInputError as exc:
        raise InvalidInputError("CAR: header is not valid DAG-CBOR") from exc
    if not isinstance(header, dict):
        raise InvalidInputError("CAR: header is not a map")
    version = header.get("version")
    if version == 2:
        raise InvalidInputError("CAR: this is a CARv2 file; only CARv1 is supported")
    if version != 1 or isinstance(version, bool):
        raise InvalidInputError("CAR: header version is not 1")
    if set(header) != {"roots", "version"}:
        raise InvalidInputError("CAR: header must have exactly the keys 'roots' and 'version'")
    roots_raw = header["roots"]
    if not isinstance(roots_raw, list):
        raise InvalidInputError("CAR: header roots is not a list")
    roots: list[Cid] = []
    for r in roots_raw:
        if not isinstance(r, Cid):
            raise InvalidInputError("CAR: header roots must be CIDs")
        roots.append(r)
    return roots


def _cid_length(section: bytes) -> int:
    """Length of the binary CID at the start of a section."""
    if len(section) >= 2 and section[0] == 0x12 and section[1] == 0x20:
        return 34  # CIDv0: a bare sha2-256 multihash
    what = "CAR section CID"
    version, pos = read_varint(section, 0, what)
    if version != 1:
        raise InvalidInputError(f"CAR: unsupported CID version {version} in section")
    _codec, pos = read_varint(section, pos, what)
    _hash, pos = read_varint(section, pos, what)
    length, pos = read_varint(section, pos, what)
    if pos + length > len(section):
        raise InvalidInputError("CAR: section CID runs past the section")
    return pos + length


def read_car(
    stream: BinaryIO,
    *,
    max_section_size: int = DEFAULT_MAX_SECTION_SIZE,
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
) -> tuple[list[Cid], Iterator[Block]]:
    """Read a CARv1 file: return its roots and an iterator over its blocks, in file order.

    The header is read at once; blocks are read lazily from ``stream`` and each is verified
    against its CID before it is yielded. Duplicate blocks in the file are yielded as found.

    >>> roots, blocks = read_car(io.BytesIO(car_bytes([], [])))
    >>> roots, list(blocks)
    ([], [])
    """
    hlen = _read_stream_varint(stream, "header length")
    if hlen is None:
        raise InvalidInputError("CAR: empty input, no header")
    if hlen == 0 or hlen > max_header_size:
        raise InvalidInputError(f"CAR: header length {hlen} out of range")
    roots = _parse_header(_read_exact(stream, hlen, "header"))

    def blocks() -> Iterator[Block]:
        while True:
            n = _read_stream_varint(stream, "section length")
            if n is None:
                return
            if n == 0 or n > max_section_size:
                raise InvalidInputError(f"CAR: section length {n} out of range")
            section = _read_exact(stream, n, "section")
            cid_len = _cid_length(section)
            try:
                cid = Cid.from_bytes(section[:cid_len])
            except InvalidCidError as exc:
                raise InvalidInputError("CAR: section starts with an unsupported CID") from exc
            data = section[cid_len:]
            cid.verify(data)
            yield Block(cid, data)

    return roots, blocks()
