"""Key capsules: HPKE wrapping of data keys, format, and every refusal."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from medmesh.crypto.capsule import KeyCapsule, unwrap_key, wrap_for_all, wrap_key
from medmesh.crypto.errors import CapsuleError, DecryptionError, WrongRecipientError
from medmesh.crypto.keys import EncryptionPrivateKey
from medmesh.errors import InvalidInputError

SUITES = ["x25519", "mlkem768-x25519"]
DEK = os.urandom(32)


@pytest.fixture(scope="module", params=SUITES)
def recipient(request: pytest.FixtureRequest) -> EncryptionPrivateKey:
    return EncryptionPrivateKey.generate(request.param)


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_round_trip(recipient: EncryptionPrivateKey) -> None:
    capsule = wrap_key(DEK, recipient.public_key(), context=b"cid:v1")
    assert capsule.suite == recipient.suite
    assert capsule.key_id == recipient.key_id
    parsed = KeyCapsule.from_bytes(capsule.to_bytes())
    assert parsed == capsule
    assert unwrap_key(parsed, recipient, context=b"cid:v1") == DEK


def test_hybrid_round_trip_and_size() -> None:
    key = EncryptionPrivateKey.generate("mlkem768-x25519")
    capsule = wrap_key(DEK, key.public_key())
    assert len(capsule.to_bytes()) == 23 + 1120 + 32 + 16
    assert unwrap_key(KeyCapsule.from_bytes(capsule.to_bytes()), key) == DEK


def test_layout() -> None:
    key = EncryptionPrivateKey.generate("x25519")
    raw = wrap_key(DEK, key.public_key()).to_bytes()
    assert raw[:5] == b"MMCAP"
    assert raw[5] == 1
    assert raw[6] == 1
    assert raw[7:23] == key.key_id
    assert len(raw) == 23 + 32 + 32 + 16


def test_capsule_is_standard_hpke() -> None:
    """An independent HPKE decryption with the documented info string."""
    key = EncryptionPrivateKey.generate("x25519")
    capsule = wrap_key(DEK, key.public_key(), context=b"ctx")
    suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
    raw_key = x25519.X25519PrivateKey.from_private_bytes(key.secret_bytes())
    assert suite.decrypt(capsule.ciphertext, raw_key, info=b"medmesh/capsule/v1ctx") == DEK


def test_each_wrap_is_fresh(recipient: EncryptionPrivateKey) -> None:
    a = wrap_key(DEK, recipient.public_key())
    b = wrap_key(DEK, recipient.public_key())
    assert a.ciphertext != b.ciphertext


def test_other_recipient(recipient: EncryptionPrivateKey) -> None:
    capsule = wrap_key(DEK, recipient.public_key())
    for suite in SUITES:
        with pytest.raises(WrongRecipientError):
            unwrap_key(capsule, EncryptionPrivateKey.generate(suite))


def test_forged_key_id_still_fails_to_decrypt(recipient: EncryptionPrivateKey) -> None:
    other = EncryptionPrivateKey.generate(recipient.suite)
    capsule = wrap_key(DEK, other.public_key())
    relabelled = KeyCapsule(capsule.suite, recipient.key_id, capsule.ciphertext)
    with pytest.raises(CapsuleError) as info:
        unwrap_key(relabelled, recipient)
    assert not isinstance(info.value, WrongRecipientError)


def test_wrong_context(recipient: EncryptionPrivateKey) -> None:
    capsule = wrap_key(DEK, recipient.public_key(), context=b"record-A")
    with pytest.raises(CapsuleError):
        unwrap_key(capsule, recipient, context=b"record-B")
    with pytest.raises(CapsuleError):
        unwrap_key(capsule, recipient)


def test_tampered_ciphertext(recipient: EncryptionPrivateKey) -> None:
    raw = wrap_key(DEK, recipient.public_key()).to_bytes()
    # first byte of enc, last byte of enc, inside the AEAD ciphertext, inside the tag
    enc_end = 23 + (32 if recipient.suite == "x25519" else 1120)
    for index in (23, enc_end - 1, enc_end + 3, len(raw) - 1):
        with pytest.raises(CapsuleError) as info:
            unwrap_key(KeyCapsule.from_bytes(_flip(raw, index)), recipient)
        assert not isinstance(info.value, WrongRecipientError)


def test_tampered_key_id_is_refused(recipient: EncryptionPrivateKey) -> None:
    raw = wrap_key(DEK, recipient.public_key()).to_bytes()
    with pytest.raises(WrongRecipientError):
        unwrap_key(KeyCapsule.from_bytes(_flip(raw, 10)), recipient)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw[:22],
        lambda raw: b"XXCAP" + raw[5:],
        lambda raw: raw[:5] + b"\x02" + raw[6:],
        lambda raw: raw[:6] + b"\x07" + raw[7:],
        lambda raw: raw[:6] + b"\x02" + raw[7:],  # x25519 body is too short for the hybrid
        lambda raw: raw[: 23 + 40],
    ],
    ids=["short", "magic", "version", "unknown_suite", "suite_mismatch", "truncated"],
)
def test_malformed_bytes(mutate: Callable[[bytes], bytes]) -> None:
    key = EncryptionPrivateKey.generate("x25519")
    raw = wrap_key(DEK, key.public_key()).to_bytes()
    with pytest.raises(CapsuleError):
        KeyCapsule.from_bytes(mutate(raw))


def test_wrap_for_all() -> None:
    keys = [EncryptionPrivateKey.generate(s) for s in ("x25519", "mlkem768-x25519", "x25519")]
    publics = [k.public_key() for k in keys]
    capsules = wrap_for_all(DEK, [*publics, publics[0]], context=b"c")
    assert [c.key_id for c in capsules] == [k.key_id for k in keys]
    for key, capsule in zip(keys, capsules, strict=True):
        assert unwrap_key(capsule, key, context=b"c") == DEK


def test_errors_are_decryption_errors_and_quiet() -> None:
    assert issubclass(CapsuleError, DecryptionError)
    key = EncryptionPrivateKey.generate("x25519")
    capsule = wrap_key(DEK, key.public_key(), context=b"a")
    with pytest.raises(CapsuleError) as info:
        unwrap_key(capsule, key, context=b"b")
    assert DEK.hex() not in str(info.value)
    assert key.secret_bytes().hex() not in str(info.value)


def test_empty_key_and_bad_direct_construction() -> None:
    key = EncryptionPrivateKey.generate("x25519")
    with pytest.raises(InvalidInputError):
        wrap_key(b"", key.public_key())
    with pytest.raises(InvalidInputError):
        KeyCapsule("x25519", key.key_id, b"\x00" * 10)


def test_repr_shows_no_ciphertext() -> None:
    capsule = wrap_key(DEK, EncryptionPrivateKey.generate().public_key())
    assert capsule.ciphertext.hex()[:16] not in repr(capsule)
    assert str(capsule.key_id) in repr(capsule)
