"""SIWE (EIP-4361): reference vectors, exact round trips, and every verification failure."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from medmesh.errors import AuthError, InvalidInputError, SignatureError
from medmesh.identity.siwe import NONCE_LENGTH, SiweMessage, generate_nonce, new_message, verify
from medmesh.identity.wallet import Wallet

DATA = Path(__file__).resolve().parents[2] / "data" / "siwe"

# Vector field names (camelCase, as in the reference repository) -> SiweMessage attributes.
FIELDS = {
    "scheme": "scheme",
    "domain": "domain",
    "address": "address",
    "statement": "statement",
    "uri": "uri",
    "version": "version",
    "chainId": "chain_id",
    "nonce": "nonce",
    "issuedAt": "issued_at",
    "expirationTime": "expiration_time",
    "notBefore": "not_before",
    "requestId": "request_id",
    "resources": "resources",
}

# Vectors whose expectation contradicts the EIP-4361 ABNF; see tests/data/siwe/README.md.
PARSING_NEGATIVE_SKIPS = {
    "domain not RFC4501 authority": (
        "'not_rfc4501' is a valid RFC 3986 authority ('_' is unreserved), so the ABNF accepts "
        "it; the reference's own later grammar accepts it too (a fork fixed the vector to "
        "'#notrfc4501', tested below)"
    ),
    "version not 1": (
        "defective vector: its text says 'Version: 1' and is otherwise valid "
        "(a fork fixed it to 'Version: 3', tested below)"
    ),
}
EIP1271_SKIP = (
    "EIP-1271 / EIP-6492 contract-wallet signatures need an RPC call to the chain; "
    "medmesh.identity.siwe verifies EOA (EIP-191) signatures only"
)

# Expected error class of each verification_negative.json vector (exact class, not a subclass).
VERIFICATION_NEGATIVE_ERRORS: dict[str, type[Exception]] = {
    "expired message": AuthError,
    "domain binding": AuthError,
    "custom time": AuthError,
    "custom nonce": AuthError,
    "malformed signature": SignatureError,
    "wrong signature": SignatureError,
    "not yet valid": AuthError,
    "invalid issuedAt": InvalidInputError,
    "invalid notBefore": InvalidInputError,
    "invalid expirationTime": InvalidInputError,
}

SPEC_EXAMPLE = (
    "example.com wants you to sign in with your Ethereum account:\n"
    "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n"
    "\n"
    "I accept the ExampleOrg Terms of Service: https://example.com/tos\n"
    "\n"
    "URI: https://example.com/login\n"
    "Version: 1\n"
    "Chain ID: 1\n"
    "Nonce: 32891756\n"
    "Issued At: 2021-09-30T16:25:24Z\n"
    "Resources:\n"
    "- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n"
    "- https://example.com/my-web2-claim.json"
)
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ADDRESS = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
ISSUED = "2021-09-30T16:25:24Z"
STATEMENT = "I accept the ExampleOrg Terms of Service: https://example.com/tos"
IPFS = "\n- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/"
CLAIM = "\n- https://example.com/my-web2-claim.json"
HOST = "example.com wants"


def load(name: str) -> dict[str, Any]:
    with (DATA / name).open(encoding="utf-8") as handle:
        vectors: dict[str, Any] = json.load(handle)
    return vectors


def from_fields(fields: dict[str, Any]) -> SiweMessage:
    """Build a message from a vector's camelCase fields (other keys are ignored)."""
    kwargs = {FIELDS[key]: value for key, value in fields.items() if key in FIELDS}
    if "resources" in kwargs:
        kwargs["resources"] = tuple(kwargs["resources"])
    return SiweMessage(**kwargs)


def vector_time(fields: dict[str, Any]) -> datetime:
    """The verification time the reference tests use: ``time`` if given, else ``issuedAt``."""
    text = fields.get("time", fields["issuedAt"])
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def replace_line(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def message(wallet: Wallet) -> SiweMessage:
    return new_message(
        "medmesh.example",
        wallet.address,
        "https://medmesh.example/login",
        31337,
        statement="Sign in to medmesh",
        ttl_seconds=600,
        now=NOW,
    )


@pytest.fixture(scope="module")
def signature(wallet: Wallet, message: SiweMessage) -> bytes:
    return wallet.sign_message(message.to_text().encode())


# --- reference vectors --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "vector"), load("parsing_positive.json").items())
def test_parsing_positive(name: str, vector: dict[str, Any]) -> None:
    parsed = SiweMessage.parse(vector["message"])
    expected = vector["fields"]
    for key, attribute in FIELDS.items():
        value = getattr(parsed, attribute)
        if key not in expected:
            assert value == ("1" if key == "version" else None), key
        elif key == "chainId":
            assert value == int(expected[key])
        elif key == "resources":
            assert value == tuple(expected[key])
        else:
            assert value == expected[key], key
    assert parsed.to_text() == vector["message"]
    assert from_fields(expected).to_text() == vector["message"]
    assert SiweMessage.parse(parsed.to_text()) == parsed


@pytest.mark.parametrize(("name", "vector"), load("parsing_positive.json").items())
def test_parsing_positive_signed_by_fresh_key(
    name: str, vector: dict[str, Any], wallet: Wallet
) -> None:
    msg = dataclasses.replace(from_fields(vector["fields"]), address=wallet.address)
    sig = wallet.sign_message(msg.to_text().encode())
    assert verify(msg, sig, now=vector_time(vector["fields"])) == msg


@pytest.mark.parametrize(
    ("name", "text"),
    [*load("parsing_negative.json").items(), *load("invalid_uris.json").items()],
)
def test_parsing_negative(name: str, text: str) -> None:
    if name in PARSING_NEGATIVE_SKIPS:
        pytest.skip(PARSING_NEGATIVE_SKIPS[name])
    with pytest.raises(InvalidInputError, match=r"^SIWE message"):
        SiweMessage.parse(text)


@pytest.mark.parametrize(("name", "vector"), load("message_objects.json").items())
def test_message_objects(name: str, vector: dict[str, Any]) -> None:
    if vector["error"] != "none":
        with pytest.raises(InvalidInputError):
            from_fields(vector["msg"])
        return
    msg = from_fields(vector["msg"])
    assert SiweMessage.parse(msg.to_text()) == msg


@pytest.mark.parametrize(("name", "vector"), load("verification_positive.json").items())
def test_verification_positive(name: str, vector: dict[str, Any]) -> None:
    msg = from_fields(vector)
    now = vector_time(vector)
    assert verify(msg, vector["signature"], now=now) == msg
    assert verify(msg.to_text(), bytes.fromhex(vector["signature"][2:]), now=now) == msg


@pytest.mark.parametrize(("name", "vector"), load("verification_negative.json").items())
def test_verification_negative(name: str, vector: dict[str, Any]) -> None:
    expected = VERIFICATION_NEGATIVE_ERRORS[name]
    with pytest.raises(expected) as caught:
        verify(
            from_fields(vector),
            vector["signature"],
            domain=vector.get("domainBinding"),
            nonce=vector.get("matchNonce"),
            now=vector_time(vector),
        )
    assert caught.type is expected
    assert vector["signature"][2:18] not in str(caught.value)


@pytest.mark.parametrize(("name", "vector"), load("eip1271.json").items())
def test_eip1271_vectors(name: str, vector: dict[str, Any]) -> None:
    pytest.skip(EIP1271_SKIP)


def test_contract_wallet_signatures_are_refused() -> None:
    for vector in load("eip1271.json").values():
        msg = SiweMessage.parse(vector["message"])
        with pytest.raises(SignatureError):
            verify(msg, vector["signature"], now=NOW)


# --- parsing and formatting ---------------------------------------------------------------


def test_spec_example_round_trips() -> None:
    msg = SiweMessage.parse(SPEC_EXAMPLE)
    assert msg.domain == "example.com" and msg.scheme is None
    assert msg.statement == STATEMENT
    assert msg.chain_id == 1 and msg.nonce == "32891756"
    assert msg.resources is not None and len(msg.resources) == 2
    assert msg.to_text() == SPEC_EXAMPLE
    for variant in (
        replace_line(SPEC_EXAMPLE, HOST, "example.com:3388 wants"),
        replace_line(SPEC_EXAMPLE, HOST, "https://example.com wants"),
    ):
        assert SiweMessage.parse(variant).to_text() == variant


@pytest.mark.parametrize(
    ("old", "new", "attribute", "value"),
    [
        (STATEMENT, "", "statement", ""),  # present but empty: address LF LF LF LF "URI: "
        ("Resources:" + IPFS + CLAIM, "Request ID: ", "request_id", ""),
        (IPFS + CLAIM, "", "resources", ()),  # "Resources:" with an empty list
        (ISSUED, "2021-09-30t16:25:24.123456789z", "issued_at", "2021-09-30t16:25:24.123456789z"),
        (ISSUED, "2021-09-30T18:25:24+02:00", "issued_at", "2021-09-30T18:25:24+02:00"),
        (ISSUED, "2024-02-29T23:59:59-00:00", "issued_at", "2024-02-29T23:59:59-00:00"),
        (HOST, "u%20v:pw@[v1.fe80::a+en1]:80 wants", "domain", "u%20v:pw@[v1.fe80::a+en1]:80"),
        (HOST, "[2001:db8::1] wants", "domain", "[2001:db8::1]"),
        ("Chain ID: 1", "Chain ID: 0", "chain_id", 0),
        ("https://example.com/login", "urn:isbn:0451450523", "uri", "urn:isbn:0451450523"),
        ("Nonce: 32891756", "Nonce: AbCdEfGh12345678", "nonce", "AbCdEfGh12345678"),
    ],
)
def test_edge_cases_accepted_and_round_trip(old: str, new: str, attribute: str, value: Any) -> None:
    text = replace_line(SPEC_EXAMPLE, old, new)
    msg = SiweMessage.parse(text)
    assert getattr(msg, attribute) == value
    assert msg.to_text() == text


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("Version: 1", "Version: 3", "version"),
        ("Version: 1", "version: 1", "version"),
        (HOST, "#notrfc4501 wants", "domain"),
        (HOST, "user@ wants", "domain"),
        (HOST, "[fe80::1%25eth0] wants", "domain"),
        (HOST, "exa mple.com wants", "domain"),
        (HOST, "://example.com wants", "scheme"),
        (HOST, "1http://example.com wants", "scheme"),
        (HOST, "example.com Wants", "first line"),
        (ADDRESS, ADDRESS.lower(), "address"),
        (ADDRESS, "0x" + ADDRESS[2:].upper(), "address"),
        (ADDRESS, "0xc" + ADDRESS[3:], "address"),  # mixed case, wrong checksum
        (ADDRESS, "0X" + ADDRESS[2:], "address"),
        ("Terms of Service", "Terms <of> Service", "statement"),
        ("Terms of Service", "Términos of Service", "statement"),
        ("Terms of Service", "Terms of Service\r", "statement"),
        ("https://example.com/login", "https://example.com/log in", "URI"),
        ("https://example.com/login", "https://example.com/%zz", "URI"),
        ("https://example.com/login", "/login", "URI"),
        ("URI: ", "URI:  ", "URI"),
        ("Chain ID: 1", "Chain ID: 01", "chain ID"),
        ("Chain ID: 1", "Chain ID: -1", "chain ID"),
        ("Chain ID: 1", "Chain ID: 1" + "0" * 80, "chain ID"),
        ("Nonce: 32891756", "Nonce: 3289175", "nonce"),
        ("Nonce: 32891756", "Nonce: 32891756!", "nonce"),
        (ISSUED, "2021-02-30T16:25:24Z", "issued-at"),
        (ISSUED, "2021-02-32T00:00:00.000Z", "issued-at"),
        (ISSUED, "2022-13-17T12:45:13.610Z", "issued-at"),
        (ISSUED, "2021-09-30T24:00:00Z", "issued-at"),
        (ISSUED, "2016-12-31T23:59:60Z", "issued-at"),  # leap second: not representable
        (ISSUED, "2021-09-30T16:25:24+24:00", "issued-at"),
        (ISSUED, "2021-09-30T16:25:24", "issued-at"),
        (ISSUED, "2021-09-30 16:25:24Z", "issued-at"),
        (ISSUED, "2021-09-30T16:25:24.Z", "issued-at"),
        (ISSUED, ISSUED + "\nExpiration Time: 2021-13-01T00:00:00Z", "expiration-time"),
        (ISSUED, ISSUED + "\nNot Before: yesterday", "not-before"),
        (ISSUED, ISSUED + "\nRequest ID: a b", "request ID"),
        (ISSUED, ISSUED + "\nIssued At: " + ISSUED, "out-of-order"),
        (CLAIM, "\n-https://example.com", "resources"),
        (CLAIM, "\n- example.com", "resources"),
    ],
)
def test_malformed_messages_name_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(field)):
        SiweMessage.parse(replace_line(SPEC_EXAMPLE, old, new))


@pytest.mark.parametrize(
    "text",
    [
        "",
        SPEC_EXAMPLE + "\n",
        SPEC_EXAMPLE.replace("\n", "\r\n"),
        "\n" + SPEC_EXAMPLE,
        SPEC_EXAMPLE.replace("\n\nURI:", "\nURI:"),
        SPEC_EXAMPLE.replace("\n\nI accept", "\nI accept"),
        SPEC_EXAMPLE.replace("Resources:", "Resources: "),
    ],
)
def test_layout_errors(text: str) -> None:
    with pytest.raises(InvalidInputError):
        SiweMessage.parse(text)


def test_parse_rejects_non_text() -> None:
    with pytest.raises(InvalidInputError):
        SiweMessage.parse(SPEC_EXAMPLE.encode())  # type: ignore[arg-type]


def test_constructor_validates_every_field(message: SiweMessage) -> None:
    for change in (
        {"chain_id": True},
        {"chain_id": -1},
        {"chain_id": 2**256},
        {"chain_id": "1"},
        {"version": "2"},
        {"resources": "https://example.com"},
        {"resources": ("https://example.com", 7)},
        {"statement": "two\nlines"},
        {"scheme": ""},
        {"domain": ""},
        {"nonce": "short"},
    ):
        with pytest.raises(InvalidInputError):
            dataclasses.replace(message, **change)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.nonce = "x" * 16  # type: ignore[misc]
    listed = dataclasses.replace(message, resources=["https://a.example/x"])  # type: ignore[arg-type]
    assert listed.resources == ("https://a.example/x",)


# --- creating messages --------------------------------------------------------------------


def test_new_message(wallet: Wallet, message: SiweMessage) -> None:
    assert message.address == wallet.address and message.chain_id == 31337
    assert message.issued_at == "2030-01-01T12:00:00.000Z"
    assert message.expiration_time == "2030-01-01T12:10:00.000Z"
    assert message.not_before is None and message.resources is None
    assert re.fullmatch(r"[A-Za-z0-9]{16,}", message.nonce)
    assert SiweMessage.parse(message.to_text()) == message

    other = new_message(
        "medmesh.example",
        wallet.address.lower(),
        "https://medmesh.example",
        1,
        ttl_seconds=None,
        resources=["ipfs://bafy"],
        nonce="abcdefgh",
        now=datetime(2030, 1, 1, 13, 0, 0, 123999, tzinfo=timezone(timedelta(hours=1))),
        scheme="https",
        request_id="req-1",
    )
    assert other.address == wallet.address
    assert other.issued_at == "2030-01-01T12:00:00.123Z"
    assert other.expiration_time is None and other.resources == ("ipfs://bafy",)
    assert other.to_text().startswith("https://medmesh.example wants")
    assert new_message("a.example", wallet.address, "https://a.example", 1).nonce != message.nonce


def test_new_message_rejects_bad_input(wallet: Wallet) -> None:
    for kwargs in (
        {"address": "0x1234"},
        {"ttl_seconds": 0},
        {"ttl_seconds": 1e30},
        {"now": datetime(2030, 1, 1)},
        {"nonce": "short"},
        {"domain": "bad domain"},
    ):
        arguments: dict[str, Any] = {
            "domain": "a.example",
            "address": wallet.address,
            "uri": "https://a.example",
            "chain_id": 1,
            **kwargs,
        }
        with pytest.raises(InvalidInputError):
            new_message(**arguments)


def test_generate_nonce() -> None:
    nonces = {generate_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(re.fullmatch(rf"[A-Za-z0-9]{{{NONCE_LENGTH}}}", nonce) for nonce in nonces)
    assert NONCE_LENGTH >= 16


# --- verification -------------------------------------------------------------------------


def test_verify_fresh_signature(wallet: Wallet, message: SiweMessage, signature: bytes) -> None:
    assert verify(message, signature, now=NOW) == message
    assert verify(message.to_text(), "0x" + signature.hex(), now=NOW) == message
    assert verify(message, signature.hex().upper(), now=NOW) == message
    assert (
        verify(
            message,
            signature,
            domain="medmesh.example",
            nonce=message.nonce,
            chain_id=31337,
            now=NOW,
        )
        == message
    )


def test_verify_with_eth_account_signature(message: SiweMessage) -> None:
    account = Account.create()
    msg = dataclasses.replace(message, address=account.address)
    signed = account.sign_message(encode_defunct(text=msg.to_text()))
    assert verify(msg, bytes(signed.signature), now=NOW) == msg


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": "tamperedNonce123"},
        {"domain": "evil.example"},
        {"expiration_time": "2099-01-01T00:00:00.000Z"},
        {"statement": "Sign in to medmesh and transfer everything"},
        {"chain_id": 1},
        {"resources": ("https://evil.example",)},
    ],
)
def test_tampered_message_fails(
    message: SiweMessage, signature: bytes, change: dict[str, Any]
) -> None:
    tampered = dataclasses.replace(message, **change)
    with pytest.raises(SignatureError):
        verify(tampered, signature, now=NOW)
    with pytest.raises(SignatureError):
        verify(tampered.to_text(), signature, now=NOW)


def test_signature_from_another_key_fails(message: SiweMessage) -> None:
    other = Wallet.create().sign_message(message.to_text().encode())
    with pytest.raises(SignatureError, match="not from"):
        verify(message, other, now=NOW)


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00" * 64, b"\x00" * 66, "0x", "0x1234", "zz" * 65, "0x" + "ab " * 65, 12345],
)
def test_malformed_signature(message: SiweMessage, bad: Any) -> None:
    with pytest.raises(SignatureError):
        verify(message, bad, now=NOW)


def test_expiry_and_not_before(message: SiweMessage, signature: bytes) -> None:
    expires = NOW + timedelta(minutes=10)
    verify(message, signature, now=expires - timedelta(microseconds=1))
    for late in (expires, expires + timedelta(days=1)):
        with pytest.raises(AuthError, match=r"^SIWE message expired$") as caught:
            verify(message, signature, now=late)
        assert caught.type is AuthError
    verify(message, signature, now=expires + timedelta(seconds=29), clock_skew_seconds=30)
    with pytest.raises(AuthError, match="expired"):
        verify(message, signature, now=expires + timedelta(seconds=30), clock_skew_seconds=30)

    account = Account.create()
    future = dataclasses.replace(
        message, address=account.address, not_before="2030-01-01T14:00:00+02:00"
    )
    sig = bytes(account.sign_message(encode_defunct(text=future.to_text())).signature)
    start = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    verify(future, sig, now=start)
    with pytest.raises(AuthError, match=r"^SIWE message not yet valid$") as caught:
        verify(future, sig, now=start - timedelta(microseconds=1))
    assert caught.type is AuthError
    verify(future, sig, now=start - timedelta(seconds=5), clock_skew_seconds=5)


@pytest.mark.parametrize(
    ("option", "value"),
    [("domain", "evil.example"), ("nonce", "someOtherNonce1"), ("chain_id", 1)],
)
def test_binding_mismatch(message: SiweMessage, signature: bytes, option: str, value: Any) -> None:
    with pytest.raises(AuthError, match="does not match") as caught:
        verify(message, signature, now=NOW, **{option: value})
    assert caught.type is AuthError


def test_verify_rejects_bad_arguments(message: SiweMessage, signature: bytes) -> None:
    with pytest.raises(InvalidInputError):
        verify(message, signature, now=datetime(2030, 1, 1))
    with pytest.raises(InvalidInputError):
        verify(message, signature, now=NOW, clock_skew_seconds=-1)
    with pytest.raises(InvalidInputError):
        verify(message.to_text() + "\n", signature, now=NOW)


def test_errors_never_contain_the_signature(message: SiweMessage, signature: bytes) -> None:
    tampered = dataclasses.replace(message, nonce="tamperedNonce123")
    for sig in (signature, "0x" + signature.hex(), signature[:-1]):
        with pytest.raises(SignatureError) as caught:
            verify(tampered, sig, now=NOW)
        assert signature.hex()[:16] not in str(caught.value).lower()


def test_default_clock_is_now(wallet: Wallet) -> None:
    msg = new_message("a.example", wallet.address, "https://a.example", 1, ttl_seconds=60)
    sig = wallet.sign_message(msg.to_text().encode())
    assert verify(msg, sig) == msg
    expired = new_message(
        "a.example",
        wallet.address,
        "https://a.example",
        1,
        ttl_seconds=60,
        now=datetime.now(UTC) - timedelta(minutes=5),
    )
    with pytest.raises(AuthError, match="expired"):
        verify(expired, wallet.sign_message(expired.to_text().encode()))
