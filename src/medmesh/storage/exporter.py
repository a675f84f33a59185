"""UnixFS file DAG -> file bytes, every block verified.

Blocks come from an untrusted source (a storage node, a gateway, a CAR file), so:

- Every block is hashed and compared with the CID it was asked for before it is decoded or its
  bytes are used (:class:`~medmesh.errors.BlockMismatchError`). Identity CIDs (multihash
  ``0x00``) carry their block inline; ``get_block`` is never called for them.
- dag-pb nodes are decoded strictly (:mod:`medmesh.storage.unixfs`) and must hold a UnixFS
  ``File`` (or legacy ``Raw``) node; anything else (a directory, a symlink, dag-cbor, a node
  without UnixFS data, a ``Raw`` node with links) is :class:`~medmesh.errors.InvalidInputError`.
- The UnixFS sizes are checked as the UnixFS spec (https://specs.ipfs.tech/unixfs/) defines them:
  a node has one ``blocksizes`` entry per link; its ``filesize``, when present, equals its inline
  data plus the sum of ``blocksizes``; and the ``i``-th child must hold exactly ``blocksizes[i]``
  bytes. A lie anywhere raises :class:`~medmesh.errors.IntegrityError` with the offending CID, so
  the exported stream has exactly ``filesize`` bytes or fails. ``Tsize`` is advisory (it is not
  covered by any rule that a reader can check cheaply) and is ignored.
- File content is in DFS order: a node's own inline data, then its children left to right.
  The walk uses an explicit stack, so deep DAGs cannot overflow Python's recursion limit.

Errors are raised from inside the generators, possibly after some bytes were yielded: a caller
that streams to disk must treat an exception as "the whole file is bad".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from medmesh.errors import IntegrityError, InvalidInputError
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_PB, IDENTITY, RAW, Cid
from medmesh.storage.unixfs import DataType, decode_pbnode, decode_unixfs

__all__ = ["BlockGetter", "FileNode", "decode_file_node", "export_file", "leaf_cids", "walk_dfs"]

#: Fetches the bytes of a block by CID (may raise :class:`~medmesh.errors.NotFoundError`).
BlockGetter = Callable[[Cid], bytes]


def _fetch(cid: Cid, get_block: BlockGetter) -> bytes:
    """The verified bytes of ``cid``."""
    if cid.hash_code == IDENTITY:
        return cid.digest
    data = get_block(cid)
    if type(data) is not bytes:
        data = bytes(data)
    cid.verify(data)
    return data


@dataclass(frozen=True, slots=True)
class FileNode:
    """One node of a UnixFS file DAG, as far as reading the file is concerned.

    ``data`` is the node's own file bytes, ``children`` its ``(cid, file bytes under it)`` pairs
    in order, and ``size`` the file bytes the node stands for (``len(data) + sum(child sizes)``).
    """

    data: bytes
    children: tuple[tuple[Cid, int], ...]
    size: int


def decode_file_node(cid: Cid, block: bytes) -> FileNode:
    """Interpret an (already verified) block as a node of a UnixFS file.

    Raw blocks are leaves. dag-pb blocks must carry a UnixFS File or Raw node whose sizes are
    consistent (see the module docstring).
    """
    if cid.codec == RAW:
        return FileNode(block, (), len(block))
    if cid.codec != DAG_PB:
        raise InvalidInputError(f"{cid}: codec {cid.codec_name} is not part of a UnixFS file")
    node = decode_pbnode(block)
    if node.data is None:
        raise InvalidInputError(f"{cid}: dag-pb node has no UnixFS data")
    ufs = decode_unixfs(node.data)
    if ufs.type not in (DataType.FILE, DataType.RAW):
        raise InvalidInputError(f"{cid}: UnixFS node of type {ufs.type.name}, not a file")
    if ufs.type == DataType.RAW and node.links:
        raise InvalidInputError(f"{cid}: UnixFS Raw node must not have links")
    if len(ufs.blocksizes) != len(node.links):
        raise IntegrityError(f"{cid}: {len(node.links)} links but {len(ufs.blocksizes)} blocksizes")
    inline = ufs.data or b""
    size = len(inline) + sum(ufs.blocksizes)
    if ufs.filesize is not None and ufs.filesize != size:
        raise IntegrityError(f"{cid}: filesize {ufs.filesize} != inline data + blocksizes ({size})")
    children = tuple(zip((link.hash for link in node.links), ufs.blocksizes, strict=True))
    return FileNode(inline, children, size)


def _walk_file(
    root: Cid, get_block: BlockGetter, leaves_only: bool
) -> Iterator[tuple[Cid, int, bytes]]:
    """DFS over a file DAG in content order.

    Yields ``(cid, len(data), data)`` for every node, ``data`` being its inline file bytes.
    With ``leaves_only``, only nodes holding file bytes themselves are yielded (leaves, and
    interior nodes with inline data), and raw children are yielded without being fetched
    (``data`` is then empty and the size comes from the parent's blocksizes).
    """
    stack: list[tuple[Cid, int | None]] = [(root, None)]
    while stack:
        cid, expected = stack.pop()
        if leaves_only and cid.codec == RAW and expected is not None:
            if cid.hash_code == IDENTITY and len(cid.digest) != expected:
                raise IntegrityError(
                    f"{cid}: node holds {len(cid.digest)} bytes, parent says {expected}"
                )
            yield cid, expected, b""
            continue
        node = decode_file_node(cid, _fetch(cid, get_block))
        if expected is not None and node.size != expected:
            raise IntegrityError(f"{cid}: node holds {node.size} bytes, parent says {expected}")
        if not leaves_only or node.data or not node.children:
            yield cid, len(node.data), node.data
        stack.extend(reversed(node.children))


def export_file(root: Cid, get_block: BlockGetter) -> Iterator[bytes]:
    """Yield the bytes of the UnixFS file ``root`` in order, verifying every block.

    Works for raw and dag-pb leaves, CIDv0 and v1, identity CIDs, and any layout (balanced or
    trickle). Raises :class:`~medmesh.errors.BlockMismatchError` for a block that does not hash
    to its CID, :class:`~medmesh.errors.IntegrityError` for inconsistent sizes and
    :class:`~medmesh.errors.InvalidInputError` for malformed or non-file nodes.
    Errors from ``get_block`` (e.g. :class:`~medmesh.errors.NotFoundError`) propagate.

    >>> from medmesh.storage.importer import import_bytes
    >>> root, blocks = import_bytes(b"hello")
    >>> b"".join(export_file(root, blocks.__getitem__))
    b'hello'
    """
    for _cid, _size, data in _walk_file(root, get_block, leaves_only=False):
        if data:
            yield data


def leaf_cids(root: Cid, get_block: BlockGetter) -> Iterator[tuple[Cid, int]]:
    """Yield ``(leaf CID, file bytes in it)`` in file order, for parallel downloads.

    Only interior nodes are fetched (and verified) when the leaves are raw blocks, as in the
    medmesh profile; a raw leaf's length comes from its parent's ``blocksizes``, so the caller
    must check it against the fetched leaf. A dag-pb child cannot be told apart from an interior
    node without reading it, so dag-pb leaves (CIDv0 DAGs) are fetched too. A node with inline
    data *and* links yields itself (with its inline length) before its children. A single-block
    file yields its root.
    """
    for cid, size, _data in _walk_file(root, get_block, leaves_only=True):
        yield cid, size


def _links(cid: Cid, data: bytes) -> tuple[Cid, ...]:
    if cid.codec == RAW:
        return ()
    if cid.codec == DAG_PB:
        return tuple(link.hash for link in decode_pbnode(data).links)
    raise InvalidInputError(f"{cid}: cannot walk codec {cid.codec_name}")


def walk_dfs(root: Cid, get_block: BlockGetter) -> Iterator[Block]:
    """Yield every distinct block of the DAG under ``root`` in DFS pre-order, each once.

    This is the block order of ``ipfs dag export`` and of the reference CAR vectors: a node,
    then the subtrees of its links left to right, skipping blocks already emitted. Every block
    is verified. Supports raw and dag-pb blocks (any UnixFS content, not only files); identity
    blocks are yielded with their inline bytes.
    """
    seen: set[Cid] = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        data = _fetch(cid, get_block)
        yield Block(cid, data)
        stack.extend(reversed(_links(cid, data)))
