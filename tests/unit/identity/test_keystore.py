"""Keystore: Ethereum keystore v3 compatibility, medmesh section, errors, atomic writes."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from medmesh.errors import InvalidInputError, KeystoreError
from medmesh.identity.keystore import (
    WrongPassphraseError,
    import_wallet,
    load_wallet,
    read_address,
    save_wallet,
)
from medmesh.identity.wallet import Wallet

N = 2**10  # small scrypt cost: fast tests
PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    wallet = Wallet.create()
    wallet.rotate_encryption_key("mlkem768-x25519")
    return wallet


@pytest.fixture
def saved(tmp_path: Path, wallet: Wallet) -> Path:
    return save_wallet(wallet, tmp_path / "wallet.json", PASSPHRASE, scrypt_n=N)


def _document(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text())
    assert isinstance(document, dict)
    return document


def _rewrite(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))


def test_round_trip(saved: Path, wallet: Wallet) -> None:
    loaded = load_wallet(saved, PASSPHRASE)
    assert loaded.address == wallet.address
    assert loaded._signing_key() == wallet._signing_key()
    assert [k.secret_bytes() for k in loaded.encryption_keys] == [
        k.secret_bytes() for k in wallet.encryption_keys
    ]
    assert loaded.encryption_key.suite == "mlkem768-x25519"


def test_file_is_an_ethereum_keystore_v3(saved: Path, wallet: Wallet) -> None:
    document = _document(saved)
    assert document["version"] == 3
    assert document["crypto"]["kdf"] == "scrypt"
    assert document["crypto"]["kdfparams"]["n"] == N
    plain = json.dumps({k: v for k, v in document.items() if k != "medmesh"})
    key = Account.decrypt(plain, PASSPHRASE)  # plain eth-account, as any wallet would
    assert Account.from_key(key).address == wallet.address
    assert Account.decrypt(document, PASSPHRASE) == key  # the extra field is ignored


def test_medmesh_section(saved: Path, wallet: Wallet) -> None:
    section = _document(saved)["medmesh"]
    assert section["version"] == 1
    entries = section["encryption_keys"]
    assert [e["suite"] for e in entries] == ["x25519", "mlkem768-x25519"]
    for entry, key in zip(entries, wallet.encryption_keys, strict=True):
        assert entry["public"] == key.public_key().to_bytes().hex()
        assert len(bytes.fromhex(entry["nonce"])) == 12
        assert len(bytes.fromhex(entry["ciphertext"])) == len(key.secret_bytes()) + 16


def test_no_secret_in_clear(saved: Path, wallet: Wallet) -> None:
    text = saved.read_text()
    assert wallet._signing_key().hex() not in text
    for key in wallet.encryption_keys:
        assert key.secret_bytes().hex()[:24] not in text
    assert PASSPHRASE not in text


def test_file_mode_and_no_leftovers(saved: Path) -> None:
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert [p.name for p in saved.parent.iterdir()] == ["wallet.json"]


def test_read_address_needs_no_passphrase(saved: Path, wallet: Wallet) -> None:
    assert read_address(saved) == wallet.address


def test_wrong_passphrase(saved: Path) -> None:
    with pytest.raises(WrongPassphraseError) as info:
        load_wallet(saved, "wrong passphrase")
    assert isinstance(info.value, KeystoreError)
    assert str(saved) in str(info.value)
    assert "wrong passphrase" in str(info.value)
    assert PASSPHRASE not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(KeystoreError, match="does not exist") as info:
        load_wallet(path, PASSPHRASE)
    assert str(path) in str(info.value)
    with pytest.raises(KeystoreError):
        read_address(path)


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", '"text"'])
def test_corrupt_json(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KeystoreError) as info:
        load_wallet(path, PASSPHRASE)
    assert not isinstance(info.value, WrongPassphraseError)
    assert str(path) in str(info.value)


def test_plain_ethereum_keystore_is_not_a_wallet(tmp_path: Path) -> None:
    path = tmp_path / "eth.json"
    path.write_text(json.dumps(Account.encrypt(Account.create().key, PASSPHRASE, iterations=N)))
    with pytest.raises(KeystoreError, match="no medmesh section"):
        load_wallet(path, PASSPHRASE)


def test_damaged_v3_section(saved: Path) -> None:
    document = _document(saved)
    del document["crypto"]["kdfparams"]
    _rewrite(saved, document)
    with pytest.raises(KeystoreError) as info:
        load_wallet(saved, PASSPHRASE)
    assert not isinstance(info.value, WrongPassphraseError)


def test_tampered_encryption_key_entry(saved: Path) -> None:
    document = _document(saved)
    ciphertext = bytearray(bytes.fromhex(document["medmesh"]["encryption_keys"][0]["ciphertext"]))
    ciphertext[0] ^= 1
    document["medmesh"]["encryption_keys"][0]["ciphertext"] = ciphertext.hex()
    _rewrite(saved, document)
    with pytest.raises(KeystoreError, match="encryption key 0"):
        load_wallet(saved, PASSPHRASE)


def test_swapped_public_key_is_detected(saved: Path) -> None:
    document = _document(saved)
    other = Wallet.create().encryption_public_key.to_bytes().hex()
    document["medmesh"]["encryption_keys"][0]["public"] = other
    _rewrite(saved, document)
    with pytest.raises(KeystoreError, match="encryption key 0"):
        load_wallet(saved, PASSPHRASE)


def test_malformed_entry(saved: Path) -> None:
    document = _document(saved)
    document["medmesh"]["encryption_keys"][1]["nonce"] = "not hex"
    _rewrite(saved, document)
    with pytest.raises(KeystoreError, match="encryption key 1 is malformed"):
        load_wallet(saved, PASSPHRASE)


def test_address_mismatch(saved: Path) -> None:
    document = _document(saved)
    document["address"] = Wallet.create().address[2:].lower()
    _rewrite(saved, document)
    with pytest.raises(KeystoreError, match="address"):
        load_wallet(saved, PASSPHRASE)


def test_resave_after_rotation(tmp_path: Path) -> None:
    wallet = Wallet.create()
    path = save_wallet(wallet, tmp_path / "w.json", PASSPHRASE, scrypt_n=N)
    wallet.rotate_encryption_key()
    save_wallet(wallet, path, PASSPHRASE, scrypt_n=N)
    assert len(load_wallet(path, PASSPHRASE).encryption_keys) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["w.json"]


def test_refuses_to_overwrite_another_wallet(saved: Path) -> None:
    other = Wallet.create()
    with pytest.raises(KeystoreError, match="another wallet"):
        save_wallet(other, saved, PASSPHRASE, scrypt_n=N)
    save_wallet(other, saved, PASSPHRASE, scrypt_n=N, force=True)
    assert read_address(saved) == other.address


def test_bad_scrypt_cost_and_folder(tmp_path: Path, wallet: Wallet) -> None:
    with pytest.raises(InvalidInputError):
        save_wallet(wallet, tmp_path / "w.json", PASSPHRASE, scrypt_n=1000)
    with pytest.raises(KeystoreError, match="cannot write"):
        save_wallet(wallet, tmp_path / "missing" / "w.json", PASSPHRASE, scrypt_n=N)


# --- import -------------------------------------------------------------------------------


def _plain_keystore(tmp_path: Path, key: bytes, **changes: Any) -> Path:
    """An Ethereum keystore v3 as geth or MetaMask writes it: no medmesh section."""
    document = dict(Account.encrypt(key, PASSPHRASE, kdf="scrypt", iterations=N))
    document.update(changes)
    path = tmp_path / "UTC--2026-11-22--account.json"
    path.write_text(json.dumps(document))
    return path


def test_import_plain_ethereum_keystore_keeps_the_address_and_adds_an_encryption_key(
    tmp_path: Path,
) -> None:
    account = Account.create()
    path = _plain_keystore(tmp_path, bytes(account.key))
    wallet, added = import_wallet(path, PASSPHRASE, suite="mlkem768-x25519")
    assert added is True
    assert wallet.address == account.address
    assert wallet.encryption_public_key.suite == "mlkem768-x25519"
    # and it saves and reloads as a medmesh wallet
    saved = save_wallet(wallet, tmp_path / "wallet.json", PASSPHRASE, scrypt_n=N)
    again = load_wallet(saved, PASSPHRASE)
    assert again.address == account.address
    assert again.encryption_public_key == wallet.encryption_public_key


def test_import_medmesh_keystore_returns_the_whole_wallet(saved: Path, wallet: Wallet) -> None:
    got, added = import_wallet(saved, PASSPHRASE)
    assert added is False
    assert got.address == wallet.address
    assert [k.public_key() for k in got.encryption_keys] == [
        k.public_key() for k in wallet.encryption_keys
    ]


def test_import_refuses_wrong_passphrase_and_non_keystores(tmp_path: Path) -> None:
    path = _plain_keystore(tmp_path, bytes(Account.create().key))
    with pytest.raises(WrongPassphraseError):
        import_wallet(path, "not the passphrase")
    other = tmp_path / "notes.json"
    other.write_text('{"resourceType": "Patient"}')
    with pytest.raises(KeystoreError, match="not an Ethereum keystore"):
        import_wallet(other, PASSPHRASE)
    junk = tmp_path / "junk.json"
    junk.write_text("{")
    with pytest.raises(KeystoreError, match="not valid JSON"):
        import_wallet(junk, PASSPHRASE)


def test_import_refuses_a_keystore_whose_address_is_not_its_key(tmp_path: Path) -> None:
    path = _plain_keystore(
        tmp_path, bytes(Account.create().key), address=Account.create().address[2:].lower()
    )
    with pytest.raises(KeystoreError, match="address does not match"):
        import_wallet(path, PASSPHRASE)
