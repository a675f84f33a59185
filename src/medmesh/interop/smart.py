"""SMART-on-FHIR style authorization for backend services (client credentials + ES256K).

An institution's backend service gets an access token from the FHIR gateway's token endpoint
with the OAuth 2.0 ``client_credentials`` grant, authenticating with a JWT assertion
(RFC 7523, ``private_key_jwt``), as in the SMART Backend Services profile::

    POST /fhir/auth/token   (application/x-www-form-urlencoded)
        grant_type=client_credentials
        client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
        client_assertion=<compact JWS from client_assertion()>
        scope=system/*.rs

Design decisions:

* **ES256K, not RS384/ES384.** Institutions are Ethereum accounts registered on the Registry
  contract, so the key that signs the assertion is the account's own secp256k1 key. The
  assertion is a standard JWS with ``alg`` ES256K (RFC 8812: ECDSA over secp256k1 with
  SHA-256; the signature is ``r || s``, 32 bytes each, base64url). Any ES256K verifier
  given the public key accepts it.
* **The address is the key id; no JWKS.** ``iss`` = ``sub`` = ``client_id`` = ``kid`` = the
  EIP-55 address. The verifier recovers the public key from the signature (recovery ids 0
  and 1) and accepts only if it hashes to that address, so no key registration or JWKS URL
  is needed: the Registry already says which accounts are institutions.
* **Only ES256K is accepted.** The algorithm is fixed by the server, never taken from the
  token: ``none``, HMAC and RSA headers are refused before anything else is looked at, so
  algorithm confusion is impossible. High-``s`` signatures (``s > n/2``) are refused, so a
  signature has exactly one valid encoding; :meth:`Wallet.sign_digest` produces low ``s``.
* **Short-lived, single-use assertions.** ``exp`` must be in the future and at most
  ``MAX_ASSERTION_LIFETIME`` (5 min) after ``iat``; ``iat`` at most ``CLOCK_SKEW`` (60 s)
  ahead. Each ``(iss, jti)`` is remembered until its ``exp``: a replay is refused.
* **Opaque tokens.** Access tokens are 32 random bytes (base64url), stored only as SHA-256
  digests, in memory: restarting the gateway revokes them all, which is the safe direction.
* **Scopes never widen consent.** SMART v1 (``system/Observation.read``, ``user/*.write``,
  ``patient/*.*``) and v2 (``system/Observation.rs``, ``system/*.cruds``) resource scopes
  are parsed into :class:`Scopes`. The three contexts are accepted (``system/`` is the usual
  one for backend services), but medmesh's on-chain consent is what limits access per
  patient: a scope is honoured only as far as the patient's consent allows, and the FHIR API
  checks both. v2 query suffixes (``?category=...``) are refused with ``invalid_scope``
  rather than silently widened to the whole type.

Errors are :class:`OAuthError` (an :class:`medmesh.errors.AuthError`) carrying the RFC 6749
``error`` code, an HTTP status and a description that never contains key material or PHI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from eth_keys.constants import SECPK1_N
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import is_checksum_address, to_checksum_address
from eth_utils.exceptions import ValidationError

from medmesh.errors import AuthError, InvalidInputError
from medmesh.identity.wallet import Wallet
from medmesh.interop.fhir.types import SUPPORTED_TYPES

__all__ = [
    "ACTIONS",
    "ALGORITHM",
    "ASSERTION_TYPE",
    "CLOCK_SKEW",
    "DEFAULT_TOKEN_LIFETIME",
    "GRANT_TYPE",
    "MAX_ASSERTION_LIFETIME",
    "MAX_ENTRIES",
    "MAX_TOKEN_LIFETIME",
    "SUPPORTED_TYPES",
    "Grant",
    "OAuthError",
    "Scope",
    "Scopes",
    "TokenService",
    "client_assertion",
    "oauth_uris_extension",
    "security_service",
    "smart_configuration",
]

ALGORITHM: Final = "ES256K"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE: Final = "client_credentials"
DEFAULT_TOKEN_LIFETIME: Final = 300
MAX_TOKEN_LIFETIME: Final = 3600
MAX_ASSERTION_LIFETIME: Final = 300
CLOCK_SKEW: Final = 60
MAX_ASSERTION_BYTES: Final = 8192
MAX_SCOPE_CHARS: Final = 4096
MAX_ENTRIES: Final = 100_000
"""Live access tokens, and assertions remembered against replay, kept at most (each)."""
SWEEP_INTERVAL: Final = 60.0

ACTIONS: Final = frozenset({"read", "search", "create", "update", "delete"})
_V1: Final = {
    "read": frozenset({"read", "search"}),
    "write": frozenset({"create", "update", "delete"}),
    "*": ACTIONS,
}
_V2: Final = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_SCOPE_RE: Final = re.compile(
    r"(?P<context>patient|user|system)/(?P<type>\*|[A-Za-z]+)\.(?P<perm>read|write|\*|c?r?u?d?s?)"
)
_IGNORED_SCOPES: Final = frozenset(
    {"openid", "fhirUser", "profile", "offline_access", "online_access", "launch"}
)
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_STATUS: Final = {"invalid_client": 401, "temporarily_unavailable": 503}


class OAuthError(AuthError):
    """The token endpoint refused the request (RFC 6749 section 5.2).

    ``error`` is the RFC 6749 code (``invalid_request``, ``invalid_client``,
    ``invalid_grant``, ``unauthorized_client``, ``unsupported_grant_type``,
    ``invalid_scope``), ``status`` the HTTP status (401 for ``invalid_client``, else 400) and
    ``message`` the ``error_description``: safe to return, it holds no key material.
    """

    code = "oauth"

    def __init__(self, error: str, description: str, *, status: int | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.status = status if status is not None else _STATUS.get(error, 400)

    @property
    def error_description(self) -> str:
        return self.message

    def to_json(self) -> dict[str, str]:
        """The error response body: ``{"error": ..., "error_description": ...}``."""
        return {"error": self.error, "error_description": self.message}


# -- scopes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope: ``context/type.permissions``."""

    context: str  # "patient", "user" or "system"
    resource_type: str  # a supported type or "*"
    actions: frozenset[str]
    text: str

    @classmethod
    def parse(cls, text: str, supported_types: Collection[str] = SUPPORTED_TYPES) -> Scope:
        """Parse one v1 or v2 resource scope; raise :class:`InvalidInputError` if invalid."""
        if "?" in text:
            raise InvalidInputError("scopes with a query (…?param=value) are not supported")
        match = _SCOPE_RE.fullmatch(text)
        if match is None or not match["perm"]:
            raise InvalidInputError("not a SMART resource scope (context/type.permissions)")
        type_ = match["type"]
        if type_ != "*" and type_ not in supported_types:
            raise InvalidInputError("a scope names a resource type this server does not serve")
        perm = match["perm"]
        actions = _V1[perm] if perm in _V1 else frozenset(_V2[c] for c in perm)
        return cls(match["context"], type_, actions, text)

    def allows(self, resource_type: str, action: str) -> bool:
        return self.resource_type in ("*", resource_type) and action in self.actions


@dataclass(frozen=True)
class Scopes:
    """The resource scopes of a grant.

    Example::

        scopes = Scopes.parse("system/Observation.rs system/Patient.read")
        assert scopes.allows("Observation", "search")
        assert not scopes.allows("Observation", "create")
        assert str(scopes) == "system/Observation.rs system/Patient.read"
    """

    items: tuple[Scope, ...]
    supported_types: frozenset[str] = field(default=frozenset(SUPPORTED_TYPES), repr=False)

    @classmethod
    def parse(cls, text: str, supported_types: Collection[str] = SUPPORTED_TYPES) -> Scopes:
        """Parse a space-separated scope string (SMART v1 and v2 syntax, mixed freely).

        OpenID and launch scopes (``openid``, ``fhirUser``, ``launch``, ``launch/...``,
        ``offline_access``, ...) mean nothing to a backend service and are dropped; any other
        scope that is not a valid resource scope raises :class:`InvalidInputError`. The
        result may be empty.
        """
        if len(text) > MAX_SCOPE_CHARS:
            raise InvalidInputError("the scope parameter is too long")
        items: dict[str, Scope] = {}
        for word in text.split(" "):
            if not word or word in _IGNORED_SCOPES or word.startswith("launch/"):
                continue
            if word not in items:
                items[word] = Scope.parse(word, supported_types)
        return cls(tuple(items.values()), frozenset(supported_types))

    def allows(self, resource_type: str, action: str) -> bool:
        """Whether some scope covers ``action`` on ``resource_type``.

        ``action`` is one of read, search, create, update, delete (v1 ``read`` = read +
        search, ``write`` = create + update + delete). ``*`` covers supported types only.
        """
        if action not in ACTIONS:
            raise InvalidInputError(f"unknown action {action!r}")
        if resource_type not in self.supported_types:
            return False
        return any(scope.allows(resource_type, action) for scope in self.items)

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(scope.context for scope in self.items)

    def __iter__(self) -> Iterator[Scope]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __str__(self) -> str:
        return " ".join(scope.text for scope in self.items)


# -- client side -------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(value: Mapping[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":")).encode())


def client_assertion(
    wallet: Wallet,
    token_url: str,
    *,
    lifetime: int = 300,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """A compact JWS (ES256K) authenticating ``wallet``'s account at ``token_url``.

    Claims: ``iss`` = ``sub`` = the address, ``aud`` = ``token_url``, ``iat``, ``exp`` =
    ``iat + lifetime`` (at most 300 s) and a random ``jti``. Use each assertion once.

    Example::

        assertion = client_assertion(wallet, "https://gw.example/fhir/auth/token")
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion, "scope": "system/*.rs"}
    """
    if isinstance(lifetime, bool) or not isinstance(lifetime, int):
        raise InvalidInputError("lifetime must be an integer number of seconds")
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
        raise InvalidInputError(f"lifetime must be 1 to {MAX_ASSERTION_LIFETIME} seconds")
    issued = int(time.time() if now is None else now)
    address = wallet.address
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": address}
    claims = {
        "iss": address,
        "sub": address,
        "aud": token_url,
        "exp": issued + lifetime,
        "iat": issued,
        "jti": secrets.token_urlsafe(16) if jti is None else jti,
    }
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    _, r, s = wallet.sign_digest(hashlib.sha256(signing_input.encode("ascii")).digest())
    return f"{signing_input}.{_b64encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# -- server side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What an access token lets its holder do: ``client`` (EIP-55 address), its scopes."""

    client: str
    scopes: Scopes
    expires_at: float


def _bad_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description)


def _b64decode(part: str) -> bytes:
    """Strict base64url without padding: refuses other alphabets and non-canonical tails."""
    if not _B64URL_RE.fullmatch(part) or len(part) % 4 == 1:
        raise _bad_client("the client assertion is not valid base64url")
    try:
        data = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _bad_client("the client assertion is not valid base64url") from exc
    if _b64encode(data) != part:
        raise _bad_client("the client assertion is not valid base64url")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate member")
        out[key] = value
    return out


def _json_object(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(part).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad_client(f"the client assertion's {what} is not a JSON object") from exc
    if not isinstance(value, dict):
        raise _bad_client(f"the client assertion's {what} is not a JSON object")
    return value


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (seconds since the epoch), or None if absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise _bad_client(f"the client assertion needs a numeric {name} claim")


def _checksummed(value: Any) -> str | None:
    """``value`` as an EIP-55 address, or None if it is not one (bad mixed-case checksum too)."""
    if not isinstance(value, str) or not _ADDRESS_RE.fullmatch(value):
        return None
    digits = value[2:]
    if digits not in (digits.lower(), digits.upper()) and not is_checksum_address(value):
        return None
    return str(to_checksum_address(value))


def _address(value: Any, what: str) -> str:
    address = _checksummed(value)
    if address is None:
        raise _bad_client(f"{what} must be an Ethereum address")
    return address


def _recovers(signing_input: bytes, signature: bytes, address: str) -> bool:
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < SECPK1_N and 0 < s < SECPK1_N):
        return False
    if s > SECPK1_N // 2:  # the malleable twin of a low-s signature: one encoding only
        raise _bad_client("the client assertion's signature is not canonical (high s)")
    digest = hashlib.sha256(signing_input).digest()
    for v in (0, 1):
        try:
            key = Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest)
        except (BadSignature, ValidationError, ValueError):
            continue
        if key.to_checksum_address() == address:
            return True
    return False


class TokenService:
    """The token endpoint (issue) and the resource server's token check (resolve).

    ``is_authorized(address)`` says whether an account may get tokens at all (wired to the
    Registry: a registered PROVIDER or RESEARCHER); ``allowed_clients`` narrows that to the
    institutions this gateway serves (None: any authorized account). ``clock`` is for tests.
    At most ``max_entries`` live tokens and used assertions are kept (each); past that the
    endpoint answers ``temporarily_unavailable`` (503) rather than forget an assertion early.

    Example::

        tokens = TokenService(url, is_authorized=lambda a: True, allowed_clients=[me])
        answer = tokens.token(form)          # raises OAuthError
        grant = tokens.resolve(answer["access_token"])
        grant.scopes.allows("Observation", "read")
    """

    def __init__(
        self,
        token_url: str,
        *,
        is_authorized: Callable[[str], bool],
        allowed_clients: Collection[str] | None = None,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        supported_types: Collection[str] = SUPPORTED_TYPES,
        clock: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if not isinstance(token_url, str) or not token_url:
            raise InvalidInputError("token_url must be a non-empty URL")
        if isinstance(token_lifetime, bool) or not isinstance(token_lifetime, int):
            raise InvalidInputError("token_lifetime must be an integer number of seconds")
        if not 0 < token_lifetime <= MAX_TOKEN_LIFETIME:
            raise InvalidInputError(f"token_lifetime must be 1 to {MAX_TOKEN_LIFETIME} seconds")
        self.token_url = token_url
        self.token_lifetime = token_lifetime
        self.supported_types = tuple(supported_types)
        self._is_authorized = is_authorized
        self._allowed: frozenset[str] | None = None
        if allowed_clients is not None:
            allowed = [] if isinstance(allowed_clients, str) else list(allowed_clients)
            checked = {_checksummed(a) for a in allowed}
            if isinstance(allowed_clients, str) or None in checked:
                raise InvalidInputError("allowed_clients must be a collection of addresses")
            self._allowed = frozenset(a for a in checked if a is not None)
        self._clock = clock
        self._tokens: dict[bytes, Grant] = {}
        self._seen: dict[tuple[str, str], float] = {}  # (iss, jti) -> exp
        self._next_sweep = 0.0
        self._max_entries = max_entries
        self._lock = threading.Lock()

    # -- token endpoint ------------------------------------------------------------------

    def token(self, form: Mapping[str, str], *, now: float | None = None) -> dict[str, Any]:
        """Handle a token request (the form fields); return the RFC 6749 token response.

        Raises :class:`OAuthError`. Errors of ``is_authorized`` (for example the ledger
        being unreachable) propagate unchanged.
        """
        now = self._clock() if now is None else now
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is required")
        if grant_type != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
        if "client_secret" in form:
            raise OAuthError("invalid_request", "use a client assertion, not a client secret")
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if not assertion_type or not assertion:
            raise OAuthError(
                "invalid_request", "client_assertion_type and client_assertion are required"
            )
        if assertion_type != ASSERTION_TYPE:
            raise _bad_client(f"client_assertion_type must be {ASSERTION_TYPE}")
        try:
            scopes = Scopes.parse(form.get("scope") or "", self.supported_types)
        except InvalidInputError as exc:
            raise OAuthError("invalid_scope", exc.message) from None
        if not scopes:
            raise OAuthError("invalid_scope", "request at least one SMART resource scope")

        client, jti, exp = self._verify(assertion, now)
        client_id = form.get("client_id")
        if client_id and _address(client_id, "client_id") != client:
            raise _bad_client("client_id does not match the client assertion")
        if self._allowed is not None and client not in self._allowed:
            raise OAuthError("unauthorized_client", "this gateway does not serve this client")
        if not self._is_authorized(client):
            raise OAuthError(
                "unauthorized_client",
                "the account is not registered with a role that may get tokens",
            )

        access_token = secrets.token_urlsafe(32)
        grant = Grant(client, scopes, now + self.token_lifetime)
        with self._lock:
            full = max(len(self._tokens), len(self._seen)) >= self._max_entries
            if full or now >= self._next_sweep:
                self._sweep(now)
            if max(len(self._tokens), len(self._seen)) >= self._max_entries:
                # fail closed: forgetting a used assertion early would allow its replay
                raise OAuthError("temporarily_unavailable", "too many live tokens; retry later")
            self._remember(client, jti, exp, now)
            self._tokens[_digest(access_token)] = grant
        return {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime,
            "scope": str(scopes),
        }

    def _sweep(self, now: float) -> None:
        """Drop expired tokens and expired used assertions (lock held)."""
        self._tokens = {k: g for k, g in self._tokens.items() if g.expires_at > now}
        self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
        self._next_sweep = now + SWEEP_INTERVAL

    def _remember(self, client: str, jti: str, exp: float, now: float) -> None:
        """Record a used assertion (lock held); refuse one seen before its expiry."""
        seen = self._seen.get((client, jti))
        if seen is not None and seen > now:
            raise _bad_client("the client assertion was already used (jti replay)")
        self._seen[(client, jti)] = exp

    def _verify(self, assertion: str, now: float) -> tuple[str, str, float]:
        """Check the JWS and its claims; return (client address, jti, exp)."""
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise _bad_client("the client assertion is too large")
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _bad_client("the client assertion is not a compact JWS (three parts)")
        header = _json_object(parts[0], "header")
        if header.get("alg") != ALGORITHM:
            raise _bad_client(f"the client assertion must be signed with {ALGORITHM}")
        if "crit" in header:
            raise _bad_client("critical JWS header extensions are not supported")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise _bad_client("the client assertion's typ must be JWT")
        if "kid" not in header:
            raise _bad_client("the client assertion's header needs kid (the client's address)")
        kid = _address(header["kid"], "kid")
        signature = _b64decode(parts[2])
        if len(signature) != 64:
            raise _bad_client("an ES256K signature is 64 bytes (r || s)")
        claims = _json_object(parts[1], "claims")

        iss = claims.get("iss")
        if iss != claims.get("sub"):
            raise _bad_client("iss and sub must both be the client's address")
        client = _address(iss, "iss")
        if kid != client:
            raise _bad_client("kid must be the client's address")
        aud = claims.get("aud")
        if not (aud == self.token_url or (isinstance(aud, list) and self.token_url in aud)):
            raise _bad_client("the client assertion's aud is not this token endpoint")
        exp = _numeric_date(claims, "exp")
        iat = _numeric_date(claims, "iat")
        nbf = _numeric_date(claims, "nbf")
        if exp is None:
            raise _bad_client("the client assertion needs an exp claim")
        if exp <= now:
            raise _bad_client("the client assertion has expired")
        if iat is not None and iat > now + CLOCK_SKEW:
            raise _bad_client("the client assertion is issued in the future")
        if exp - (now if iat is None else iat) > MAX_ASSERTION_LIFETIME:
            raise _bad_client(
                f"the client assertion may live at most {MAX_ASSERTION_LIFETIME} seconds"
            )
        if nbf is not None and nbf > now + CLOCK_SKEW:
            raise _bad_client("the client assertion is not valid yet")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise _bad_client("the client assertion needs a jti claim (a unique string)")

        if not _recovers(f"{parts[0]}.{parts[1]}".encode("ascii"), signature, client):
            raise _bad_client("the client assertion's signature is not from its issuer")
        return client, jti, exp

    # -- resource server -----------------------------------------------------------------

    def resolve(self, token: str, *, now: float | None = None) -> Grant:
        """The grant behind an access token; raises :class:`AuthError` if none is live."""
        now = self._clock() if now is None else now
        key = _digest(token)
        with self._lock:
            grant = self._tokens.get(key)
            if grant is not None and grant.expires_at <= now:
                del self._tokens[key]
                grant = None
        if grant is None:
            raise AuthError("unknown or expired access token")
        return grant

    def revoke(self, token: str) -> None:
        """Forget an access token (unknown tokens are ignored)."""
        with self._lock:
            self._tokens.pop(_digest(token), None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# -- discovery ---------------------------------------------------------------------------


def smart_configuration(token_url: str) -> dict[str, Any]:
    """The ``/.well-known/smart-configuration`` document for backend services."""
    return {
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": [ALGORITHM],
        "grant_types_supported": [GRANT_TYPE],
        "scopes_supported": [
            f"{context}/*.{perm}"
            for context in ("system", "user", "patient")
            for perm in ("cruds", "rs", "read", "write", "*")
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


def oauth_uris_extension(token_url: str) -> dict[str, Any]:
    """The CapabilityStatement ``rest.security.extension`` entry naming the token endpoint."""
    return {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": token_url}],
    }


def security_service() -> dict[str, Any]:
    """The CapabilityStatement ``rest.security.service`` entry: SMART-on-FHIR."""
    return {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }
        ],
        "text": "SMART backend services: client_credentials with an ES256K JWT assertion",
    }
