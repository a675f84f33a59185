"""The share manifest of a stored object (DAG-CBOR).

An *object* is a sealed record imported as a UnixFS file DAG; its CID is the DAG root.
The DAG's leaves are grouped, in file order, into *stripes* of ``k`` leaves; each stripe is
erasure-coded into ``n`` *shares*. The code is systematic: shares ``0..k-1`` **are** the
stripe's leaves (sha2-256 raw blocks, fetchable by any IPFS client) and shares ``k..n-1``
are parity blocks addressed with BLAKE3. A stripe of the last few leaves may hold fewer
than ``k`` leaves: its missing data shares are *virtual* all-zero blocks, never stored
(``None`` in the table) and always available to the decoder.

The manifest is a small tree of DAG-CBOR blocks::

    root  {"type": "medmesh/manifest", "version": 1,
           "object": CID, "size": <ciphertext bytes>,
           "chunk_size": 262144, "max_links": 174,
           "erasure": {"scheme": "zfec", "k": 3, "n": 5},
           "proof_segment": 65536,
           "dag": [CID, ...],          interior nodes of the file DAG (replicated)
           "stripes": <count>,
           "tables": [CID, ...]}       stripe tables of up to TABLE_STRIPES stripes each
    table {"type": "medmesh/stripes", "first": <index of its first stripe>,
           "stripes": [[block_len, [share CID or null] * n, [merkle root] * n], ...]}

``block_len`` is the longest leaf of the stripe (the length every share is padded to for
coding); a parity share is ``block_len`` bytes and a data share keeps its leaf length. The
per-share Merkle root (see :mod:`medmesh.storage.merkle`) lets a verifier check a storage
proof of one segment without holding the share. Splitting the stripe list into tables
keeps every block well under 1 MiB, even for multi-GB objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from medmesh.errors import InvalidInputError
from medmesh.storage import dagcbor
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_CBOR, SHA2_256, Cid
from medmesh.storage.erasure import ErasureParams

__all__ = [
    "MANIFEST_TYPE",
    "TABLE_STRIPES",
    "Manifest",
    "ManifestError",
    "ManifestHead",
    "Stripe",
    "decode_head",
    "decode_manifest",
    "decode_table",
    "encode_manifest",
]

MANIFEST_TYPE: Final = "medmesh/manifest"
TABLE_TYPE: Final = "medmesh/stripes"
TABLE_STRIPES: Final = 1024


class ManifestError(InvalidInputError):
    """Not a valid medmesh manifest."""

    code = "invalid_manifest"


@dataclass(frozen=True)
class Stripe:
    """One stripe: its coding length, its n shares (None = virtual zero block) and roots."""

    block_len: int
    shares: tuple[Cid | None, ...]
    roots: tuple[bytes, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything needed to find, check and rebuild an object from its shares."""

    object: Cid
    size: int
    chunk_size: int
    max_links: int
    k: int
    n: int
    proof_segment: int
    dag: tuple[Cid, ...]
    stripes: tuple[Stripe, ...]
    tables: tuple[Cid, ...] = field(default=())

    @property
    def erasure_params(self) -> ErasureParams:
        return ErasureParams(self.k, self.n)

    def share_index(self) -> Iterator[tuple[int, int, Cid]]:
        """(stripe, share index, CID) of every stored share."""
        for s, stripe in enumerate(self.stripes):
            for i, cid in enumerate(stripe.shares):
                if cid is not None:
                    yield s, i, cid


def _cid(value: Any) -> Cid:
    if not isinstance(value, Cid):
        raise ManifestError("manifest field is not a CID")
    return value


def _int(value: Any, lo: int = 0, hi: int = 2**63) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ManifestError("manifest integer out of range")
    return value


def encode_manifest(m: Manifest) -> tuple[Cid, list[Block]]:
    """Encode ``m`` as DAG-CBOR blocks; returns the root CID and all blocks (root last)."""
    blocks: list[Block] = []
    tables: list[Cid] = []
    for first in range(0, len(m.stripes), TABLE_STRIPES):
        rows: list[Any] = [
            [
                st.block_len,
                list(st.shares),
                list(st.roots),
            ]
            for st in m.stripes[first : first + TABLE_STRIPES]
        ]
        data = dagcbor.encode({"type": TABLE_TYPE, "first": first, "stripes": rows})
        cid = Cid.of(data, codec=DAG_CBOR, hash_code=SHA2_256)
        tables.append(cid)
        blocks.append(Block(cid, data))
    root: dict[str, Any] = {
        "type": MANIFEST_TYPE,
        "version": 1,
        "object": m.object,
        "size": m.size,
        "chunk_size": m.chunk_size,
        "max_links": m.max_links,
        "erasure": {"scheme": "zfec", "k": m.k, "n": m.n},
        "proof_segment": m.proof_segment,
        "dag": list(m.dag),
        "stripes": len(m.stripes),
        "tables": tables,
    }
    data = dagcbor.encode(root)
    cid = Cid.of(data, codec=DAG_CBOR, hash_code=SHA2_256)
    blocks.append(Block(cid, data))
    return cid, blocks


def _decode_map(data: bytes, expected_type: str) -> dict[str, Any]:
    try:
        obj = dagcbor.decode(data)
    except InvalidInputError as exc:
        raise ManifestError("manifest block is not valid DAG-CBOR") from exc
    if not isinstance(obj, dict) or obj.get("type") != expected_type:
        raise ManifestError(f"block is not a {expected_type} block")
    return obj


@dataclass(frozen=True)
class ManifestHead:
    """The root block of a manifest, before its stripe tables are fetched."""

    object: Cid
    size: int
    chunk_size: int
    max_links: int
    k: int
    n: int
    proof_segment: int
    dag: tuple[Cid, ...]
    stripe_count: int
    tables: tuple[Cid, ...]


def decode_head(data: bytes) -> ManifestHead:
    """Decode and validate a manifest root block."""
    obj = _decode_map(data, MANIFEST_TYPE)
    if obj.get("version") != 1:
        raise ManifestError("unsupported manifest version")
    erasure = obj.get("erasure")
    if not isinstance(erasure, dict) or erasure.get("scheme") != "zfec":
        raise ManifestError("unsupported erasure scheme")
    k, n = _int(erasure.get("k"), 1, 256), _int(erasure.get("n"), 1, 256)
    if k > n:
        raise ManifestError("manifest has k > n")
    dag, tables = obj.get("dag"), obj.get("tables")
    if not isinstance(dag, list) or not isinstance(tables, list):
        raise ManifestError("manifest lists are malformed")
    stripe_count = _int(obj.get("stripes"))
    if len(tables) != -(-stripe_count // TABLE_STRIPES):
        raise ManifestError("manifest table count does not match its stripe count")
    return ManifestHead(
        object=_cid(obj.get("object")),
        size=_int(obj.get("size")),
        chunk_size=_int(obj.get("chunk_size"), 1, 1 << 20),
        max_links=_int(obj.get("max_links"), 2, 1 << 16),
        k=k,
        n=n,
        proof_segment=_int(obj.get("proof_segment"), 64, 1 << 20),
        dag=tuple(_cid(c) for c in dag),
        stripe_count=stripe_count,
        tables=tuple(_cid(c) for c in tables),
    )


def decode_table(data: bytes, n: int, first: int) -> list[Stripe]:
    """Decode and validate one stripe table of a manifest with ``n`` shares per stripe."""
    obj = _decode_map(data, TABLE_TYPE)
    if obj.get("first") != first:
        raise ManifestError("stripe table is out of place")
    rows = obj.get("stripes")
    if not isinstance(rows, list) or not rows or len(rows) > TABLE_STRIPES:
        raise ManifestError("stripe table is malformed")
    out: list[Stripe] = []
    for row in rows:
        if not isinstance(row, list) or len(row) != 3:
            raise ManifestError("stripe row is malformed")
        block_len, shares, roots = row
        if not isinstance(shares, list) or not isinstance(roots, list):
            raise ManifestError("stripe row is malformed")
        if len(shares) != n or len(roots) != n:
            raise ManifestError("stripe row has the wrong number of shares")
        if not all(isinstance(r, bytes) and len(r) == 32 for r in roots):
            raise ManifestError("stripe row has a malformed Merkle root")
        out.append(
            Stripe(
                block_len=_int(block_len, 0, 1 << 21),
                shares=tuple(None if c is None else _cid(c) for c in shares),
                roots=tuple(roots),
            )
        )
    return out


def decode_manifest(root: bytes, tables: Sequence[bytes]) -> Manifest:
    """Decode a whole manifest from its root block and its table blocks, in order."""
    head = decode_head(root)
    if len(tables) != len(head.tables):
        raise ManifestError("wrong number of stripe tables")
    stripes: list[Stripe] = []
    for i, (cid, data) in enumerate(zip(head.tables, tables, strict=True)):
        cid.verify(data)
        stripes.extend(decode_table(data, head.n, i * TABLE_STRIPES))
    if len(stripes) != head.stripe_count:
        raise ManifestError("manifest stripe count does not match its tables")
    return Manifest(
        object=head.object,
        size=head.size,
        chunk_size=head.chunk_size,
        max_links=head.max_links,
        k=head.k,
        n=head.n,
        proof_segment=head.proof_segment,
        dag=head.dag,
        stripes=tuple(stripes),
        tables=head.tables,
    )
