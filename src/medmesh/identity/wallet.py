"""Wallets: a participant's signing key and encryption keys.

A :class:`Wallet` pairs

* one secp256k1 key (an Ethereum account, via ``eth-account``): its address names the
  participant (DID ``did:pkh:eip155:<chain-id>:<address>``, CAIP-10) and it signs requests
  (EIP-191 ``personal_sign``) and transactions; and
* a list of encryption private keys (:class:`medmesh.crypto.EncryptionPrivateKey`), oldest
  first. The last one is current: new capsules are wrapped to it. Older ones stay so that
  capsules made before a rotation still open (:meth:`Wallet.find_encryption_key`).

The signing key never encrypts and the encryption keys never sign: one key per purpose.
Neither ``repr()`` nor ``str()`` of a wallet shows key material; wallets are persisted only
through :mod:`medmesh.identity.keystore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys.constants import SECPK1_N
from eth_keys.datatypes import PrivateKey
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError

from medmesh.crypto import EncryptionPrivateKey, EncryptionPublicKey, KeyId
from medmesh.crypto.keys import DEFAULT_SUITE
from medmesh.errors import InvalidInputError, NotFoundError, SignatureError

__all__ = ["SIGNATURE_SIZE", "Wallet", "recover_signer", "verify_signer"]

SIGNATURE_SIZE = 65
"""Bytes in an EIP-191 signature: r (32) || s (32) || v (1, 27 or 28)."""


class Wallet:
    """A secp256k1 account plus encryption keys (the last one is current).

    Example::

        wallet = Wallet.create()
        signature = wallet.sign_message(b"hello")
        assert recover_signer(b"hello", signature) == wallet.address
        print(wallet.did(31337))
    """

    __slots__ = ("_account", "_encryption_keys")

    def __init__(
        self, account: LocalAccount, encryption_keys: Sequence[EncryptionPrivateKey]
    ) -> None:
        """Wrap an ``eth-account`` account and at least one encryption key (oldest first)."""
        if not encryption_keys:
            raise InvalidInputError("a wallet needs at least one encryption key")
        self._account = account
        self._encryption_keys = list(encryption_keys)

    @classmethod
    def create(cls, suite: str = DEFAULT_SUITE) -> Wallet:
        """Create a wallet with a new random signing key and one encryption key of ``suite``."""
        encryption_key = EncryptionPrivateKey.generate(suite)
        return cls(Account.create(), [encryption_key])

    @classmethod
    def from_keys(
        cls, signing_key: bytes, encryption_keys: Sequence[EncryptionPrivateKey]
    ) -> Wallet:
        """Rebuild a wallet from a 32-byte secp256k1 private key and its encryption keys."""
        if len(signing_key) != 32:
            raise InvalidInputError("secp256k1 private key must be 32 bytes")
        try:
            account = Account.from_key(signing_key)
        except (ValueError, ValidationError) as exc:
            raise InvalidInputError("invalid secp256k1 private key") from exc
        return cls(account, encryption_keys)

    @property
    def address(self) -> str:
        """The Ethereum address, EIP-55 checksummed (``0x`` + 40 hex digits)."""
        return str(self._account.address)

    def did(self, chain_id: int) -> str:
        """The participant's DID on chain ``chain_id``: ``did:pkh:eip155:<chain_id>:<address>``."""
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise InvalidInputError("chain id must be a positive integer")
        return f"did:pkh:eip155:{chain_id}:{self.address}"

    def sign_message(self, data: bytes) -> bytes:
        """Sign ``data`` with EIP-191 ``personal_sign``; return the 65-byte signature."""
        signed = self._account.sign_message(encode_defunct(primitive=bytes(data)))
        return bytes(signed.signature)

    def sign_digest(self, digest: bytes) -> tuple[int, int, int]:
        """Sign a 32-byte hash the caller computed; return ``(v, r, s)``, ``v`` in {0, 1}.

        A raw ECDSA secp256k1 signature with low ``s`` (``s <= n/2``, as Ethereum and
        RFC 8812 ES256K verifiers expect), for formats that hash their own input, such as
        JWS ES256K (``digest`` = SHA-256 of the signing input). Never use it for Ethereum
        messages or transactions: use :meth:`sign_message` and :meth:`sign_transaction`,
        which add the domain separation that makes a signature mean only one thing.
        """
        if not isinstance(digest, bytes | bytearray) or len(digest) != 32:
            raise InvalidInputError("digest must be 32 bytes")
        signature = PrivateKey(self._signing_key()).sign_msg_hash(bytes(digest))
        v, r, s = signature.v, signature.r, signature.s
        if s > SECPK1_N // 2:  # both eth-keys backends already do this; stay canonical
            v, s = v ^ 1, SECPK1_N - s
        return v, r, s

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """Sign an Ethereum transaction (EIP-1559 or legacy fields); return the raw bytes."""
        return bytes(self._account.sign_transaction(tx).raw_transaction)

    @property
    def encryption_key(self) -> EncryptionPrivateKey:
        """The current encryption private key."""
        return self._encryption_keys[-1]

    @property
    def encryption_public_key(self) -> EncryptionPublicKey:
        """The current encryption public key (publish this one)."""
        return self._encryption_keys[-1].public_key()

    @property
    def encryption_keys(self) -> tuple[EncryptionPrivateKey, ...]:
        """All encryption private keys, oldest first."""
        return tuple(self._encryption_keys)

    def find_encryption_key(self, key_id: KeyId) -> EncryptionPrivateKey:
        """Return the encryption key named ``key_id`` (current or retired).

        Raises :class:`medmesh.errors.NotFoundError` if the wallet has no such key.
        """
        for key in reversed(self._encryption_keys):
            if key.key_id == key_id:
                return key
        raise NotFoundError(f"no encryption key {key_id} in this wallet")

    def rotate_encryption_key(self, suite: str = DEFAULT_SUITE) -> EncryptionPrivateKey:
        """Generate a new current encryption key of ``suite`` and return it.

        Older keys are kept for opening existing capsules; save the wallet afterwards.
        """
        key = EncryptionPrivateKey.generate(suite)
        self._encryption_keys.append(key)
        return key

    def _signing_key(self) -> bytes:
        """The 32-byte secp256k1 private key; for :mod:`medmesh.identity.keystore` only."""
        return bytes(self._account.key)

    def __repr__(self) -> str:
        return (
            f"Wallet(address={self.address!r}, "
            f"encryption_key_id='{self.encryption_key.key_id}', "
            f"encryption_keys={len(self._encryption_keys)})"
        )


def recover_signer(data: bytes, signature: bytes) -> str:
    """Return the checksummed address that signed ``data`` (EIP-191 ``personal_sign``).

    Raises :class:`medmesh.errors.SignatureError` if ``signature`` is malformed. A valid
    signature by another key recovers another address: compare it with the one you expect,
    or use :func:`verify_signer`.
    """
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"signature must be {SIGNATURE_SIZE} bytes")
    try:
        address = Account.recover_message(
            encode_defunct(primitive=bytes(data)), signature=bytes(signature)
        )
    except (BadSignature, ValidationError, ValueError, IndexError, TypeError) as exc:
        raise SignatureError("malformed or invalid signature") from exc
    return str(address)


def verify_signer(data: bytes, signature: bytes, address: str) -> None:
    """Raise :class:`medmesh.errors.SignatureError` unless ``address`` signed ``data``.

    ``address`` is compared case-insensitively (checksummed or not).
    """
    if recover_signer(data, signature).lower() != address.lower():
        raise SignatureError("signature is not from the expected address")
