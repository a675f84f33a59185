"""Signing in to the portal: Sign-In with Ethereum (EIP-4361), then a cookie session.

Two ways in, one verifier (:meth:`medmesh.consent.sessions.Sessions.login`, which parses the
message with :mod:`medmesh.identity.siwe`, checks this gateway's domain, chain id, the single-use
nonce it issued, the validity window and the signature):

- **keystore** (local mode, the demo users of ``<home>/synth/population.json``): the user picks
  who they are and types the passphrase; the server unlocks that keystore, builds a SIWE
  message for this gateway with a fresh nonce, signs it with the key it just unlocked and
  logs in with it. The unlocked :class:`~medmesh.identity.Wallet` stays in server memory for
  the session (to open the user's records and sign their grants) and is dropped at sign-out
  or expiry. It is never logged and never leaves the process.
- **browser wallet**: the browser asks ``/v1/auth/nonce``, the user's wallet signs the message,
  the form posts message and signature. No key reaches the server: such a session can see
  consents, the audit trail and the network, but cannot open sealed records.

The cookie holds the session's bearer token (HttpOnly, SameSite=Strict, limited to
``/portal``); the server keeps only its SHA-256 (in :class:`Sessions` and here). Each session
carries a CSRF token that every state-changing form must send back.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from medmesh.consent.sessions import Sessions
from medmesh.errors import AuthError, KeystoreError
from medmesh.identity import Wallet, load_wallet
from medmesh.identity.siwe import new_message

__all__ = [
    "COOKIE",
    "STATEMENT",
    "DemoUser",
    "PortalSession",
    "PortalSessions",
    "load_demo_users",
    "message_for",
    "sign_in_message",
]

COOKIE: Final = "medmesh_portal"
STATEMENT: Final = "Sign in to the medmesh portal."


@dataclass(frozen=True)
class DemoUser:
    """A participant of the local demo population (its keystore is in the data folder)."""

    name: str
    role: str
    address: str
    keystore: Path


def load_demo_users(home: Path) -> list[DemoUser]:
    """The participants of ``<home>/synth/population.json`` (empty when there is none)."""
    path = home / "synth" / "population.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for p in doc.get("participants") or []:
        if not isinstance(p, dict):
            continue
        try:
            out.append(
                DemoUser(
                    str(p["name"]),
                    str(p["role"]),
                    str(p["address"]),
                    Path(str(p["home"])) / "wallet.json",
                )
            )
        except KeyError:
            continue
    return out


@dataclass
class PortalSession:
    """A signed-in user: address, (for keystore sign-ins) the unlocked wallet, CSRF token,
    and what has been opened for them during the session."""

    address: str
    expires_at: float
    csrf: str
    wallet: Wallet | None = None
    name: str | None = None
    opened: dict[bytes, bytes] = field(default_factory=dict)  # record -> plaintext
    lock: threading.Lock = field(default_factory=threading.Lock)  # one write at a time
    tools: Any = None  # the user's ledger client and record keeper, made on first write

    def __repr__(self) -> str:  # never show the wallet or what was opened
        return f"PortalSession({self.address}, expires_at={self.expires_at:.0f})"


def message_for(address: str, sessions: Sessions, uri: str, *, now: float) -> str:
    """A SIWE message for this gateway, ``address`` and a fresh nonce (to be signed)."""
    return new_message(
        sessions.domain,
        address,
        uri,
        sessions.chain_id,
        statement=STATEMENT,
        nonce=sessions.new_nonce(),
        now=datetime.fromtimestamp(now, UTC),
    ).to_text()


def sign_in_message(wallet: Wallet, sessions: Sessions, uri: str, *, now: float) -> tuple[str, str]:
    """(SIWE message for this gateway with a fresh nonce, its signature by ``wallet``)."""
    text = message_for(wallet.address, sessions, uri, now=now)
    return text, "0x" + wallet.sign_message(text.encode()).hex()


class PortalSessions:
    """Cookie sessions of the portal, on top of the gateway's SIWE :class:`Sessions`."""

    def __init__(
        self, sessions: Sessions, uri: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.sessions = sessions
        self.uri = uri
        self.clock = clock
        self._open: dict[bytes, PortalSession] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def _start(self, token: str, address: str, expires_at: float, **extra: Any) -> PortalSession:
        session = PortalSession(address, expires_at, secrets.token_urlsafe(32), **extra)
        with self._lock:
            now = self.clock()
            self._open = {k: s for k, s in self._open.items() if s.expires_at > now}
            self._open[self._key(token)] = session
        return session

    def with_signature(self, message: str, signature: str) -> tuple[str, PortalSession]:
        """Sign in with a SIWE message signed elsewhere (a browser wallet)."""
        token, checked = self.sessions.login(message, signature, now=self.clock())
        return token, self._start(token, checked.address, checked.expires_at)

    def with_keystore(
        self, keystore: Path, passphrase: str, *, name: str | None = None
    ) -> tuple[str, PortalSession]:
        """Unlock ``keystore`` and sign in with it (a SIWE message signed here)."""
        try:
            wallet = load_wallet(keystore, passphrase)
        except KeystoreError:
            raise
        except (OSError, ValueError) as exc:
            raise KeystoreError("this keystore cannot be opened") from exc
        now = self.clock()
        message, signature = sign_in_message(wallet, self.sessions, self.uri, now=now)
        token, checked = self.sessions.login(message, signature, now=now)
        return token, self._start(
            token, checked.address, checked.expires_at, wallet=wallet, name=name
        )

    def resolve(self, token: str | None) -> PortalSession:
        """The live session of a cookie; :class:`AuthError` when it is missing, unknown,
        expired or signed out."""
        if not token:
            raise AuthError("you are not signed in")
        now = self.clock()
        self.sessions.resolve(token, now=now)  # raises when expired or unknown
        with self._lock:
            session = self._open.get(self._key(token))
        if session is None or session.expires_at <= now:
            raise AuthError("no valid session: sign in again")
        return session

    def end(self, token: str | None) -> None:
        """Sign out: forget the session and everything it held (the wallet too)."""
        if not token:
            return
        self.sessions.logout(token)
        with self._lock:
            session = self._open.pop(self._key(token), None)
        if session is not None:
            session.opened.clear()
            session.wallet = None
            session.tools = None

    def check_csrf(self, session: PortalSession, sent: str | None) -> None:
        if not sent or not secrets.compare_digest(sent, session.csrf):
            raise AuthError("this form is stale or did not come from this portal: reload it")
