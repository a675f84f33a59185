"""Key derivation: HKDF-SHA256 (RFC 5869).

Used to derive independent subkeys from one secret, each bound to its purpose by a distinct
``info`` label (for example ``b"medmesh/keystore/v1/wrap"``). Labels follow the pattern
``medmesh/<component>/v<version>/<purpose>`` so that no two uses can collide.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medmesh.crypto.stream import BytesLike
from medmesh.errors import InvalidInputError

__all__ = ["hkdf_sha256"]

_MAX_LENGTH = 255 * 32


def hkdf_sha256(
    ikm: BytesLike, *, info: bytes, length: int = 32, salt: bytes | None = None
) -> bytes:
    """Derive ``length`` bytes from the input keying material ``ikm`` with HKDF-SHA256.

    Example::

        wrap_key = hkdf_sha256(secret, info=b"medmesh/keystore/v1/wrap")
    """
    if not 1 <= length <= _MAX_LENGTH:
        raise InvalidInputError(f"HKDF-SHA256 output length must be 1..{_MAX_LENGTH}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(bytes(ikm))
