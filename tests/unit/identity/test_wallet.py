"""Wallets: address, DID, EIP-191 signatures, encryption keys, and no secrets in repr."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address

from medmesh.crypto import EncryptionPrivateKey, unwrap_key, wrap_key
from medmesh.errors import InvalidInputError, NotFoundError, SignatureError
from medmesh.identity.wallet import Wallet, recover_signer, verify_signer


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


def test_address_is_checksummed(wallet: Wallet) -> None:
    assert wallet.address.startswith("0x") and len(wallet.address) == 42
    assert wallet.address == to_checksum_address(wallet.address.lower())


def test_did(wallet: Wallet) -> None:
    assert wallet.did(1) == f"did:pkh:eip155:1:{wallet.address}"
    assert wallet.did(31337).endswith(f":31337:{wallet.address}")
    for bad in (0, -1, True):
        with pytest.raises(InvalidInputError):
            wallet.did(bad)


def test_sign_and_recover(wallet: Wallet) -> None:
    signature = wallet.sign_message(b"hello medmesh")
    assert isinstance(signature, bytes) and len(signature) == 65
    assert signature[64] in (27, 28)
    assert recover_signer(b"hello medmesh", signature) == wallet.address
    assert recover_signer(b"hello medmesh!", signature) != wallet.address
    verify_signer(b"hello medmesh", signature, wallet.address.lower())
    with pytest.raises(SignatureError):
        verify_signer(b"hello medmesh", signature, Wallet.create().address)


def test_signature_is_plain_eip191(wallet: Wallet) -> None:
    """Any Ethereum tool recovers the same signer."""
    signature = wallet.sign_message(b"\x00\xffbinary")
    message = encode_defunct(primitive=b"\x00\xffbinary")
    assert Account.recover_message(message, signature=signature) == wallet.address


@pytest.mark.parametrize(
    "signature",
    [b"", b"\x01" * 64, b"\x01" * 66, b"\x00" * 65, b"\x01" * 64 + b"\x05", "0x" + "00" * 65],
    ids=["empty", "short", "long", "zero", "bad_v", "text"],
)
def test_malformed_signatures(signature: bytes) -> None:
    with pytest.raises(SignatureError):
        recover_signer(b"data", signature)


def test_encryption_keys_and_rotation() -> None:
    wallet = Wallet.create()
    first = wallet.encryption_key
    assert wallet.encryption_public_key == first.public_key()
    capsule = wrap_key(b"k" * 32, wallet.encryption_public_key)
    second = wallet.rotate_encryption_key("mlkem768-x25519")
    assert wallet.encryption_key is second
    assert wallet.encryption_public_key.suite == "mlkem768-x25519"
    assert wallet.encryption_keys == (first, second)
    old = wallet.find_encryption_key(capsule.key_id)
    assert unwrap_key(capsule, old) == b"k" * 32
    with pytest.raises(NotFoundError):
        wallet.find_encryption_key(EncryptionPrivateKey.generate().key_id)


def test_create_with_hybrid_suite() -> None:
    assert Wallet.create("mlkem768-x25519").encryption_key.suite == "mlkem768-x25519"
    with pytest.raises(InvalidInputError):
        Wallet.create("rsa")


def test_from_keys() -> None:
    account = Account.create()
    key = EncryptionPrivateKey.generate()
    wallet = Wallet.from_keys(bytes(account.key), [key])
    assert wallet.address == account.address
    with pytest.raises(InvalidInputError):
        Wallet.from_keys(b"\x00" * 32, [key])
    with pytest.raises(InvalidInputError):
        Wallet.from_keys(b"\x01" * 31, [key])
    with pytest.raises(InvalidInputError):
        Wallet.from_keys(bytes(account.key), [])


def test_repr_has_no_key_material() -> None:
    wallet = Wallet.create()
    wallet.rotate_encryption_key("mlkem768-x25519")
    text = repr(wallet) + str(wallet)
    assert wallet._signing_key().hex() not in text
    assert wallet._signing_key().hex()[:16] not in text
    for key in wallet.encryption_keys:
        assert key.secret_bytes().hex()[:16] not in text
        assert key.secret_bytes()[-32:].hex()[:16] not in text
    assert wallet.address in text
