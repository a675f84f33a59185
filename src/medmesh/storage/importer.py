"""File -> UnixFS file DAG, block-for-block identical to the reference importers.

The output matches ``ipfs add --cid-version=1 --raw-leaves`` (:data:`KUBO_V1_RAW`, the medmesh
default) and legacy ``ipfs add`` (:data:`KUBO_V0`), i.e. ipfs-unixfs-importer 17 / boxo with a
``size-262144`` chunker, the *balanced* layout, at most 174 links per node and sha2-256. The
details below were pinned down against the reference vectors in ``tests/data`` (made with
ipfs-unixfs-importer 17.1.1); see the UnixFS spec (https://specs.ipfs.tech/unixfs/) for the node
format and :mod:`medmesh.storage.unixfs` for the byte-level encoding.

Leaves
    The file is cut into ``chunk_size`` pieces; only the last may be shorter. An empty file is one
    empty chunk. With ``raw_leaves`` a leaf is the chunk itself (codec ``raw``). Otherwise it is a
    dag-pb node with no links whose Data is UnixFS ``{Type: File, Data: chunk, filesize: len}``
    (type *File*, not *Raw*; ``Data`` is omitted when the chunk is empty, so the empty v0 file is
    the 6-byte block ``0a 04 08 02 18 00``).

Balanced layout
    Level 0 is the list of leaves. While a level has more than one entry, it is cut into
    consecutive groups of ``max_links`` and each group becomes one parent node (a trailing group
    of *one* entry still gets its own parent). The single entry of the last level is the root.
    Only when the whole file is a single chunk is the leaf itself the root. So 175 leaves give a
    depth-2 DAG: the root links to a full 174-leaf node and to a node with one link to leaf 175.
    Because full groups never change, every full interior node is final as soon as its last child
    is known; :class:`DagBuilder` emits those early and holds at most ``max_links`` pending entries
    per level.

Interior nodes
    PBNode ``{Links: [...], Data: UnixFS{Type: File, filesize: S, blocksizes: [s_1..s_n]}}`` where
    ``s_i`` is the number of *file* bytes under child ``i`` and ``S = sum(s_i)``. Each link has
    ``Name = ""`` and ``Tsize`` = the encoded size of the whole child subtree (the child block plus
    its children's Tsizes, counting repeated blocks every time): a raw leaf's length, a dag-pb
    leaf's block length. Interior nodes are CIDv0 for :data:`KUBO_V0`, CIDv1 dag-pb otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, NamedTuple

from medmesh.errors import InvalidInputError
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_PB, RAW, SHA2_256, Cid
from medmesh.storage.unixfs import (
    DataType,
    PBLink,
    PBNode,
    UnixFSData,
    encode_pbnode,
    encode_unixfs,
    encode_varint,
    varint_size,
)

__all__ = [
    "KUBO_V0",
    "KUBO_V1_RAW",
    "MAX_CHUNK_SIZE",
    "DagBuilder",
    "ImportParams",
    "import_bytes",
    "import_chunks",
    "import_file",
    "leaf_block_size",
    "make_leaf",
    "root_cid",
]

#: Largest accepted chunk size (1 MiB); IPFS peers refuse blocks over 2 MiB anyway.
MAX_CHUNK_SIZE: Final = 1 << 20

_READ_CHUNKS: Final = 16  # root_cid reads this many chunks per read call


@dataclass(frozen=True)
class ImportParams:
    """How a file becomes a DAG. The defaults are ``ipfs add --cid-version=1 --raw-leaves``.

    >>> ImportParams(chunk_size=1024).max_links
    174
    """

    chunk_size: int = 262144
    max_links: int = 174
    raw_leaves: bool = True
    cid_version: int = 1

    def __post_init__(self) -> None:
        if type(self.chunk_size) is not int or not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInputError(f"chunk_size must be an int in 1..{MAX_CHUNK_SIZE}")
        if type(self.max_links) is not int or self.max_links < 2:
            raise InvalidInputError("max_links must be an int >= 2")
        if not isinstance(self.raw_leaves, bool):
            raise InvalidInputError("raw_leaves must be a bool")
        if self.cid_version not in (0, 1) or isinstance(self.cid_version, bool):
            raise InvalidInputError("cid_version must be 0 or 1")
        if self.cid_version == 0 and self.raw_leaves:
            raise InvalidInputError("CIDv0 can only address dag-pb: use raw_leaves=False")


#: ``ipfs add --cid-version=1 --raw-leaves``: the medmesh storage profile.
KUBO_V1_RAW: Final = ImportParams()
#: Legacy ``ipfs add``: CIDv0, dag-pb UnixFS leaves.
KUBO_V0: Final = ImportParams(raw_leaves=False, cid_version=0)


# -- leaves ----------------------------------------------------------------------------------


def _dagpb_leaf_frame(n: int) -> tuple[bytes, bytes]:
    """(prefix, suffix) such that ``prefix + chunk + suffix`` is the dag-pb leaf of ``n`` bytes.

    The leaf is ``PBNode{Data: UnixFS{Type: File, Data: chunk (if non-empty), filesize: n}}``;
    written out here so the chunk is hashed in place rather than copied into a message.
    """
    fs = b"\x18" + encode_varint(n)
    data_hdr = b"\x12" + encode_varint(n) if n else b""
    inner_len = 2 + len(data_hdr) + n + len(fs)
    return b"\x0a" + encode_varint(inner_len) + b"\x08\x02" + data_hdr, fs


def leaf_block_size(n: int, params: ImportParams = KUBO_V1_RAW) -> int:
    """Encoded size of the leaf block holding ``n`` file bytes (its ``Tsize`` in a parent)."""
    if params.raw_leaves:
        return n
    inner = 2 + (1 + varint_size(n) + n if n else 0) + 1 + varint_size(n)
    return 1 + varint_size(inner) + inner


def make_leaf(chunk: bytes | bytearray | memoryview, params: ImportParams = KUBO_V1_RAW) -> Block:
    """Build the leaf block for one chunk: raw bytes, or a dag-pb UnixFS *File* node.

    >>> str(make_leaf(b"hello world\\n").cid)
    'bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4'
    >>> str(make_leaf(b"", KUBO_V0).cid)
    'QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH'
    """
    if len(chunk) > params.chunk_size:
        raise InvalidInputError("chunk is larger than params.chunk_size")
    if params.raw_leaves:
        data = chunk if type(chunk) is bytes else bytes(chunk)
        return Block(Cid(params.cid_version, RAW, SHA2_256, hashlib.sha256(data).digest()), data)
    prefix, suffix = _dagpb_leaf_frame(len(chunk))
    data = b"".join((prefix, chunk, suffix))
    return Block(Cid(params.cid_version, DAG_PB, SHA2_256, hashlib.sha256(data).digest()), data)


# -- the push builder ------------------------------------------------------------------------


class _Entry(NamedTuple):
    cid: Cid
    filesize: int  # file bytes under this entry (blocksizes value in the parent)
    tsize: int  # encoded size of the whole subtree (Tsize in the parent)


class DagBuilder:
    """Builds the balanced interior of a file DAG from leaf CIDs pushed in file order.

    The caller chunks and hashes the file itself (e.g. in a thread pool) and calls
    :meth:`add_leaf` once per chunk, in order; :meth:`finish` returns the root. Interior blocks
    are returned as soon as they are final, so memory stays at most ``max_links`` pending
    entries per level.

    >>> b = DagBuilder(ImportParams(chunk_size=4))
    >>> blocks = []
    >>> for chunk in (b"abcd", b"ef"):
    ...     leaf = make_leaf(chunk, ImportParams(chunk_size=4))
    ...     blocks += b.add_leaf(leaf.cid, len(chunk))
    >>> root, rest = b.finish()
    >>> root == rest[-1].cid and root.codec_name
    'dag-pb'
    """

    def __init__(self, params: ImportParams = KUBO_V1_RAW) -> None:
        self._params = params
        self._leaf_codec = RAW if params.raw_leaves else DAG_PB
        self._levels: list[list[_Entry]] = [[]]
        self._counts: list[int] = [0]  # entries ever added to each level
        self._short_leaf = False  # a leaf shorter than chunk_size must be the last
        self._finished = False

    @property
    def params(self) -> ImportParams:
        """The parameters this builder follows."""
        return self._params

    @property
    def leaf_count(self) -> int:
        """Number of leaves added so far."""
        return self._counts[0]

    def add_leaf(self, cid: Cid, size: int) -> list[Block]:
        """Record the next leaf: its CID and ``size``, the number of *file* bytes it holds.

        ``size`` is the chunk length for both leaf kinds (for a dag-pb leaf the block is a few
        bytes longer; its size is derived from ``size``). As with ``ipfs add``'s fixed-size
        chunker, every leaf but the last must hold exactly ``chunk_size`` bytes, and a zero-size
        leaf is allowed only as the sole leaf (the empty file); anything else raises
        :class:`~medmesh.errors.InvalidInputError`. The CID's hash is not checked here (the
        caller made it). Returns the interior blocks that became final (often none).
        """
        if self._finished:
            raise InvalidInputError("DagBuilder already finished")
        if cid.codec != self._leaf_codec or cid.version != self._params.cid_version:
            raise InvalidInputError(
                f"leaf CID {cid} does not fit the import parameters "
                f"(expected CIDv{self._params.cid_version} "
                f"{'raw' if self._params.raw_leaves else 'dag-pb'})"
            )
        if type(size) is not int or not 0 <= size <= self._params.chunk_size:
            raise InvalidInputError("leaf size must be an int in 0..chunk_size")
        if self._short_leaf:
            raise InvalidInputError("only the last leaf may be shorter than chunk_size")
        if size == 0 and self._counts[0]:
            raise InvalidInputError("an empty leaf can only be the single leaf of an empty file")
        self._short_leaf = size < self._params.chunk_size
        tsize = size if self._params.raw_leaves else leaf_block_size(size, self._params)
        return self._push(0, _Entry(cid, size, tsize))

    def _push(self, level: int, entry: _Entry) -> list[Block]:
        out: list[Block] = []
        max_links = self._params.max_links
        while True:
            pending = self._levels[level]
            pending.append(entry)
            self._counts[level] += 1
            if len(pending) < max_links:
                return out
            block, entry = self._parent(pending)
            pending.clear()
            out.append(block)
            level += 1
            if level == len(self._levels):
                self._levels.append([])
                self._counts.append(0)

    def _parent(self, children: list[_Entry]) -> tuple[Block, _Entry]:
        sizes = tuple(c.filesize for c in children)
        filesize = sum(sizes)
        data = encode_unixfs(UnixFSData(DataType.FILE, filesize=filesize, blocksizes=sizes))
        links = tuple(PBLink(c.cid, "", c.tsize) for c in children)
        raw = encode_pbnode(PBNode(links, data))
        cid = Cid(self._params.cid_version, DAG_PB, SHA2_256, hashlib.sha256(raw).digest())
        tsize = len(raw) + sum(c.tsize for c in children)
        return Block(cid, raw), _Entry(cid, filesize, tsize)

    def finish(self) -> tuple[Cid, list[Block]]:
        """Close the DAG: return the root CID and the interior blocks not yet returned.

        For a one-leaf file the root is that leaf and no interior block is made. At least one
        leaf is required (an empty file is one empty leaf: ``make_leaf(b"", params)``).
        """
        if self._finished:
            raise InvalidInputError("DagBuilder already finished")
        if self._counts[0] == 0:
            raise InvalidInputError("no leaves: an empty file still has one (empty) leaf")
        self._finished = True
        if self._counts[0] == 1:
            return self._levels[0][0].cid, []
        out: list[Block] = []
        level = 0
        while True:
            if self._counts[level] == 1:  # level > 0 here: one leaf returned above
                return self._levels[level][0].cid, out
            pending = self._levels[level]
            if pending:
                block, entry = self._parent(pending)
                pending.clear()
                out.append(block)
                if level + 1 == len(self._levels):
                    self._levels.append([])
                    self._counts.append(0)
                out += self._push(level + 1, entry)
            level += 1


# -- convenience -----------------------------------------------------------------------------


def _rechunk(pieces: Iterable[bytes | bytearray | memoryview], size: int) -> Iterator[bytes]:
    """Cut arbitrary input pieces into chunks of exactly ``size`` bytes (last one shorter).

    Yields one empty chunk for empty input. Whole chunks inside a large piece are sliced
    directly out of it; only the bytes straddling a piece boundary are buffered.
    """
    buf = bytearray()
    emitted = False
    for piece in pieces:
        mv = memoryview(piece).cast("B")
        n = len(mv)
        off = 0
        if buf:
            take = min(size - len(buf), n)
            buf += mv[:take]
            off = take
            if len(buf) < size:
                continue
            yield bytes(buf)
            emitted = True
            buf.clear()
        if off == 0 and n == size and type(piece) is bytes:
            yield piece
            emitted = True
            continue
        while n - off >= size:
            yield bytes(mv[off : off + size])
            emitted = True
            off += size
        if off < n:
            buf += mv[off:]
    if buf or not emitted:
        yield bytes(buf)


def import_chunks(
    chunks: Iterable[bytes | bytearray | memoryview], params: ImportParams = KUBO_V1_RAW
) -> Iterator[Block]:
    """Import a file given as pieces of any sizes; yield every block, the root last.

    Pieces are re-cut into exactly ``chunk_size`` leaves, so the result does not depend on how
    the input is split. Each leaf is yielded followed by the interior blocks it completed;
    a block that occurs several times in the file (e.g. zero-filled chunks) is yielded each
    time. Memory is bounded by one chunk plus the pending interior entries.
    """
    builder = DagBuilder(params)
    for chunk in _rechunk(chunks, params.chunk_size):
        leaf = make_leaf(chunk, params)
        yield leaf
        yield from builder.add_leaf(leaf.cid, len(chunk))
    _root, rest = builder.finish()
    yield from rest


def import_bytes(
    data: bytes | bytearray | memoryview, params: ImportParams = KUBO_V1_RAW
) -> tuple[Cid, dict[Cid, bytes]]:
    """Import an in-memory file; return the root CID and all distinct blocks.

    >>> root, blocks = import_bytes(b"hello world\\n", KUBO_V0)
    >>> str(root), len(blocks)
    ('QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o', 1)
    """
    blocks: dict[Cid, bytes] = {}
    last: Cid | None = None
    for block in import_chunks((data,), params):
        blocks[block.cid] = block.data
        last = block.cid
    assert last is not None  # import_chunks always yields at least the root
    return last, blocks


def _read_full(stream: BinaryIO, mv: memoryview) -> int:
    """Fill ``mv`` from ``stream`` unless EOF comes first; return the number of bytes read."""
    readinto: Callable[[memoryview], int | None] | None = getattr(stream, "readinto", None)
    got = 0
    total = len(mv)
    while got < total:
        if readinto is not None:
            n = readinto(mv[got:])
            if n is None:
                raise InvalidInputError("non-blocking stream has no data available")
        else:
            piece = stream.read(total - got)
            n = len(piece)
            mv[got : got + n] = piece
        if n == 0:
            break
        got += n
    return got


def root_cid(stream: BinaryIO, params: ImportParams = KUBO_V1_RAW) -> Cid:
    """The root CID the stream's content would get, without keeping any block (``ipfs add -n``).

    Reads ``16 * chunk_size`` bytes at a time into one reused buffer and hashes each chunk in
    place (no copies), so it runs close to the speed of SHA-256 itself.
    """
    size = params.chunk_size
    builder = DagBuilder(params)
    add_leaf = builder.add_leaf
    sha256 = hashlib.sha256
    version = params.cid_version
    buf = bytearray(size * _READ_CHUNKS)
    mv = memoryview(buf)
    frames: dict[int, tuple[bytes, bytes]] = {}
    total = 0
    while True:
        n = _read_full(stream, mv)
        for off in range(0, n, size):
            chunk = mv[off : min(off + size, n)]
            length = len(chunk)
            if params.raw_leaves:
                cid = Cid(version, RAW, SHA2_256, sha256(chunk).digest())
            else:
                frame = frames.get(length)
                if frame is None:
                    frame = frames[length] = _dagpb_leaf_frame(length)
                h = sha256(frame[0])
                h.update(chunk)
                h.update(frame[1])
                cid = Cid(version, DAG_PB, SHA2_256, h.digest())
            add_leaf(cid, length)
        total += n
        if n < len(mv):
            break
    if total == 0:
        add_leaf(make_leaf(b"", params).cid, 0)
    return builder.finish()[0]


def import_file(
    path: str | os.PathLike[str],
    params: ImportParams = KUBO_V1_RAW,
    put: Callable[[Block], object] | None = None,
) -> Cid:
    """Import the file at ``path``; return its root CID.

    Without ``put`` only the CID is computed (like :func:`root_cid`). With ``put``, every block
    is passed to it in :func:`import_chunks` order (the root last), e.g. ``blockstore.put``.
    """
    with open(path, "rb") as f:
        if put is None:
            return root_cid(f, params)
        size = params.chunk_size
        last: Cid | None = None
        for block in import_chunks(iter(lambda: f.read(size), b""), params):
            put(block)
            last = block.cid
        assert last is not None
        return last
