"""Tests for medmesh.storage.auth: EIP-191 signed requests between clients and nodes."""

from __future__ import annotations

import time

import pytest

from medmesh.errors import AuthError, ReplayError, SignatureError, UntrustedSignerError
from medmesh.identity import Wallet
from medmesh.storage.auth import (
    H_NONCE,
    H_SIGNATURE,
    H_SIGNER,
    H_TIMESTAMP,
    MAX_SKEW,
    ReplayGuard,
    body_digest,
    sign_request,
    verify_request,
)

NODE = "0x" + "ab" * 20
OTHER_NODE = "0x" + "cd" * 20
TARGET = "/ipfs/bafkreib2xmnmqa2k6cuizqcniat2zdnz5bvetgkx4ydsyoxorc7eewz5ja"
BODY = b"block bytes"


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def stranger() -> Wallet:
    return Wallet.create()


def _signed(wallet: Wallet, *, now: float | None = None) -> dict[str, str]:
    return sign_request(wallet, NODE, "PUT", TARGET, body_digest(BODY), now=now)


def _verify(
    headers: dict[str, str],
    trusted: frozenset[str] | None,
    guard: ReplayGuard | None = None,
    *,
    node: str = NODE,
    method: str = "PUT",
    target: str = TARGET,
    body: bytes = BODY,
    now: float | None = None,
) -> str:
    return verify_request(
        headers,
        node,
        method,
        target,
        body_digest(body),
        trusted,
        guard or ReplayGuard(),
        now=now,
    )


def test_body_digest_is_blake3_256_hex() -> None:
    # BLAKE3 of the empty input, from the BLAKE3 reference test vectors
    assert body_digest(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert body_digest(memoryview(b"abc")) == body_digest(b"abc")


def test_sign_then_verify_returns_the_signer(wallet: Wallet) -> None:
    headers = _signed(wallet)
    assert set(headers) == {H_SIGNER, H_TIMESTAMP, H_NONCE, H_SIGNATURE}
    assert headers[H_SIGNER] == wallet.address
    assert len(headers[H_NONCE]) == 32
    assert headers[H_SIGNATURE].startswith("0x") and len(headers[H_SIGNATURE]) == 2 + 130
    assert abs(int(headers[H_TIMESTAMP]) - time.time()) < 5
    assert _verify(headers, frozenset({wallet.address})) == wallet.address


def test_open_node_accepts_any_valid_signer(wallet: Wallet) -> None:
    assert _verify(_signed(wallet), None) == wallet.address


def test_node_id_case_does_not_matter(wallet: Wallet) -> None:
    headers = sign_request(wallet, NODE.upper().replace("0X", "0x"), "PUT", TARGET, "d")
    assert verify_request(headers, NODE, "PUT", TARGET, "d", None, ReplayGuard()) == wallet.address


def test_nonces_are_fresh_per_request(wallet: Wallet) -> None:
    assert _signed(wallet)[H_NONCE] != _signed(wallet)[H_NONCE]


def test_request_for_another_node_is_refused(wallet: Wallet) -> None:
    with pytest.raises(SignatureError, match="does not match its signer"):
        _verify(_signed(wallet), frozenset({wallet.address}), node=OTHER_NODE)


def test_tampered_body_is_refused(wallet: Wallet) -> None:
    with pytest.raises(SignatureError, match="does not match its signer"):
        _verify(_signed(wallet), frozenset({wallet.address}), body=BODY + b"!")


def test_tampered_path_is_refused(wallet: Wallet) -> None:
    with pytest.raises(SignatureError):
        _verify(_signed(wallet), frozenset({wallet.address}), target=TARGET + "?x=1")


def test_other_method_is_refused(wallet: Wallet) -> None:
    with pytest.raises(SignatureError):
        _verify(_signed(wallet), frozenset({wallet.address}), method="DELETE")


def test_claiming_another_signer_is_refused(wallet: Wallet, stranger: Wallet) -> None:
    headers = {**_signed(stranger), H_SIGNER: wallet.address}
    with pytest.raises(SignatureError, match="does not match its signer"):
        _verify(headers, frozenset({wallet.address}))


def test_untrusted_signer_is_refused(wallet: Wallet, stranger: Wallet) -> None:
    with pytest.raises(UntrustedSignerError, match="not trusted"):
        _verify(_signed(stranger), frozenset({wallet.address}))
    with pytest.raises(UntrustedSignerError):
        _verify(_signed(wallet), frozenset())  # empty set: nobody may write


@pytest.mark.parametrize("missing", [H_SIGNER, H_TIMESTAMP, H_NONCE, H_SIGNATURE])
def test_missing_header_is_refused(wallet: Wallet, missing: str) -> None:
    headers = _signed(wallet)
    del headers[missing]
    with pytest.raises(SignatureError, match="not signed"):
        _verify(headers, None)


@pytest.mark.parametrize(
    "header,value,message",
    [
        (H_TIMESTAMP, "soon", "not signed"),
        (H_TIMESTAMP, "", "not signed"),
        (H_NONCE, "00" * 15, "malformed request nonce"),
        (H_NONCE, "G" * 32, "malformed request nonce"),
        (H_NONCE, "AB" * 16, "malformed request nonce"),
        (H_SIGNATURE, "0xzz", "malformed request signature"),
        (H_SIGNATURE, "0x" + "11" * 64, "malformed request signature"),
        (H_SIGNATURE, "0x" + "00" * 65, "invalid request signature"),
        (H_SIGNER, "not-an-address", "malformed request signature"),
    ],
)
def test_malformed_header_is_refused(wallet: Wallet, header: str, value: str, message: str) -> None:
    headers = {**_signed(wallet), header: value}
    with pytest.raises(SignatureError, match=message):
        _verify(headers, None)


def test_lowercase_signer_address_is_accepted(wallet: Wallet) -> None:
    headers = {**_signed(wallet), H_SIGNER: wallet.address.lower()}
    assert _verify(headers, frozenset({wallet.address})) == wallet.address


def test_stale_and_future_timestamps_are_refused(wallet: Wallet) -> None:
    now = time.time()
    with pytest.raises(ReplayError, match="outside the accepted window"):
        _verify(_signed(wallet, now=now - MAX_SKEW - 10), None, now=now)
    with pytest.raises(ReplayError, match="outside the accepted window"):
        _verify(_signed(wallet, now=now + MAX_SKEW + 10), None, now=now)
    assert _verify(_signed(wallet, now=now - MAX_SKEW + 10), None, now=now) == wallet.address


def test_replayed_nonce_is_refused(wallet: Wallet) -> None:
    # Prepare
    guard = ReplayGuard()
    headers = _signed(wallet)
    # Execute / Assert
    assert _verify(headers, None, guard) == wallet.address
    with pytest.raises(ReplayError, match="already used"):
        _verify(headers, None, guard)
    assert _verify(_signed(wallet), None, guard) == wallet.address  # a new nonce is fine


def test_replay_guard_remembers_nonces_for_the_whole_window() -> None:
    guard = ReplayGuard(max_skew=10)
    t0 = 1_000_000.0
    guard.check("a" * 32, int(t0) + 10, now=t0)  # a timestamp at the edge of the future
    # 19 s later the same timestamp is still inside the window: the nonce must be refused
    with pytest.raises(ReplayError, match="already used"):
        guard.check("a" * 32, int(t0) + 10, now=t0 + 19)
    # once the timestamp is stale the request is refused for that reason
    with pytest.raises(ReplayError, match="outside"):
        guard.check("a" * 32, int(t0) + 10, now=t0 + 21)


def test_replay_guard_forgets_old_nonces_and_stays_bounded() -> None:
    guard = ReplayGuard(max_skew=10, max_entries=3)
    t0 = 2_000_000.0
    for i in range(5):
        guard.check(f"{i:032x}", int(t0), now=t0)
    assert len(guard._seen) <= 3
    guard.check("f" * 32, int(t0) + 100, now=t0 + 100)
    assert list(guard._seen) == ["f" * 32]


def test_auth_errors_share_one_base(wallet: Wallet) -> None:
    with pytest.raises(AuthError):
        _verify({}, None)
