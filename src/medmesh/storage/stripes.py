"""The CPU work of a put, one stripe at a time: hash leaves, compute parity, hash shares.

Runs in worker threads: SHA-256 (hashlib), BLAKE3, zfec and the Merkle roots all release
the GIL on large buffers, so two workers keep two cores busy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from medmesh.storage.cid import BLAKE3, RAW, SHA2_256, Cid
from medmesh.storage.erasure import ErasureParams, encode_parity, pad_stripe
from medmesh.storage.manifest import Stripe
from medmesh.storage.merkle import merkle_root

__all__ = ["VIRTUAL_ROOT", "EncodedStripe", "encode_stripe_group"]

#: Merkle root recorded for a virtual (never stored, all-zero) share.
VIRTUAL_ROOT: Final = bytes(32)


@dataclass(frozen=True)
class EncodedStripe:
    """A stripe ready to upload: its shares (None for virtual ones) and manifest row."""

    index: int
    k: int
    block_len: int
    shares: tuple[tuple[Cid, bytes] | None, ...]
    roots: tuple[bytes, ...]

    @property
    def leaves(self) -> Iterator[tuple[Cid, int]]:
        """(CID, length) of the stripe's leaves (its real data shares), in file order."""
        for share in self.shares[: self.k]:
            if share is not None:
                yield share[0], len(share[1])

    def row(self) -> Stripe:
        return Stripe(
            block_len=self.block_len,
            shares=tuple(None if s is None else s[0] for s in self.shares),
            roots=self.roots,
        )

    @property
    def nbytes(self) -> int:
        return sum(len(s[1]) for s in self.shares if s is not None)


def encode_stripe_group(
    first_index: int,
    leaves: Sequence[bytes],
    params: ErasureParams,
    proof_segment: int,
) -> list[EncodedStripe]:
    """Encode consecutive stripes of ``params.k`` leaves (the last may be short)."""
    out: list[EncodedStripe] = []
    k = params.k
    for s, start in enumerate(range(0, len(leaves), k)):
        data = list(leaves[start : start + k])
        padded, _lengths = pad_stripe(data, params)
        block_len = len(padded[0]) if padded else 0
        parity = encode_parity(padded, params) if params.n > k else []
        shares: list[tuple[Cid, bytes] | None] = []
        roots: list[bytes] = []
        for i in range(k):
            if i < len(data):
                leaf = data[i]
                shares.append((Cid.of(leaf, RAW, SHA2_256), leaf))
                roots.append(merkle_root(leaf, proof_segment))
            else:
                shares.append(None)
                roots.append(VIRTUAL_ROOT)
        for p in parity:
            shares.append((Cid.of(p, RAW, BLAKE3), p))
            roots.append(merkle_root(p, proof_segment))
        out.append(EncodedStripe(first_index + s, k, block_len, tuple(shares), tuple(roots)))
    return out
