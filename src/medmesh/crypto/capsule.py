"""Key capsules: a data key wrapped for one recipient with HPKE (RFC 9180).

Each record version has one random data key (DEK, see :mod:`medmesh.crypto.stream`). To give
a participant access, the DEK is encrypted to that participant's encryption public key with
HPKE in base mode (single-shot ``Seal``): the result is a *capsule*. Several recipients mean
several capsules (:func:`wrap_for_all`); revoking means destroying a capsule and re-keying
future versions.

The HPKE ``info`` is ``b"medmesh/capsule/v1" || context``; ``context`` lets the caller bind a
capsule to its use (e.g. the record's CID and version), so a capsule cannot be replayed for
another record: unwrapping with a different context fails.

Binary layout of :meth:`KeyCapsule.to_bytes`::

    offset  size  field
         0     5  magic        b"MMCAP"
         5     1  version      1
         6     1  suite        1 = x25519, 2 = mlkem768-x25519 (see medmesh.crypto.keys)
         7    16  key_id       recipient's key id
        23     *  ciphertext   HPKE enc || AEAD ciphertext of the DEK || 16-byte tag
                               (enc is 32 bytes for x25519, 1120 for mlkem768-x25519)

A 32-byte DEK gives a 103-byte x25519 capsule and a 1191-byte mlkem768-x25519 capsule. The
suite byte and key id are routing hints, not secrets: changing them only makes the capsule
unusable (the recipient's own key id no longer matches, or HPKE fails).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from medmesh.crypto.errors import CapsuleError, WrongRecipientError
from medmesh.crypto.keys import (
    SUITE_IDS,
    EncryptionPrivateKey,
    EncryptionPublicKey,
    EncryptionSuite,
    KeyId,
    check_suite,
    suite_from_id,
)
from medmesh.crypto.stream import BytesLike
from medmesh.errors import InvalidInputError

__all__ = [
    "CAPSULE_MAGIC",
    "CAPSULE_VERSION",
    "INFO_PREFIX",
    "KeyCapsule",
    "unwrap_key",
    "wrap_for_all",
    "wrap_key",
]

CAPSULE_MAGIC: Final = b"MMCAP"
CAPSULE_VERSION: Final = 1
INFO_PREFIX: Final = b"medmesh/capsule/v1"
_HEAD = struct.Struct(">5sBB16s")  # magic, version, suite, key_id
_TAG_SIZE: Final = 16
_KEMS: Final[Mapping[EncryptionSuite, KEM]] = {
    "x25519": KEM.X25519,
    "mlkem768-x25519": KEM.MLKEM768_X25519,
}


def _hpke(suite: EncryptionSuite) -> Suite:
    return Suite(_KEMS[suite], KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _min_ciphertext_size(suite: EncryptionSuite) -> int:
    return _KEMS[suite].enc_length() + _TAG_SIZE


@dataclass(frozen=True, slots=True)
class KeyCapsule:
    """A data key wrapped for one recipient (see the module docstring for the format)."""

    suite: EncryptionSuite
    key_id: KeyId
    ciphertext: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_suite(self.suite)
        if not isinstance(self.key_id, KeyId):
            object.__setattr__(self, "key_id", KeyId(self.key_id))
        if len(self.ciphertext) < _min_ciphertext_size(self.suite):
            raise InvalidInputError(f"{self.suite} capsule ciphertext is too short")

    def to_bytes(self) -> bytes:
        """Serialize to the binary layout."""
        head = _HEAD.pack(CAPSULE_MAGIC, CAPSULE_VERSION, SUITE_IDS[self.suite], self.key_id)
        return head + self.ciphertext

    @classmethod
    def from_bytes(cls, data: BytesLike) -> KeyCapsule:
        """Parse the binary layout; raise :class:`CapsuleError` if it is malformed."""
        raw = bytes(data)
        if len(raw) < _HEAD.size:
            raise CapsuleError(f"capsule is {len(raw)} bytes, shorter than its header")
        magic, version, suite_id, key_id = _HEAD.unpack_from(raw)
        if magic != CAPSULE_MAGIC:
            raise CapsuleError("not a medmesh key capsule (bad magic)")
        if version != CAPSULE_VERSION:
            raise CapsuleError(f"unsupported capsule version {version}")
        try:
            return cls(suite_from_id(suite_id), KeyId(key_id), raw[_HEAD.size :])
        except InvalidInputError as exc:
            raise CapsuleError(f"malformed capsule: {exc.message}") from exc

    def __repr__(self) -> str:
        return (
            f"KeyCapsule(suite={self.suite!r}, key_id='{self.key_id}', "
            f"ciphertext=<{len(self.ciphertext)} bytes>)"
        )


def wrap_key(dek: BytesLike, recipient: EncryptionPublicKey, context: bytes = b"") -> KeyCapsule:
    """Wrap ``dek`` for ``recipient``, bound to ``context``.

    Example::

        capsule = wrap_key(dek, alice.encryption_public_key, context=cid_bytes)
        assert unwrap_key(capsule, alice.encryption_key, context=cid_bytes) == dek
    """
    if len(dek) == 0:
        raise InvalidInputError("cannot wrap an empty key")
    ciphertext = _hpke(recipient.suite).encrypt(
        bytes(dek), recipient._hpke_key(), info=INFO_PREFIX + context
    )
    return KeyCapsule(recipient.suite, recipient.key_id, ciphertext)


def wrap_for_all(
    dek: BytesLike, recipients: Iterable[EncryptionPublicKey], context: bytes = b""
) -> list[KeyCapsule]:
    """Wrap ``dek`` once per recipient (duplicates are wrapped once), in order."""
    seen: set[EncryptionPublicKey] = set()
    capsules = []
    for recipient in recipients:
        if recipient not in seen:
            seen.add(recipient)
            capsules.append(wrap_key(dek, recipient, context))
    return capsules


def unwrap_key(
    capsule: KeyCapsule, private_key: EncryptionPrivateKey, context: bytes = b""
) -> bytes:
    """Recover the data key from ``capsule`` with ``private_key``.

    Raises :class:`WrongRecipientError` if the capsule is addressed to another key, and
    :class:`CapsuleError` if it fails to decrypt (tampered, or a different ``context``).
    """
    if capsule.suite != private_key.suite or capsule.key_id != private_key.key_id:
        raise WrongRecipientError(
            f"capsule is for {capsule.suite} key {capsule.key_id}, "
            f"not {private_key.suite} key {private_key.key_id}"
        )
    try:
        return _hpke(capsule.suite).decrypt(
            capsule.ciphertext, private_key._hpke_key(), info=INFO_PREFIX + context
        )
    except (InvalidTag, ValueError) as exc:
        raise CapsuleError(
            "capsule failed to decrypt (tampered, corrupt, or a different context)"
        ) from exc
