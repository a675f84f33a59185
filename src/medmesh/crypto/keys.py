"""Encryption key pairs: the keys that key capsules (HPKE, RFC 9180) are addressed to.

A participant's wallet holds one or more encryption keys (the newest is current); the public
half is published in the on-chain registry and data keys are wrapped to it (see
:mod:`medmesh.crypto.capsule`). Two suites exist, both with HKDF-SHA256 and AES-256-GCM:

=================  ====  ====================================================================
suite              byte  KEM
=================  ====  ====================================================================
``x25519``            1  DHKEM(X25519, HKDF-SHA256), the RFC 9180 default
``mlkem768-x25519``   2  MLKEM768-X25519 hybrid (X-Wing): post-quantum ML-KEM-768 combined
                         with X25519, secure while either holds
=================  ====  ====================================================================

Raw encodings (no framing; the suite is always stored next to the bytes):

* ``x25519`` public key: the 32-byte X25519 public key. Secret: the 32-byte X25519 scalar.
* ``mlkem768-x25519`` public key, 1216 bytes: ML-KEM-768 encapsulation key (1184 bytes) ||
  X25519 public key (32 bytes), the X-Wing order. Secret, 96 bytes: ML-KEM-768 seed
  ``d || z`` (64 bytes, FIPS 203 seed form) || X25519 scalar (32 bytes). (X-Wing itself
  derives both halves from one 32-byte seed; ``cryptography`` builds the hybrid key from two
  component keys, so both component secrets are stored.)

A key is named by its ``key_id``: the first 16 bytes of SHA-256(suite name in ASCII || public
key bytes), shown as 32 hex digits. Hashing the suite name in means the same bytes can never
name keys of two suites.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias, cast, get_args

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.hpke import MLKEM768X25519PrivateKey, MLKEM768X25519PublicKey

from medmesh.crypto.stream import BytesLike
from medmesh.errors import InvalidInputError

__all__ = [
    "DEFAULT_SUITE",
    "KEY_ID_SIZE",
    "SUITE_IDS",
    "EncryptionPrivateKey",
    "EncryptionPublicKey",
    "EncryptionSuite",
    "KeyId",
    "check_suite",
    "suite_from_id",
]

EncryptionSuite: TypeAlias = Literal["x25519", "mlkem768-x25519"]
"""Name of an encryption key suite."""

DEFAULT_SUITE: Final[EncryptionSuite] = "x25519"
SUITE_IDS: Final[Mapping[EncryptionSuite, int]] = {"x25519": 1, "mlkem768-x25519": 2}
"""Suite name -> the byte that stands for it in binary formats."""

_X25519_SIZE: Final = 32
_MLKEM768_PUBLIC_SIZE: Final = 1184
_MLKEM_SEED_SIZE: Final = 64
_PUBLIC_SIZES: Final[Mapping[EncryptionSuite, int]] = {
    "x25519": _X25519_SIZE,
    "mlkem768-x25519": _MLKEM768_PUBLIC_SIZE + _X25519_SIZE,
}
_SECRET_SIZES: Final[Mapping[EncryptionSuite, int]] = {
    "x25519": _X25519_SIZE,
    "mlkem768-x25519": _MLKEM_SEED_SIZE + _X25519_SIZE,
}
KEY_ID_SIZE: Final = 16

HpkePublicKey: TypeAlias = x25519.X25519PublicKey | MLKEM768X25519PublicKey
HpkePrivateKey: TypeAlias = x25519.X25519PrivateKey | MLKEM768X25519PrivateKey


def check_suite(suite: str) -> EncryptionSuite:
    """Return ``suite`` as an :data:`EncryptionSuite`, or raise :class:`InvalidInputError`."""
    if suite not in get_args(EncryptionSuite):
        raise InvalidInputError(f"unknown encryption suite {suite!r}")
    return cast(EncryptionSuite, suite)


def suite_from_id(suite_id: int) -> EncryptionSuite:
    """Return the suite a format byte stands for, or raise :class:`InvalidInputError`."""
    for name, value in SUITE_IDS.items():
        if value == suite_id:
            return name
    raise InvalidInputError(f"unknown encryption suite id {suite_id}")


class KeyId(bytes):
    """The 16-byte identifier of an encryption public key; ``str()`` gives 32 hex digits."""

    def __new__(cls, value: BytesLike) -> KeyId:
        raw = bytes(value)
        if len(raw) != KEY_ID_SIZE:
            raise InvalidInputError(f"key id must be {KEY_ID_SIZE} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def from_hex(cls, text: str) -> KeyId:
        """Parse 32 hex digits."""
        try:
            return cls(bytes.fromhex(text))
        except ValueError as exc:
            raise InvalidInputError("key id must be 32 hex digits") from exc

    @classmethod
    def of(cls, suite: EncryptionSuite, public_bytes: bytes) -> KeyId:
        """Compute the key id of a public key."""
        return cls(hashlib.sha256(suite.encode("ascii") + public_bytes).digest()[:KEY_ID_SIZE])

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"KeyId('{self.hex()}')"


class EncryptionPublicKey:
    """A public encryption key: what capsules are wrapped to.

    Compare with ``==``; usable as a dict key. Build from bytes with :meth:`from_bytes`.

    Example::

        public = EncryptionPublicKey.from_bytes("x25519", raw)
        print(public.key_id)
    """

    __slots__ = ("_hpke", "_key_id", "_raw", "_suite")

    def __init__(self, suite: EncryptionSuite, raw: bytes, hpke_key: HpkePublicKey) -> None:
        """Internal: use :meth:`from_bytes` or :meth:`EncryptionPrivateKey.public_key`."""
        self._suite = suite
        self._raw = raw
        self._hpke = hpke_key
        self._key_id = KeyId.of(suite, raw)

    @classmethod
    def from_bytes(cls, suite: str, data: BytesLike) -> EncryptionPublicKey:
        """Parse the raw public key of ``suite`` (see the module docstring for layouts)."""
        name = check_suite(suite)
        raw = bytes(data)
        if len(raw) != _PUBLIC_SIZES[name]:
            raise InvalidInputError(
                f"{name} public key must be {_PUBLIC_SIZES[name]} bytes, got {len(raw)}"
            )
        try:
            if name == "x25519":
                return cls(name, raw, x25519.X25519PublicKey.from_public_bytes(raw))
            mlkem_public = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_SIZE])
            x_public = x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_SIZE:])
        except ValueError as exc:
            raise InvalidInputError(f"invalid {name} public key") from exc
        return cls(name, raw, MLKEM768X25519PublicKey(mlkem_public, x_public))

    @property
    def suite(self) -> EncryptionSuite:
        """The key's suite name."""
        return self._suite

    @property
    def key_id(self) -> KeyId:
        """The key's 16-byte identifier."""
        return self._key_id

    def to_bytes(self) -> bytes:
        """The raw public key bytes."""
        return self._raw

    def _hpke_key(self) -> HpkePublicKey:
        return self._hpke

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EncryptionPublicKey):
            return NotImplemented
        return self._suite == other._suite and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((self._suite, self._raw))

    def __repr__(self) -> str:
        return f"EncryptionPublicKey(suite={self._suite!r}, key_id='{self._key_id}')"


class EncryptionPrivateKey:
    """A private encryption key: unwraps capsules addressed to its public key.

    ``repr()`` shows only the suite and key id. :meth:`secret_bytes` exports the secret;
    store it only encrypted (see :mod:`medmesh.identity.keystore`).

    Example::

        key = EncryptionPrivateKey.generate("mlkem768-x25519")
        same = EncryptionPrivateKey.from_secret_bytes(key.suite, key.secret_bytes())
    """

    __slots__ = ("_mlkem", "_public", "_suite", "_x25519")

    def __init__(
        self,
        suite: EncryptionSuite,
        x25519_key: x25519.X25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey | None = None,
    ) -> None:
        """Internal: use :meth:`generate` or :meth:`from_secret_bytes`."""
        if (suite == "x25519") != (mlkem_key is None):
            raise InvalidInputError(f"wrong component keys for suite {suite!r}")
        self._suite = suite
        self._x25519 = x25519_key
        self._mlkem = mlkem_key
        x_public = x25519_key.public_key()
        if mlkem_key is None:
            self._public = EncryptionPublicKey(suite, x_public.public_bytes_raw(), x_public)
        else:
            m_public = mlkem_key.public_key()
            raw = m_public.public_bytes_raw() + x_public.public_bytes_raw()
            hpke = MLKEM768X25519PublicKey(m_public, x_public)
            self._public = EncryptionPublicKey(suite, raw, hpke)

    @classmethod
    def generate(cls, suite: str = DEFAULT_SUITE) -> EncryptionPrivateKey:
        """Generate a new random key of ``suite``."""
        name = check_suite(suite)
        x_key = x25519.X25519PrivateKey.generate()
        if name == "x25519":
            return cls(name, x_key)
        return cls(name, x_key, mlkem.MLKEM768PrivateKey.generate())

    @classmethod
    def from_secret_bytes(cls, suite: str, data: BytesLike) -> EncryptionPrivateKey:
        """Rebuild a key from :meth:`secret_bytes` output."""
        name = check_suite(suite)
        raw = bytes(data)
        if len(raw) != _SECRET_SIZES[name]:
            raise InvalidInputError(f"{name} secret key must be {_SECRET_SIZES[name]} bytes")
        try:
            if name == "x25519":
                return cls(name, x25519.X25519PrivateKey.from_private_bytes(raw))
            m_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED_SIZE])
            x_key = x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED_SIZE:])
        except ValueError as exc:
            raise InvalidInputError(f"invalid {name} secret key") from exc
        return cls(name, x_key, m_key)

    @property
    def suite(self) -> EncryptionSuite:
        """The key's suite name."""
        return self._suite

    @property
    def key_id(self) -> KeyId:
        """The key id of the public half."""
        return self._public.key_id

    def public_key(self) -> EncryptionPublicKey:
        """The public half."""
        return self._public

    def secret_bytes(self) -> bytes:
        """Export the secret (32 bytes for x25519, 96 for mlkem768-x25519). Handle with care."""
        x_secret = self._x25519.private_bytes_raw()
        if self._mlkem is None:
            return x_secret
        return self._mlkem.private_bytes_raw() + x_secret

    def _hpke_key(self) -> HpkePrivateKey:
        if self._mlkem is None:
            return self._x25519
        return MLKEM768X25519PrivateKey(self._mlkem, self._x25519)

    def __repr__(self) -> str:
        return f"EncryptionPrivateKey(suite={self._suite!r}, key_id='{self.key_id}')"
