"""Sign-in with Ethereum (EIP-4361) sessions for the gateway.

1. The client asks for a nonce (single use, valid ``NONCE_TTL`` seconds).
2. It signs an EIP-4361 message naming this gateway's domain, the chain id and that nonce.
3. :meth:`Sessions.login` checks the message (see :mod:`medmesh.identity.siwe`), consumes the
   nonce (a replayed message is refused) and returns a random bearer token valid for
   ``SESSION_TTL`` seconds, bound to the signer's address.

Tokens are kept only as SHA-256 digests, so a memory dump does not reveal live tokens. State
is in memory: restarting the gateway signs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from medmesh.errors import AuthError, ReplayError
from medmesh.identity import siwe

__all__ = ["NONCE_TTL", "SESSION_TTL", "Session", "Sessions"]

NONCE_TTL: Final = 300.0
SESSION_TTL: Final = 900.0
MAX_MESSAGE_AGE: Final = 600.0


@dataclass(frozen=True)
class Session:
    address: str
    expires_at: float


class Sessions:
    """Nonces issued, sessions opened."""

    def __init__(self, domain: str, chain_id: int, *, session_ttl: float = SESSION_TTL) -> None:
        self.domain = domain
        self.chain_id = chain_id
        self.session_ttl = session_ttl
        self._nonces: dict[str, float] = {}
        self._sessions: dict[bytes, Session] = {}
        self._lock = threading.Lock()

    def _sweep(self, now: float) -> None:
        self._nonces = {n: t for n, t in self._nonces.items() if t > now}
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}

    def new_nonce(self) -> str:
        nonce = siwe.generate_nonce()
        now = time.time()
        with self._lock:
            if len(self._nonces) > 100_000:
                self._sweep(now)
            self._nonces[nonce] = now + NONCE_TTL
        return nonce

    def login(
        self, message: str, signature: str | bytes, *, now: float | None = None
    ) -> tuple[str, Session]:
        """Verify a signed EIP-4361 message; return (bearer token, session)."""
        now = time.time() if now is None else now
        parsed = siwe.SiweMessage.parse(message)
        with self._lock:
            expires = self._nonces.get(parsed.nonce)
            if expires is None or expires <= now:
                raise ReplayError("unknown, used or expired sign-in nonce: ask for a new one")
        moment = datetime.fromtimestamp(now, UTC)
        checked = siwe.verify(
            parsed,
            signature,
            domain=self.domain,
            nonce=parsed.nonce,
            chain_id=self.chain_id,
            now=moment,
        )
        issued = datetime.fromisoformat(checked.issued_at.replace("Z", "+00:00")).timestamp()
        if issued > now + 60 or now - issued > MAX_MESSAGE_AGE:
            raise AuthError("sign-in message issued too long ago (or in the future)")
        with self._lock:
            if self._nonces.pop(parsed.nonce, None) is None:
                raise ReplayError("sign-in nonce already used")
            token = secrets.token_urlsafe(32)
            session = Session(checked.address, now + self.session_ttl)
            self._sessions[hashlib.sha256(token.encode()).digest()] = session
        return token, session

    def resolve(self, token: str, *, now: float | None = None) -> Session:
        """The session behind a bearer token; raises :class:`AuthError` if none is live."""
        now = time.time() if now is None else now
        with self._lock:
            session = self._sessions.get(hashlib.sha256(token.encode()).digest())
        if session is None or session.expires_at <= now:
            raise AuthError("no valid session: sign in again")
        return session

    def logout(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(hashlib.sha256(token.encode()).digest(), None)
