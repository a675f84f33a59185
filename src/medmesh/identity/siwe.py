"""Sign-In with Ethereum (EIP-4361): parse, format, create and verify SIWE messages.

A SIWE message is a fixed-layout plain-text message that a wallet signs with EIP-191
``personal_sign`` to prove control of an Ethereum account to a relying party::

    example.com wants you to sign in with your Ethereum account:
    0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

    I accept the ExampleOrg Terms of Service: https://example.com/tos

    URI: https://example.com/login
    Version: 1
    Chain ID: 1
    Nonce: 32891756
    Issued At: 2021-09-30T16:25:24Z

:meth:`SiweMessage.parse` follows the EIP-4361 ABNF strictly (line layout, field order,
RFC 3986 authority and URIs, RFC 3339 timestamps, a nonce of at least 8 letters or digits,
an EIP-55 checksummed address) and :meth:`SiweMessage.to_text` gives the exact text back.
Deliberate narrowings: the domain needs a non-empty host, ``Chain ID`` has no leading zeros
(so every accepted message round-trips byte for byte) and timestamps have no leap second.

:func:`verify` checks, in the reference implementation's order, the expected domain, nonce
and chain id (when given), the validity window (``Not Before`` <= now < ``Expiration Time``)
and finally that the signature recovers ``address``. Only externally owned accounts (EOAs)
are supported: EIP-1271 contract wallets (and EIP-6492 counterfactual ones) would need an
RPC call and are rejected as bad signatures. Replay protection (remembering used nonces) is
the caller's job. Error messages name the offending field but never echo signatures.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from eth_utils.address import to_checksum_address

from medmesh.errors import AuthError, InvalidInputError, SignatureError
from medmesh.identity.wallet import SIGNATURE_SIZE, recover_signer

__all__ = ["NONCE_LENGTH", "SiweMessage", "generate_nonce", "new_message", "verify"]

_HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"
_NONCE_ALPHABET = string.ascii_letters + string.digits
NONCE_LENGTH = 22
"""Characters in a generated nonce (about 131 bits of entropy)."""
_MAX_SECONDS = 10 * 366 * 86400  # bound on TTLs and clock skew: ten years

# RFC 3986 character classes (ASCII only).
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_AUTHORITY_RE = re.compile(
    rf"(?:(?P<userinfo>(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*)@)?"
    rf"(?P<host>\[[^\]]*\]|(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*)"
    r"(?::[0-9]*)?"
)
_IPV_FUTURE_RE = re.compile(rf"v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+")
_IPV6_CHARS_RE = re.compile(r"[0-9A-Fa-f:.]+")
_HEX_RE = re.compile(r"[0-9A-Fa-f]*")
_URI_RE = re.compile(
    r"(?P<scheme>[^:/?#]+):(?://(?P<auth>[^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?"
)
_PATH_RE = re.compile(rf"(?:{_PCHAR}|/)*")
_QUERY_RE = re.compile(rf"(?:{_PCHAR}|[/?])*")
_STATEMENT_RE = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]*")
_REQUEST_ID_RE = re.compile(rf"{_PCHAR}*")
_ADDRESS_RE = re.compile(r"0x[0-9A-Fa-f]{40}")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN_ID_RE = re.compile(r"0|[1-9][0-9]{0,77}")
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def _bad(field: str, why: str) -> InvalidInputError:
    return InvalidInputError(f"SIWE message: invalid {field}: {why}")


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_authority(text: str, *, require_host: bool) -> bool:
    match = _AUTHORITY_RE.fullmatch(text)
    if match is None:
        return False
    host = match["host"]
    if host.startswith("["):
        inner = host[1:-1]
        if _IPV_FUTURE_RE.fullmatch(inner):
            return True
        if not _IPV6_CHARS_RE.fullmatch(inner):
            return False  # also rules out IPv6 zone ids ("%eth0")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return False
        return True
    return bool(host) or not require_host


def _is_uri(text: str) -> bool:
    """True if ``text`` is an RFC 3986 ``URI`` (absolute, optional query and fragment)."""
    match = _URI_RE.fullmatch(text)
    if match is None or not _SCHEME_RE.fullmatch(match["scheme"]):
        return False
    authority, path, query, fragment = match.group("auth", 3, 4, 5)
    if authority is not None and not _is_authority(authority, require_host=False):
        return False
    return (
        _PATH_RE.fullmatch(path) is not None
        and (query is None or _QUERY_RE.fullmatch(query) is not None)
        and (fragment is None or _QUERY_RE.fullmatch(fragment) is not None)
    )


def _parse_datetime(text: str, field: str) -> datetime:
    """Parse an RFC 3339 ``date-time`` into an aware UTC datetime (strict, no leap seconds)."""
    match = _DATETIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise _bad(field, "not an RFC 3339 date-time")
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, off_hour, off_minute = match.group(7, 8, 9, 10)
    micro = int((fraction or "").ljust(6, "0")[:6])
    offset = timedelta(0)
    if sign is not None:
        if int(off_hour) > 23 or int(off_minute) > 59:
            raise _bad(field, "time zone offset out of range")
        offset = timedelta(hours=int(off_hour), minutes=int(off_minute))
        offset = -offset if sign == "-" else offset
    try:
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
        return local - offset
    except (ValueError, OverflowError) as exc:
        raise _bad(field, "date or time out of range") from exc


def _format_datetime(moment: datetime) -> str:
    """``moment`` in UTC as RFC 3339 with milliseconds, e.g. ``2021-12-07T18:28:18.807Z``."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def _require_aware(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidInputError(f"{name} must be a timezone-aware datetime")
    return moment


def generate_nonce() -> str:
    """A fresh random nonce of :data:`NONCE_LENGTH` letters and digits."""
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(NONCE_LENGTH))


@dataclass(frozen=True, kw_only=True)
class SiweMessage:
    """One EIP-4361 message; every field is validated on construction.

    ``statement``, ``request_id`` and ``resources`` distinguish absent (``None``) from
    present but empty (``""`` / ``()``), as the ABNF does, so that formatting is exact.
    """

    scheme: str | None = None
    domain: str
    address: str
    statement: str | None = None
    uri: str
    version: str = "1"
    chain_id: int
    nonce: str
    issued_at: str
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """Check every field against the EIP-4361 ABNF."""
        if self.scheme is not None and not _matches(_SCHEME_RE, self.scheme):
            raise _bad("scheme", "not an RFC 3986 scheme")
        if not isinstance(self.domain, str) or not _is_authority(self.domain, require_host=True):
            raise _bad("domain", "not an RFC 3986 authority with a host")
        if not _matches(_ADDRESS_RE, self.address):
            raise _bad("address", "not 0x followed by 40 hex digits")
        if to_checksum_address(self.address) != self.address:
            raise _bad("address", "not EIP-55 checksummed")
        if self.statement is not None and not _matches(_STATEMENT_RE, self.statement):
            raise _bad("statement", "one line of RFC 3986 reserved/unreserved characters or spaces")
        if not isinstance(self.uri, str) or not _is_uri(self.uri):
            raise _bad("URI", "not an RFC 3986 URI")
        if self.version != "1":
            raise _bad("version", "must be 1")
        if isinstance(self.chain_id, bool) or not isinstance(self.chain_id, int):
            raise _bad("chain ID", "must be an integer")
        if not 0 <= self.chain_id < 2**256:
            raise _bad("chain ID", "must be in [0, 2**256)")
        if not _matches(_NONCE_RE, self.nonce):
            raise _bad("nonce", "needs at least 8 letters or digits")
        _parse_datetime(self.issued_at, "issued-at")
        for value, field in (
            (self.expiration_time, "expiration-time"),
            (self.not_before, "not-before"),
        ):
            if value is not None:
                _parse_datetime(value, field)
        if self.request_id is not None and not _matches(_REQUEST_ID_RE, self.request_id):
            raise _bad("request ID", "only RFC 3986 path characters are allowed")
        if self.resources is not None:
            if isinstance(self.resources, str | bytes) or not isinstance(self.resources, Sequence):
                raise _bad("resources", "must be a sequence of URIs")
            object.__setattr__(self, "resources", tuple(self.resources))
            for resource in self.resources:
                if not isinstance(resource, str) or not _is_uri(resource):
                    raise _bad("resources", "each resource must be an RFC 3986 URI")

    @classmethod
    def parse(cls, text: str) -> SiweMessage:
        """Parse a SIWE message; raise :class:`InvalidInputError` naming the bad field."""
        if not isinstance(text, str):
            raise InvalidInputError("SIWE message must be a string")
        lines = text.split("\n")
        position = 0

        def take(prefix: str, field: str) -> str:
            nonlocal position
            if position >= len(lines) or not lines[position].startswith(prefix):
                raise InvalidInputError(f"SIWE message: expected the {field} line ({prefix!r})")
            position += 1
            return lines[position - 1][len(prefix) :]

        def optional(prefix: str, field: str) -> str | None:
            if position < len(lines) and lines[position].startswith(prefix):
                return take(prefix, field)
            return None

        header = take("", "header")
        if not header.endswith(_HEADER_SUFFIX):
            raise InvalidInputError(f"SIWE message: first line must end with {_HEADER_SUFFIX!r}")
        origin = header[: -len(_HEADER_SUFFIX)]
        scheme: str | None
        scheme, sep, domain = origin.partition("://")
        if not sep:
            scheme, domain = None, origin
        address = take("", "address")
        if take("", "blank line after the address") != "":
            raise InvalidInputError("SIWE message: expected a blank line after the address")
        statement: str | None = None
        if lines[position : position + 1] == [""] and lines[position + 1 : position + 2] != [""]:
            position += 1  # no statement: address LF LF LF "URI: "
        else:
            statement = take("", "statement")
            if take("", "blank after statement") != "":
                raise _bad("statement", "must be a single line followed by a blank line")
        uri = take("URI: ", "URI")
        version = take("Version: ", "version")
        chain_text = take("Chain ID: ", "chain ID")
        if not _matches(_CHAIN_ID_RE, chain_text):
            raise _bad("chain ID", "decimal digits without leading zeros")
        nonce = take("Nonce: ", "nonce")
        issued_at = take("Issued At: ", "issued-at")
        expiration_time = optional("Expiration Time: ", "expiration-time")
        not_before = optional("Not Before: ", "not-before")
        request_id = optional("Request ID: ", "request ID")
        resources: tuple[str, ...] | None = None
        if position < len(lines) and lines[position] == "Resources:":
            position += 1
            items = lines[position:]
            if not all(item.startswith("- ") for item in items):
                raise _bad("resources", 'each resource line must be "- " and a URI')
            resources = tuple(item[2:] for item in items)
            position = len(lines)
        if position < len(lines):
            raise InvalidInputError(
                f"SIWE message: unexpected or out-of-order content on line {position + 1}"
            )
        return cls(
            domain=domain,
            address=address,
            uri=uri,
            chain_id=int(chain_text),
            nonce=nonce,
            issued_at=issued_at,
            statement=statement,
            version=version,
            expiration_time=expiration_time,
            not_before=not_before,
            request_id=request_id,
            resources=resources,
            scheme=scheme,
        )

    def to_text(self) -> str:
        """The message text to sign (the exact EIP-4361 layout, no trailing newline)."""
        origin = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [origin + _HEADER_SUFFIX, self.address, ""]
        lines += [self.statement, ""] if self.statement is not None else [""]
        lines += [
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {resource}" for resource in self.resources]
        return "\n".join(lines)


def new_message(
    domain: str,
    address: str,
    uri: str,
    chain_id: int,
    statement: str | None = None,
    ttl_seconds: float | None = 300,
    resources: Sequence[str] = (),
    nonce: str | None = None,
    now: datetime | None = None,
    *,
    scheme: str | None = None,
    request_id: str | None = None,
) -> SiweMessage:
    """A fresh message: random nonce, ``Issued At`` = now, expiring ``ttl_seconds`` later.

    ``address`` may be given in any case; it is checksummed. ``ttl_seconds=None`` means no
    ``Expiration Time``. Timestamps are UTC with milliseconds.
    """
    issued = _require_aware(now, "now") if now is not None else datetime.now(UTC)
    try:
        checksummed = to_checksum_address(address)
    except (ValueError, TypeError) as exc:
        raise _bad("address", "not an Ethereum address") from exc
    expiration = None
    if ttl_seconds is not None:
        if not 0 < ttl_seconds <= _MAX_SECONDS:
            raise InvalidInputError(f"ttl_seconds must be in (0, {_MAX_SECONDS}]")
        expiration = _format_datetime(issued + timedelta(seconds=ttl_seconds))
    return SiweMessage(
        domain=domain,
        address=checksummed,
        uri=uri,
        chain_id=chain_id,
        nonce=generate_nonce() if nonce is None else nonce,
        issued_at=_format_datetime(issued),
        statement=statement,
        expiration_time=expiration,
        resources=tuple(resources) or None,
        scheme=scheme,
        request_id=request_id,
    )


def _signature_bytes(signature: bytes | str) -> bytes:
    if isinstance(signature, bytes | bytearray):
        raw = bytes(signature)
    elif isinstance(signature, str):
        hex_text = signature[2:] if signature[:2] in ("0x", "0X") else signature
        if len(hex_text) % 2 or not _matches(_HEX_RE, hex_text):
            raise SignatureError("malformed signature: not hex")
        raw = bytes.fromhex(hex_text)
    else:
        raise SignatureError("signature must be bytes or a hex string")
    if len(raw) != SIGNATURE_SIZE:
        raise SignatureError(f"malformed signature: expected {SIGNATURE_SIZE} bytes")
    return raw


def verify(
    message: SiweMessage | str,
    signature: bytes | str,
    *,
    domain: str | None = None,
    nonce: str | None = None,
    chain_id: int | None = None,
    now: datetime | None = None,
    clock_skew_seconds: float = 0,
) -> SiweMessage:
    """Check ``message`` and its EIP-191 ``signature``; return the parsed message.

    Raises :class:`InvalidInputError` for a malformed message or argument,
    :class:`AuthError` for a domain, nonce or chain id mismatch or a time outside the
    validity window (widened by ``clock_skew_seconds``), and :class:`SignatureError` if the
    signature is malformed or not by ``message.address`` (EOAs only, no EIP-1271).
    """
    if isinstance(message, SiweMessage):
        parsed, text = message, message.to_text()
    else:
        parsed, text = SiweMessage.parse(message), message
    if not 0 <= clock_skew_seconds <= _MAX_SECONDS:
        raise InvalidInputError(f"clock_skew_seconds must be in [0, {_MAX_SECONDS}]")
    moment = _require_aware(now, "now") if now is not None else datetime.now(UTC)
    skew = timedelta(seconds=clock_skew_seconds)
    if domain is not None and parsed.domain != domain:
        raise AuthError("SIWE message domain does not match")
    if nonce is not None and parsed.nonce != nonce:
        raise AuthError("SIWE message nonce does not match")
    if chain_id is not None and parsed.chain_id != chain_id:
        raise AuthError("SIWE message chain ID does not match")
    expires, starts = parsed.expiration_time, parsed.not_before
    if expires is not None and moment - skew >= _parse_datetime(expires, "expiration-time"):
        raise AuthError("SIWE message expired")
    if starts is not None and moment + skew < _parse_datetime(starts, "not-before"):
        raise AuthError("SIWE message not yet valid")
    signer = recover_signer(text.encode("utf-8"), _signature_bytes(signature))
    if signer != parsed.address:
        raise SignatureError("SIWE signature is not from the message's address")
    return parsed
