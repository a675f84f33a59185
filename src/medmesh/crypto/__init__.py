"""medmesh.crypto: sealing records and wrapping their keys.

This is the only medmesh package that imports ``cryptography``; everything else goes through
these wrappers, so the algorithms and formats are chosen and reviewed in one place.

* :mod:`~medmesh.crypto.stream` seals a record with a streaming AEAD (AES-256-GCM over
  segments, STREAM construction) under a fresh random data key.
* :mod:`~medmesh.crypto.keys` holds encryption key pairs (X25519, or ML-KEM-768 + X25519).
* :mod:`~medmesh.crypto.capsule` wraps a data key for each recipient with HPKE (RFC 9180).
* :mod:`~medmesh.crypto.kdf` and :mod:`~medmesh.crypto.aead` are small helpers (HKDF-SHA256,
  one-shot AES-256-GCM) for other packages such as the keystore.
* :mod:`~medmesh.crypto.errors` is the tree of :class:`DecryptionError`.

Example::

    from medmesh import crypto

    dek = crypto.new_data_key()
    sealed = crypto.seal(dek, b"record")
    capsule = crypto.wrap_key(dek, bob_public)
    assert crypto.open_sealed(crypto.unwrap_key(capsule, bob_private), sealed) == b"record"
"""

from __future__ import annotations

from medmesh.crypto.aead import decrypt_aes256gcm as decrypt_aes256gcm
from medmesh.crypto.aead import encrypt_aes256gcm as encrypt_aes256gcm
from medmesh.crypto.capsule import KeyCapsule as KeyCapsule
from medmesh.crypto.capsule import unwrap_key as unwrap_key
from medmesh.crypto.capsule import wrap_for_all as wrap_for_all
from medmesh.crypto.capsule import wrap_key as wrap_key
from medmesh.crypto.errors import CapsuleError as CapsuleError
from medmesh.crypto.errors import DecryptionError as DecryptionError
from medmesh.crypto.errors import InvalidHeaderError as InvalidHeaderError
from medmesh.crypto.errors import SegmentOrderError as SegmentOrderError
from medmesh.crypto.errors import SegmentTamperedError as SegmentTamperedError
from medmesh.crypto.errors import TrailingDataError as TrailingDataError
from medmesh.crypto.errors import TruncatedStreamError as TruncatedStreamError
from medmesh.crypto.errors import WrongKeyError as WrongKeyError
from medmesh.crypto.errors import WrongRecipientError as WrongRecipientError
from medmesh.crypto.kdf import hkdf_sha256 as hkdf_sha256
from medmesh.crypto.keys import EncryptionPrivateKey as EncryptionPrivateKey
from medmesh.crypto.keys import EncryptionPublicKey as EncryptionPublicKey
from medmesh.crypto.keys import EncryptionSuite as EncryptionSuite
from medmesh.crypto.keys import KeyId as KeyId
from medmesh.crypto.stream import DEFAULT_SEGMENT_SIZE as DEFAULT_SEGMENT_SIZE
from medmesh.crypto.stream import HEADER_SIZE as HEADER_SIZE
from medmesh.crypto.stream import BytesLike as BytesLike
from medmesh.crypto.stream import Opener as Opener
from medmesh.crypto.stream import Sealer as Sealer
from medmesh.crypto.stream import SealHeader as SealHeader
from medmesh.crypto.stream import new_data_key as new_data_key
from medmesh.crypto.stream import open_chunks as open_chunks
from medmesh.crypto.stream import open_sealed as open_sealed
from medmesh.crypto.stream import open_segment as open_segment
from medmesh.crypto.stream import parse_header as parse_header
from medmesh.crypto.stream import plaintext_size as plaintext_size
from medmesh.crypto.stream import seal as seal
from medmesh.crypto.stream import seal_chunks as seal_chunks
from medmesh.crypto.stream import sealed_size as sealed_size
from medmesh.crypto.stream import segment_offset as segment_offset

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "HEADER_SIZE",
    "BytesLike",
    "CapsuleError",
    "DecryptionError",
    "EncryptionPrivateKey",
    "EncryptionPublicKey",
    "EncryptionSuite",
    "InvalidHeaderError",
    "KeyCapsule",
    "KeyId",
    "Opener",
    "SealHeader",
    "Sealer",
    "SegmentOrderError",
    "SegmentTamperedError",
    "TrailingDataError",
    "TruncatedStreamError",
    "WrongKeyError",
    "WrongRecipientError",
    "decrypt_aes256gcm",
    "encrypt_aes256gcm",
    "hkdf_sha256",
    "new_data_key",
    "open_chunks",
    "open_sealed",
    "open_segment",
    "parse_header",
    "plaintext_size",
    "seal",
    "seal_chunks",
    "sealed_size",
    "segment_offset",
    "unwrap_key",
    "wrap_for_all",
    "wrap_key",
]
