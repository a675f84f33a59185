"""Encryption key pairs: encodings, key ids, equality, no secrets in repr."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from medmesh.crypto.keys import (
    SUITE_IDS,
    EncryptionPrivateKey,
    EncryptionPublicKey,
    KeyId,
    suite_from_id,
)
from medmesh.errors import InvalidInputError

SUITES = ["x25519", "mlkem768-x25519"]
SIZES = {"x25519": (32, 32), "mlkem768-x25519": (1216, 96)}


@pytest.mark.parametrize("suite", SUITES)
def test_sizes_and_round_trips(suite: str) -> None:
    key = EncryptionPrivateKey.generate(suite)
    public = key.public_key()
    assert (len(public.to_bytes()), len(key.secret_bytes())) == SIZES[suite]
    again = EncryptionPrivateKey.from_secret_bytes(suite, key.secret_bytes())
    assert again.public_key() == public
    assert again.secret_bytes() == key.secret_bytes()
    assert EncryptionPublicKey.from_bytes(suite, public.to_bytes()) == public
    assert key.suite == public.suite == suite


def test_hybrid_layout_is_mlkem_then_x25519() -> None:
    key = EncryptionPrivateKey.generate("mlkem768-x25519")
    secret, public = key.secret_bytes(), key.public_key().to_bytes()
    m_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:64])
    x_key = x25519.X25519PrivateKey.from_private_bytes(secret[64:])
    assert public[:1184] == m_key.public_key().public_bytes_raw()
    assert public[1184:] == x_key.public_key().public_bytes_raw()


def test_x25519_public_is_the_raw_point() -> None:
    key = EncryptionPrivateKey.generate("x25519")
    raw = x25519.X25519PrivateKey.from_private_bytes(key.secret_bytes())
    assert key.public_key().to_bytes() == raw.public_key().public_bytes_raw()


@pytest.mark.parametrize("suite", SUITES)
def test_key_id(suite: str) -> None:
    key = EncryptionPrivateKey.generate(suite)
    public = key.public_key()
    expected = hashlib.sha256(suite.encode() + public.to_bytes()).digest()[:16]
    assert public.key_id == expected == key.key_id
    assert isinstance(public.key_id, KeyId)
    assert str(public.key_id) == expected.hex()
    assert KeyId.from_hex(expected.hex()) == public.key_id


def test_key_id_validation() -> None:
    with pytest.raises(InvalidInputError):
        KeyId(b"short")
    with pytest.raises(InvalidInputError):
        KeyId.from_hex("zz" * 16)


def test_same_bytes_in_two_suites_have_different_ids() -> None:
    raw = b"\x09" + b"\x00" * 31
    assert KeyId.of("x25519", raw) != KeyId.of("mlkem768-x25519", raw)


def test_equality_and_hashing() -> None:
    a = EncryptionPrivateKey.generate().public_key()
    b = EncryptionPublicKey.from_bytes("x25519", a.to_bytes())
    c = EncryptionPrivateKey.generate().public_key()
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != a.to_bytes()


@pytest.mark.parametrize("suite", SUITES)
def test_length_checks(suite: str) -> None:
    public_size, secret_size = SIZES[suite]
    with pytest.raises(InvalidInputError):
        EncryptionPublicKey.from_bytes(suite, b"\x01" * (public_size - 1))
    with pytest.raises(InvalidInputError):
        EncryptionPublicKey.from_bytes(suite, b"\x01" * (public_size + 1))
    with pytest.raises(InvalidInputError):
        EncryptionPrivateKey.from_secret_bytes(suite, b"\x01" * (secret_size + 1))


def test_invalid_mlkem_public_key_is_rejected() -> None:
    # ML-KEM encapsulation keys must hold coefficients < q = 3329; 0xff bytes are not.
    with pytest.raises(InvalidInputError):
        EncryptionPublicKey.from_bytes("mlkem768-x25519", b"\xff" * 1216)


def test_unknown_suite() -> None:
    with pytest.raises(InvalidInputError):
        EncryptionPrivateKey.generate("rsa")
    with pytest.raises(InvalidInputError):
        EncryptionPublicKey.from_bytes("p256", b"\x00" * 32)
    with pytest.raises(InvalidInputError):
        suite_from_id(99)
    assert {suite_from_id(i) for i in SUITE_IDS.values()} == set(SUITES)


@pytest.mark.parametrize("suite", SUITES)
def test_repr_has_no_secret(suite: str) -> None:
    key = EncryptionPrivateKey.generate(suite)
    text = repr(key) + str(key)
    assert key.secret_bytes().hex() not in text
    assert key.secret_bytes()[-32:].hex() not in text
    assert str(key.key_id) in text
