"""HKDF-SHA256 and one-shot AES-256-GCM helpers."""

from __future__ import annotations

import os

import pytest

from medmesh.crypto.aead import AesGcmKey, decrypt_aes256gcm, encrypt_aes256gcm
from medmesh.crypto.errors import DecryptionError
from medmesh.crypto.kdf import hkdf_sha256
from medmesh.errors import InvalidInputError


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rfc5869_case_3_no_salt_no_info() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_hkdf_labels_separate_keys() -> None:
    secret = os.urandom(32)
    assert hkdf_sha256(secret, info=b"a") != hkdf_sha256(secret, info=b"b")
    with pytest.raises(InvalidInputError):
        hkdf_sha256(secret, info=b"a", length=0)


def test_aead_round_trip_and_failures() -> None:
    key = os.urandom(32)
    nonce, ciphertext = encrypt_aes256gcm(key, b"secret", aad=b"ctx")
    assert len(nonce) == 12 and len(ciphertext) == 6 + 16
    assert decrypt_aes256gcm(key, nonce, ciphertext, aad=b"ctx") == b"secret"
    with pytest.raises(DecryptionError):
        decrypt_aes256gcm(key, nonce, ciphertext, aad=b"other")
    with pytest.raises(DecryptionError):
        decrypt_aes256gcm(os.urandom(32), nonce, ciphertext, aad=b"ctx")
    with pytest.raises(DecryptionError):
        decrypt_aes256gcm(key, nonce, bytes([ciphertext[0] ^ 1]) + ciphertext[1:], aad=b"ctx")
    with pytest.raises(DecryptionError):
        decrypt_aes256gcm(key, nonce[:8], ciphertext, aad=b"ctx")
    with pytest.raises(InvalidInputError):
        encrypt_aes256gcm(b"short", b"x")


def test_a_key_set_up_once_seals_and_opens_like_the_functions() -> None:
    raw = os.urandom(32)
    key = AesGcmKey(raw)
    nonce, ct = key.encrypt(b"body", aad=b"record-1")
    assert decrypt_aes256gcm(raw, nonce, ct, aad=b"record-1") == b"body"
    nonce2, ct2 = encrypt_aes256gcm(raw, b"body", aad=b"record-1")
    assert key.decrypt(nonce2, ct2, aad=b"record-1") == b"body"
    assert nonce != nonce2  # a fresh nonce per value
    with pytest.raises(DecryptionError):
        key.decrypt(nonce, ct, aad=b"record-2")  # bound to its record
    with pytest.raises(DecryptionError):
        key.decrypt(nonce[:8], ct, aad=b"record-1")
    with pytest.raises(InvalidInputError):
        AesGcmKey(raw[:16])
