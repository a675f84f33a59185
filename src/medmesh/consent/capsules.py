"""Key capsules handed to grantees, kept as small blocks in the storage network.

A record's own header carries capsules for the recipients known when it was sealed (the
patient, and the grantees whose kind or all-records grants covered it). A grant made later
gives the grantee a *capsule block*: a DAG-CBOR map stored as one raw block (CIDv1, raw,
sha2-256)::

    {"v": 1, "type": "medmesh/capsules", "grantee": "0x…",
     "capsules": {"<record id hex>": <KeyCapsule bytes>, …},
     "prev": <CID of an older capsule block for the same grant> | absent}

The grant's ``capsule`` word on chain is the block's SHA-256 digest, from which the CID is
rebuilt (raw codec). Blocks are public ciphertext: each capsule opens only with the grantee's
private key, and only the stream whose header hash it is bound to. Blocks are kept under
256 KiB (one raw block); more capsules chain through ``prev``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from medmesh.crypto.capsule import KeyCapsule
from medmesh.errors import InvalidInputError
from medmesh.storage import dagcbor
from medmesh.storage.cid import Cid

__all__ = ["MAX_BLOCK", "CapsuleBlock", "cid_of_digest"]

MAX_BLOCK: Final = 256 * 1024
TYPE: Final = "medmesh/capsules"


def cid_of_digest(digest: bytes) -> Cid:
    """The raw-codec CIDv1 of a block whose SHA-256 is ``digest``."""
    if len(digest) != 32:
        raise InvalidInputError("a capsule reference is a 32-byte SHA-256 digest")
    return Cid.from_bytes(b"\x01\x55\x12\x20" + digest)


@dataclass
class CapsuleBlock:
    grantee: str
    capsules: dict[bytes, KeyCapsule] = field(default_factory=dict)
    prev: Cid | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {
            "v": 1,
            "type": TYPE,
            "grantee": self.grantee,
            "capsules": {"0x" + r.hex(): c.to_bytes() for r, c in self.capsules.items()},
        }
        if self.prev is not None:
            body["prev"] = self.prev
        data = dagcbor.encode(body)
        if len(data) > MAX_BLOCK:
            raise InvalidInputError("too many capsules for one block; split them with prev")
        return data

    @classmethod
    def decode(cls, data: bytes) -> CapsuleBlock:
        body = dagcbor.decode(data)
        if not isinstance(body, dict) or body.get("type") != TYPE or body.get("v") != 1:
            raise InvalidInputError("not a medmesh capsule block")
        raw = body.get("capsules")
        grantee = body.get("grantee")
        prev = body.get("prev")
        if (
            not isinstance(raw, dict)
            or not isinstance(grantee, str)
            or not (prev is None or isinstance(prev, Cid))
        ):
            raise InvalidInputError("malformed capsule block")
        capsules: dict[bytes, KeyCapsule] = {}
        for key, value in raw.items():
            if not isinstance(value, bytes) or not key.startswith("0x") or len(key) != 66:
                raise InvalidInputError("malformed capsule block entry")
            capsules[bytes.fromhex(key[2:])] = KeyCapsule.from_bytes(value)
        return cls(grantee, capsules, prev)
