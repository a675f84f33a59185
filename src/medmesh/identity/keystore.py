"""Encrypted keystore: one JSON file holding a whole wallet behind one passphrase.

The file is a standard Ethereum keystore v3 (scrypt KDF, AES-128-CTR, Keccak MAC) for the
secp256k1 key, created by ``eth_account.Account.encrypt``, so any Ethereum wallet (geth,
MetaMask, ``eth_account.Account.decrypt``) can import the account from it. Those tools
ignore unknown fields; medmesh adds one top-level field for the encryption keys::

    {
      "address": "...", "crypto": {...scrypt, aes-128-ctr, mac...}, "id": "...", "version": 3,
      "medmesh": {
        "version": 1,
        "encryption_keys": [                       # oldest first; the last one is current
          {"suite": "x25519",                       # or "mlkem768-x25519"
           "public": "<hex public key>",
           "nonce": "<hex, 12 bytes>",
           "ciphertext": "<hex, AES-256-GCM(secret bytes) || 16-byte tag>"}
        ]
      }
    }

Each encryption key's secret (:meth:`EncryptionPrivateKey.secret_bytes`) is sealed with
AES-256-GCM (random 12-byte nonce) under the wrapping key::

    wrap_key = HKDF-SHA256(ikm = secp256k1 private key (32 bytes), salt = none,
                           info = b"medmesh/keystore/v1/wrap", length = 32)

with ``aad = suite (ASCII) || public key bytes``. So one scrypt run unlocks everything, the
entries cannot be swapped between suites or public keys, and each entry's public key is
checked against its decrypted secret on load. Hex strings carry no ``0x`` prefix, as in v3.

Files are written atomically (temporary file in the same folder, fsync, rename, fsync of the
folder) with mode 0o600. Error messages name the file but never contain secrets.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

from eth_account import Account
from eth_utils.address import is_hex_address, to_checksum_address

from medmesh.crypto import (
    DecryptionError,
    EncryptionPrivateKey,
    EncryptionPublicKey,
    decrypt_aes256gcm,
    encrypt_aes256gcm,
    hkdf_sha256,
)
from medmesh.errors import InvalidInputError, KeystoreError
from medmesh.identity.wallet import Wallet

__all__ = [
    "DEFAULT_SCRYPT_N",
    "KEYSTORE_VERSION",
    "WrongPassphraseError",
    "import_wallet",
    "load_wallet",
    "read_address",
    "save_wallet",
]

DEFAULT_SCRYPT_N: Final = 2**18
"""scrypt cost (N) for new keystores; the Ethereum default (r=8, p=1)."""
KEYSTORE_VERSION: Final = 1
"""Version of the ``"medmesh"`` section."""
_WRAP_INFO: Final = b"medmesh/keystore/v1/wrap"
_FILE_MODE: Final = 0o600


class WrongPassphraseError(KeystoreError):
    """The passphrase does not unlock this keystore."""

    code = "wrong_passphrase"


def _wrap_key(signing_key: bytes) -> bytes:
    return hkdf_sha256(signing_key, info=_WRAP_INFO)


def _aad(suite: str, public: bytes) -> bytes:
    return suite.encode("ascii") + public


def _encryption_entries(wallet: Wallet, wrap_key: bytes) -> list[dict[str, str]]:
    entries = []
    for key in wallet.encryption_keys:
        public = key.public_key().to_bytes()
        nonce, ciphertext = encrypt_aes256gcm(
            wrap_key, key.secret_bytes(), aad=_aad(key.suite, public)
        )
        entries.append(
            {
                "suite": key.suite,
                "public": public.hex(),
                "ciphertext": ciphertext.hex(),
                "nonce": nonce.hex(),
            }
        )
    return entries


def _write_atomic(path: Path, data: bytes) -> None:
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_wallet(
    wallet: Wallet,
    path: str | os.PathLike[str],
    passphrase: str,
    *,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    force: bool = False,
) -> Path:
    """Encrypt ``wallet`` under ``passphrase`` and write it to ``path`` atomically (mode 0o600).

    Saving over the keystore of the same wallet (e.g. after a key rotation) is allowed;
    replacing a file that holds another wallet, or that cannot be read, needs ``force=True``
    so that keys are not lost by mistake. ``scrypt_n`` must be a power of two; keep the
    default outside tests. Returns the path written.

    Example::

        save_wallet(wallet, home / "wallet.json", passphrase)
    """
    target = Path(path)
    if scrypt_n < 2 or scrypt_n & (scrypt_n - 1):
        raise InvalidInputError("scrypt_n must be a power of two >= 2")
    if not force and target.exists():
        try:
            same = read_address(target) == wallet.address
        except KeystoreError:
            same = False
        if not same:
            raise KeystoreError(
                f"{target} holds another wallet or is unreadable; pass force=True to replace it"
            )
    signing_key = wallet._signing_key()
    keyfile: dict[str, Any] = dict(
        Account.encrypt(signing_key, passphrase, kdf="scrypt", iterations=scrypt_n)
    )
    keyfile["medmesh"] = {
        "version": KEYSTORE_VERSION,
        "encryption_keys": _encryption_entries(wallet, _wrap_key(signing_key)),
    }
    data = (json.dumps(keyfile, indent=2) + "\n").encode("utf-8")
    try:
        _write_atomic(target, data)
    except OSError as exc:
        raise KeystoreError(f"cannot write keystore {target}: {exc.strerror}") from exc
    return target


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise KeystoreError(f"keystore {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeystoreError(f"cannot read keystore {path}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"keystore {path} is not valid JSON") from exc
    if not isinstance(document, dict):
        raise KeystoreError(f"keystore {path} is not a JSON object")
    return document


def read_address(path: str | os.PathLike[str]) -> str:
    """Return the checksummed address stored in the keystore at ``path`` (no passphrase)."""
    target = Path(path)
    address = _read_json(target).get("address")
    if not isinstance(address, str):
        raise KeystoreError(f"keystore {target} has no address")
    address = address if address.startswith("0x") else "0x" + address
    if not is_hex_address(address):
        raise KeystoreError(f"keystore {target} has a malformed address")
    return str(to_checksum_address(address))


def _unlock(path: Path, keyfile: dict[str, Any], passphrase: str) -> bytes:
    try:
        return bytes(Account.decrypt(keyfile, passphrase))
    except ValueError as exc:
        if "mac mismatch" in str(exc).lower():
            raise WrongPassphraseError(
                f"wrong passphrase for keystore {path} (or its ciphertext is damaged)"
            ) from exc
        raise KeystoreError(f"keystore {path} is corrupt ({type(exc).__name__})") from exc
    except (KeyError, TypeError, AttributeError, NotImplementedError) as exc:
        raise KeystoreError(f"keystore {path} is corrupt ({type(exc).__name__})") from exc


def _load_encryption_key(
    path: Path, index: int, entry: object, wrap_key: bytes
) -> EncryptionPrivateKey:
    where = f"keystore {path}: encryption key {index}"
    if not isinstance(entry, dict):
        raise KeystoreError(f"{where} is not an object")
    try:
        suite = str(entry["suite"])
        public = bytes.fromhex(entry["public"])
        nonce = bytes.fromhex(entry["nonce"])
        ciphertext = bytes.fromhex(entry["ciphertext"])
        expected = EncryptionPublicKey.from_bytes(suite, public)
    except (KeyError, TypeError, ValueError) as exc:
        raise KeystoreError(f"{where} is malformed") from exc
    try:
        secret = decrypt_aes256gcm(wrap_key, nonce, ciphertext, aad=_aad(suite, public))
        key = EncryptionPrivateKey.from_secret_bytes(suite, secret)
    except (DecryptionError, InvalidInputError) as exc:
        raise KeystoreError(f"{where} does not decrypt (file damaged or edited)") from exc
    if key.public_key() != expected:
        raise KeystoreError(f"{where} does not match its public key")
    return key


def load_wallet(path: str | os.PathLike[str], passphrase: str) -> Wallet:
    """Load and decrypt the wallet at ``path``.

    Raises :class:`WrongPassphraseError` for a wrong passphrase, and
    :class:`medmesh.errors.KeystoreError` if the file is missing, corrupt, or not a medmesh
    keystore (a plain Ethereum keystore has no encryption keys).
    """
    target = Path(path)
    keyfile = _read_json(target)
    section = keyfile.get("medmesh")
    if not isinstance(section, dict):
        raise KeystoreError(f"keystore {target} has no medmesh section")
    if section.get("version") != KEYSTORE_VERSION:
        raise KeystoreError(f"keystore {target}: unsupported medmesh section version")
    entries = section.get("encryption_keys")
    if not isinstance(entries, list) or not entries:
        raise KeystoreError(f"keystore {target} lists no encryption keys")
    signing_key = _unlock(target, keyfile, passphrase)
    wrap_key = _wrap_key(signing_key)
    keys = [_load_encryption_key(target, i, e, wrap_key) for i, e in enumerate(entries)]
    return _wallet(target, keyfile, signing_key, keys)


def _wallet(
    target: Path,
    keyfile: dict[str, Any],
    signing_key: bytes,
    keys: list[EncryptionPrivateKey],
) -> Wallet:
    """The wallet of an unlocked keystore, checked against the address the file states."""
    try:
        wallet = Wallet.from_keys(signing_key, keys)
    except InvalidInputError as exc:
        raise KeystoreError(f"keystore {target} holds an invalid signing key") from exc
    stored = keyfile.get("address")
    if isinstance(stored, str) and stored.lower().removeprefix("0x") != wallet.address[2:].lower():
        raise KeystoreError(f"keystore {target}: address does not match its key")
    return wallet


def import_wallet(
    path: str | os.PathLike[str], passphrase: str, *, suite: str = "x25519"
) -> tuple[Wallet, bool]:
    """Open a wallet made elsewhere: a medmesh keystore, or any Ethereum keystore v3.

    A medmesh keystore comes back whole. A plain Ethereum keystore (geth, MetaMask, ``eth_account``)
    holds only the account's secp256k1 key: a new encryption key of ``suite`` is made for it, so
    the account keeps its address and gains what medmesh needs to receive records. Returns the
    wallet and whether an encryption key was added.
    """
    target = Path(path)
    keyfile = _read_json(target)
    if isinstance(keyfile.get("medmesh"), dict):
        return load_wallet(target, passphrase), False
    if not isinstance(keyfile.get("crypto", keyfile.get("Crypto")), dict):
        raise KeystoreError(f"{target} is not an Ethereum keystore (v3 JSON with a crypto section)")
    signing_key = _unlock(target, keyfile, passphrase)
    return _wallet(target, keyfile, signing_key, [EncryptionPrivateKey.generate(suite)]), True
