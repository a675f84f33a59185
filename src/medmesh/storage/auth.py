"""Signed requests between clients and storage nodes (EIP-191).

A write to a node must be signed by a key the node trusts. The client signs, with its
secp256k1 wallet key (EIP-191 ``personal_sign``), this canonical message::

    medmesh-request/v1
    <node id>                 the node's address (so a request for node A fails at node B)
    <METHOD>
    <path?query>              exactly as sent
    <body digest>             hex BLAKE3-256 of the request body
    <timestamp>               unix seconds
    <nonce>                   32 hex chars, random per request

and sends it in headers ``X-Medmesh-Signer``, ``X-Medmesh-Timestamp``,
``X-Medmesh-Nonce``, ``X-Medmesh-Signature``. The node recovers the signer
(:func:`recover_request`), checks it may write (trusted, or a participant of the ledger's
Registry: :mod:`medmesh.storage.node.writers`), that the timestamp is within ``max_skew``
seconds of its clock and that the nonce was not seen within that window (:class:`ReplayGuard`,
persisted in the node's data folder so a restart does not reopen the window).
:func:`verify_request` does all of it against a fixed set of trusted addresses. BLAKE3 is used
for the body digest because nodes hash every upload anyway and BLAKE3 costs ~0.2 ms per MiB.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import blake3
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address

from medmesh.errors import ReplayError, SignatureError, UntrustedSignerError

__all__ = [
    "MAX_SKEW",
    "ReplayGuard",
    "RequestSigner",
    "SignedRequest",
    "body_digest",
    "recover_request",
    "sign_request",
    "verify_request",
]

MAX_SKEW: Final = 300  # seconds
H_SIGNER: Final = "X-Medmesh-Signer"
H_TIMESTAMP: Final = "X-Medmesh-Timestamp"
H_NONCE: Final = "X-Medmesh-Nonce"
H_SIGNATURE: Final = "X-Medmesh-Signature"


class RequestSigner(Protocol):
    """Anything that can EIP-191-sign bytes (a :class:`medmesh.identity.Wallet`)."""

    @property
    def address(self) -> str: ...

    def sign_message(self, data: bytes) -> bytes: ...


def body_digest(body: bytes | bytearray | memoryview) -> str:
    return blake3.blake3(body).hexdigest()


def _canonical(node_id: str, method: str, target: str, digest: str, ts: int, nonce: str) -> bytes:
    return "\n".join(
        ["medmesh-request/v1", node_id.lower(), method.upper(), target, digest, str(ts), nonce]
    ).encode("utf-8")


@dataclass(frozen=True)
class SignedRequest:
    """The headers that authenticate one request."""

    signer: str
    timestamp: int
    nonce: str
    signature: bytes

    def headers(self) -> dict[str, str]:
        return {
            H_SIGNER: self.signer,
            H_TIMESTAMP: str(self.timestamp),
            H_NONCE: self.nonce,
            H_SIGNATURE: "0x" + self.signature.hex(),
        }


def sign_request(
    signer: RequestSigner,
    node_id: str,
    method: str,
    target: str,
    digest: str,
    *,
    now: float | None = None,
) -> dict[str, str]:
    """Headers that authenticate ``method target`` with body digest ``digest``."""
    ts = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    sig = signer.sign_message(_canonical(node_id, method, target, digest, ts, nonce))
    return SignedRequest(signer.address, ts, nonce, sig).headers()


class ReplayGuard:
    """Remembers nonces for the skew window; refuses a nonce seen twice.

    With ``path`` the nonces are also kept in a small SQLite file, so a request cannot be
    replayed at a node that restarted within the window.
    """

    def __init__(
        self,
        max_skew: int = MAX_SKEW,
        max_entries: int = 1_000_000,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.max_skew = max_skew
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path, check_same_thread=False)
            with self._db:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, seen REAL NOT NULL)"
                )
                horizon = time.time() - 2 * max_skew
                self._db.execute("DELETE FROM nonces WHERE seen < ?", (horizon,))
                rows = self._db.execute("SELECT nonce, seen FROM nonces ORDER BY seen").fetchall()
            self._seen.update(rows)

    def check(self, nonce: str, timestamp: int, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if abs(now - timestamp) > self.max_skew:
            raise ReplayError("request timestamp outside the accepted window")
        with self._lock:
            horizon = now - 2 * self.max_skew
            expired = 0
            while self._seen:
                oldest_nonce, seen_at = next(iter(self._seen.items()))
                if seen_at >= horizon and len(self._seen) < self.max_entries:
                    break
                del self._seen[oldest_nonce]
                expired += 1
            if nonce in self._seen:
                raise ReplayError("request nonce was already used")
            self._seen[nonce] = now
            if self._db is not None:
                with self._db:
                    self._db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?)", (nonce, now))
                    if expired:
                        self._db.execute("DELETE FROM nonces WHERE seen < ?", (horizon,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def recover_request(
    headers: Mapping[str, str],
    node_id: str,
    method: str,
    target: str,
    digest: str,
) -> SignedRequest:
    """Parse the signature headers and check the signature; return them with the signer.

    ``signer`` is the recovered (checksummed) address. Neither trust nor the timestamp and
    nonce are checked here: the caller decides who may write, then calls
    :meth:`ReplayGuard.check` (as :func:`verify_request` does).
    """
    try:
        claimed = headers[H_SIGNER]
        ts = int(headers[H_TIMESTAMP])
        nonce = headers[H_NONCE]
        sig_hex = headers[H_SIGNATURE]
    except (KeyError, ValueError):
        raise SignatureError("request is not signed") from None
    if len(nonce) != 32 or any(c not in "0123456789abcdef" for c in nonce):
        raise SignatureError("malformed request nonce")
    try:
        signature = bytes.fromhex(sig_hex.removeprefix("0x"))
        claimed = to_checksum_address(claimed)
    except ValueError:
        raise SignatureError("malformed request signature") from None
    if len(signature) != 65:
        raise SignatureError("malformed request signature")
    message = encode_defunct(_canonical(node_id, method, target, digest, ts, nonce))
    try:
        recovered = Account.recover_message(message, signature=signature)
    except Exception as exc:  # eth-keys raises BadSignature, ValidationError, ValueError
        raise SignatureError("invalid request signature") from exc
    if recovered != claimed:
        raise SignatureError("request signature does not match its signer")
    return SignedRequest(str(recovered), ts, nonce, signature)


def verify_request(
    headers: Mapping[str, str],
    node_id: str,
    method: str,
    target: str,
    digest: str,
    trusted: Collection[str] | None,
    guard: ReplayGuard,
    *,
    now: float | None = None,
) -> str:
    """Check a signed request; return the signer's checksummed address.

    ``trusted=None`` accepts any valid signer (an open node); otherwise the recovered signer
    must be in ``trusted`` (checksummed addresses).
    """
    signed = recover_request(headers, node_id, method, target, digest)
    if trusted is not None and signed.signer not in trusted:
        raise UntrustedSignerError("request signer is not trusted by this node")
    guard.check(signed.nonce, signed.timestamp, now)
    return signed.signer
