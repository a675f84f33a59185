"""A block: the bytes of one IPLD node together with the CID that addresses them.

Shared by the importer, exporter, CAR reader/writer and the storage client. A :class:`Block`
is a plain named tuple so that it is cheap to create for every 256 KiB leaf; it does *not*
verify itself on construction (hashing is the expensive part and is done exactly once, where
the bytes enter the process: see :meth:`Block.verified`).
"""

from __future__ import annotations

from typing import NamedTuple

from medmesh.storage.cid import Cid

__all__ = ["Block"]


class Block(NamedTuple):
    """A CID and the block bytes it addresses.

    >>> b = Block.verified(Cid.of(b"hi"), b"hi")
    >>> b.data
    b'hi'
    """

    cid: Cid
    data: bytes

    @classmethod
    def verified(cls, cid: Cid, data: bytes) -> Block:
        """Build a block after checking that ``data`` hashes to ``cid``.

        Raises :class:`medmesh.errors.BlockMismatchError` when it does not.
        """
        cid.verify(data)
        return cls(cid, data)
