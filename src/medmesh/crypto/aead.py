"""One-shot AES-256-GCM for small secrets (keystore entries, wrapped keys).

Records are sealed with :mod:`medmesh.crypto.stream`; this module is for values of a few
bytes to a few kilobytes that are encrypted whole. Each call draws a fresh random 96-bit
nonce, which is safe for up to 2**32 messages under one key; callers that store the result
keep ``nonce`` and ``ciphertext`` (ciphertext || 16-byte tag) side by side.
"""

from __future__ import annotations

import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medmesh.crypto.errors import DecryptionError
from medmesh.crypto.stream import BytesLike
from medmesh.errors import InvalidInputError

__all__ = ["NONCE_SIZE", "AesGcmKey", "decrypt_aes256gcm", "encrypt_aes256gcm"]

NONCE_SIZE: Final = 12
_KEY_SIZE: Final = 32


class AesGcmKey:
    """One AES-256-GCM key, set up once for many values (an index sealing a row per
    resource): :func:`encrypt_aes256gcm` and :func:`decrypt_aes256gcm` without the per-call
    key schedule."""

    def __init__(self, key: BytesLike) -> None:
        if len(key) != _KEY_SIZE:
            raise InvalidInputError(f"AES-256-GCM key must be {_KEY_SIZE} bytes")
        self._aead = AESGCM(bytes(key))

    def encrypt(self, plaintext: BytesLike, aad: bytes = b"") -> tuple[bytes, bytes]:
        """Encrypt ``plaintext``; return ``(nonce, ciphertext_with_tag)``."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce, self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: BytesLike, aad: bytes = b"") -> bytes:
        """Decrypt and verify; raise :class:`DecryptionError` if anything was altered."""
        if len(nonce) != NONCE_SIZE:
            raise DecryptionError(f"AES-256-GCM nonce must be {NONCE_SIZE} bytes")
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptionError("AES-256-GCM authentication failed") from None


def encrypt_aes256gcm(
    key: BytesLike, plaintext: BytesLike, aad: bytes = b""
) -> tuple[bytes, bytes]:
    """Encrypt ``plaintext``; return ``(nonce, ciphertext_with_tag)``."""
    return AesGcmKey(key).encrypt(plaintext, aad)


def decrypt_aes256gcm(
    key: BytesLike, nonce: bytes, ciphertext: BytesLike, aad: bytes = b""
) -> bytes:
    """Decrypt and verify; raise :class:`DecryptionError` if anything was altered."""
    return AesGcmKey(key).decrypt(nonce, ciphertext, aad)
