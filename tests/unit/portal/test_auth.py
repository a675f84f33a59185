"""Portal sign-in: a keystore unlocked on the server signs a SIWE message that the gateway's
sessions verify; browser-wallet messages go through the same verifier; tampering, replay,
wrong passphrases and stale sessions are refused."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medmesh.consent.sessions import SESSION_TTL, Sessions
from medmesh.errors import AuthError, ReplayError, SignatureError
from medmesh.identity import Wallet, WrongPassphraseError, save_wallet
from medmesh.portal.auth import PortalSessions, load_demo_users, message_for, sign_in_message

DOMAIN = "127.0.0.1:7700"
URI = f"http://{DOMAIN}"
PASS = "pass phrase"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # nonces are issued on the real clock

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keystore(tmp_path: Path) -> tuple[Path, Wallet]:
    wallet = Wallet.create()
    save_wallet(wallet, tmp_path / "wallet.json", PASS, scrypt_n=2**10)
    return tmp_path / "wallet.json", wallet


def portal_sessions(clock: Clock) -> PortalSessions:
    return PortalSessions(Sessions(DOMAIN, 31337), URI, clock=clock)


def test_keystore_sign_in_keeps_the_wallet_for_the_session(keystore: tuple[Path, Wallet]) -> None:
    path, wallet = keystore
    clock = Clock()
    sessions = portal_sessions(clock)
    token, session = sessions.with_keystore(path, PASS, name="patient-001")
    assert session.address == wallet.address and session.name == "patient-001"
    assert session.wallet is not None and session.wallet.address == wallet.address
    assert session.expires_at == clock.now + SESSION_TTL
    assert sessions.resolve(token) is session
    assert wallet.address not in repr(session.opened) and "Wallet" not in repr(session)
    sessions.end(token)
    assert session.wallet is None and not session.opened
    with pytest.raises(AuthError):
        sessions.resolve(token)


def test_wrong_passphrase_signs_nothing(keystore: tuple[Path, Wallet]) -> None:
    path, _ = keystore
    sessions = portal_sessions(Clock())
    with pytest.raises(WrongPassphraseError) as info:
        sessions.with_keystore(path, "not it")
    assert "not it" not in str(info.value)


def test_stale_unknown_and_missing_sessions_are_refused(keystore: tuple[Path, Wallet]) -> None:
    path, _ = keystore
    clock = Clock()
    sessions = portal_sessions(clock)
    token, _ = sessions.with_keystore(path, PASS)
    clock.now += SESSION_TTL + 1
    with pytest.raises(AuthError):
        sessions.resolve(token)
    for bad in ("", None, "made-up-token"):
        with pytest.raises(AuthError):
            sessions.resolve(bad)


def test_browser_wallet_message_verified_and_single_use() -> None:
    wallet = Wallet.create()
    clock = Clock()
    sessions = portal_sessions(clock)
    text = message_for(wallet.address.lower(), sessions.sessions, URI, now=clock.now)
    assert wallet.address in text  # checksummed for the wallet
    signature = "0x" + wallet.sign_message(text.encode()).hex()
    token, session = sessions.with_signature(text, signature)
    assert session.address == wallet.address and session.wallet is None
    assert sessions.resolve(token) is session
    with pytest.raises(ReplayError):  # the nonce is spent
        sessions.with_signature(text, signature)


@pytest.mark.parametrize("field", ["domain", "nonce", "address"])
def test_tampered_messages_are_refused(field: str) -> None:
    wallet, other = Wallet.create(), Wallet.create()
    clock = Clock()
    sessions = portal_sessions(clock)
    text, signature = sign_in_message(wallet, sessions.sessions, URI, now=clock.now)
    if field == "domain":
        forged = text.replace(DOMAIN, "evil.example", 1)
        error: type[Exception] = AuthError
    elif field == "nonce":
        fresh = sessions.sessions.new_nonce()  # a nonce the gateway did issue: the signature breaks
        nonce_line = next(line for line in text.split("\n") if line.startswith("Nonce: "))
        forged = text.replace(nonce_line, f"Nonce: {fresh}")
        error = SignatureError
    else:
        forged = text.replace(wallet.address, other.address)
        error = SignatureError
    with pytest.raises(error):
        sessions.with_signature(forged, signature)
    token, _ = sessions.with_signature(text, signature)  # the genuine one still works
    assert sessions.resolve(token).address == wallet.address


def test_csrf_token_must_match(keystore: tuple[Path, Wallet]) -> None:
    path, _ = keystore
    sessions = portal_sessions(Clock())
    _, session = sessions.with_keystore(path, PASS)
    sessions.check_csrf(session, session.csrf)
    for bad in (None, "", session.csrf + "x"):
        with pytest.raises(AuthError):
            sessions.check_csrf(session, bad)


def test_demo_users_come_from_the_population_file(tmp_path: Path) -> None:
    assert load_demo_users(tmp_path) == []
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "population.json").write_text(
        '{"passphrase": "x", "participants": [{"name": "patient-001", "role": "patient", '
        '"address": "0x' + "11" * 20 + '", "home": "/h/p1"}, {"broken": true}]}'
    )
    (user,) = load_demo_users(tmp_path)
    assert (user.name, user.role, user.keystore) == (
        "patient-001",
        "patient",
        Path("/h/p1/wallet.json"),
    )


def test_demo_users_appear_once_the_population_is_written(tmp_path: Path) -> None:
    """`medmesh up` starts the gateway before it seeds the demo world."""
    from types import SimpleNamespace

    from medmesh.portal.service import Portal

    gateway = SimpleNamespace(
        indexer=None, sessions=Sessions("127.0.0.1:7700", 31337), uri="http://127.0.0.1:7700"
    )  # what the demo users need of a gateway: nothing
    portal = Portal(gateway, tmp_path)  # type: ignore[arg-type]
    assert portal.demo_users == []
    (tmp_path / "synth").mkdir()
    who = {"name": "patient-001", "role": "patient", "address": "0x" + "11" * 20,
           "home": str(tmp_path / "synth" / "patient-001")}  # fmt: skip
    (tmp_path / "synth" / "population.json").write_text(json.dumps({"participants": [who]}))
    assert [u.name for u in portal.demo_users] == ["patient-001"]
