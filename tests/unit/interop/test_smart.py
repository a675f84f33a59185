"""SMART backend-services authorization: ES256K client assertions, token endpoint, scopes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from eth_keys.constants import SECPK1_N
from eth_keys.datatypes import Signature

from medmesh.crypto import EncryptionPrivateKey
from medmesh.errors import AuthError, InvalidInputError
from medmesh.identity.wallet import Wallet
from medmesh.interop.smart import (
    ASSERTION_TYPE,
    SUPPORTED_TYPES,
    Grant,
    OAuthError,
    Scope,
    Scopes,
    TokenService,
    client_assertion,
    oauth_uris_extension,
    security_service,
    smart_configuration,
)

URL = "https://gw.example/fhir/auth/token"
NOW = 1_800_000_000.0


# -- helpers -----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def part(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def es256k(wallet: Wallet, signing_input: str) -> str:
    _, r, s = wallet.sign_digest(hashlib.sha256(signing_input.encode()).digest())
    return b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def claims_for(address: str, **over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": address,
        "sub": address,
        "aud": URL,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "jti-1",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def forge(
    signer: Wallet,
    *,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A JWS with any header and claims, ES256K-signed by ``signer``."""
    header = {"alg": "ES256K", "typ": "JWT", "kid": signer.address} if header is None else header
    claims = claims_for(signer.address) if claims is None else claims
    signing_input = f"{part(header)}.{part(claims)}"
    return f"{signing_input}.{es256k(signer, signing_input)}"


def form(assertion: str, scope: str | None = "system/*.rs", **extra: str) -> dict[str, str]:
    out = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    if scope is not None:
        out["scope"] = scope
    out.update(extra)
    return out


@pytest.fixture(scope="module")
def hospital() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def stranger() -> Wallet:
    return Wallet.create()


@pytest.fixture
def service(hospital: Wallet) -> TokenService:
    return TokenService(URL, is_authorized=lambda a: a == hospital.address, clock=lambda: NOW)


def refused(
    service: TokenService, data: dict[str, str], error: str = "invalid_client"
) -> OAuthError:
    with pytest.raises(OAuthError) as info:
        service.token(data)
    assert info.value.error == error, info.value.message
    assert info.value.status == (401 if error == "invalid_client" else 400)
    return info.value


# -- Wallet.sign_digest ------------------------------------------------------------------


def test_sign_digest_is_low_s_and_recovers(hospital: Wallet) -> None:
    for i in range(64):
        digest = hashlib.sha256(i.to_bytes(2, "big")).digest()
        v, r, s = hospital.sign_digest(digest)
        assert v in (0, 1) and 0 < r < SECPK1_N and 0 < s <= SECPK1_N // 2
        key = Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest)
        assert key.to_checksum_address() == hospital.address
    assert hospital.sign_digest(b"\x07" * 32) == hospital.sign_digest(b"\x07" * 32)  # RFC 6979


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_sign_digest_needs_32_bytes(hospital: Wallet, digest: Any) -> None:
    with pytest.raises(InvalidInputError):
        hospital.sign_digest(digest)


# -- the happy path ----------------------------------------------------------------------


def test_token_and_resolve(service: TokenService, hospital: Wallet) -> None:
    # Prepare
    assertion = client_assertion(hospital, URL, now=NOW)
    # Execute
    answer = service.token(form(assertion, "system/Observation.rs system/Patient.r openid"))
    grant = service.resolve(answer["access_token"])
    # Assert
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 300
    assert answer["scope"] == "system/Observation.rs system/Patient.r"
    assert len(unb64(answer["access_token"])) == 32
    assert isinstance(grant, Grant) and grant.client == hospital.address
    assert grant.expires_at == NOW + 300
    assert grant.scopes.allows("Observation", "search")
    assert grant.scopes.allows("Patient", "read")
    assert not grant.scopes.allows("Patient", "search")
    assert not grant.scopes.allows("Observation", "create")


def test_assertion_shape(hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW, jti="abc", lifetime=120)
    header, claims, signature = assertion.split(".")
    assert json.loads(unb64(header)) == {"alg": "ES256K", "typ": "JWT", "kid": hospital.address}
    assert json.loads(unb64(claims)) == {
        "iss": hospital.address,
        "sub": hospital.address,
        "aud": URL,
        "exp": int(NOW) + 120,
        "iat": int(NOW),
        "jti": "abc",
    }
    assert len(unb64(signature)) == 64
    assert client_assertion(hospital, URL, now=NOW) != client_assertion(hospital, URL, now=NOW)


@pytest.mark.parametrize("lifetime", [0, -1, 301, True, 1.5])
def test_assertion_lifetime_is_bounded(hospital: Wallet, lifetime: Any) -> None:
    with pytest.raises(InvalidInputError):
        client_assertion(hospital, URL, lifetime=lifetime)


def test_real_clock(hospital: Wallet) -> None:
    service = TokenService(URL, is_authorized=lambda a: True, token_lifetime=3600)
    answer = service.token(form(client_assertion(hospital, URL)))
    assert answer["expires_in"] == 3600
    assert service.resolve(answer["access_token"]).client == hospital.address


def test_client_id_may_be_given(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW)
    service.token(form(assertion, client_id=hospital.address.lower()))


def test_lowercase_address_claims_are_accepted(service: TokenService, hospital: Wallet) -> None:
    low = hospital.address.lower()
    header = {"alg": "ES256K", "kid": low}
    answer = service.token(form(forge(hospital, header=header, claims=claims_for(low))))
    assert service.resolve(answer["access_token"]).client == hospital.address


def test_aud_may_be_a_list(service: TokenService, hospital: Wallet) -> None:
    claims = claims_for(hospital.address, aud=["https://other.example", URL])
    service.token(form(forge(hospital, claims=claims)))


def test_iat_within_skew_and_missing_iat(service: TokenService, hospital: Wallet) -> None:
    soon = claims_for(hospital.address, iat=int(NOW) + 30, exp=int(NOW) + 320, jti="a")
    service.token(form(forge(hospital, claims=soon)))
    no_iat = claims_for(hospital.address, iat=None, exp=int(NOW) + 200, jti="b")
    service.token(form(forge(hospital, claims=no_iat)))


# -- interoperability: standard ES256K, both ways --------------------------------------------


def test_signature_verifies_with_cryptography(hospital: Wallet) -> None:
    """Any ES256K verifier accepts the assertion: it is plain RFC 8812, not a private format."""
    assertion = client_assertion(hospital, URL, now=NOW)
    signing_input, _, sig = assertion.rpartition(".")
    raw = unb64(sig)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    digest = hashlib.sha256(signing_input.encode()).digest()
    keys = [Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(digest) for v in (0, 1)]
    (public,) = [k for k in keys if k.to_checksum_address() == hospital.address]
    point = b"\x04" + public.to_bytes()
    verifier = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), point)
    verifier.verify(encode_dss_signature(r, s), signing_input.encode(), ec.ECDSA(hashes.SHA256()))


def test_assertion_signed_by_cryptography_is_accepted() -> None:
    """An ES256K JWS made by another library (normalised to low s) is accepted."""
    private = ec.generate_private_key(ec.SECP256K1())
    secret = private.private_numbers().private_value.to_bytes(32, "big")
    wallet = Wallet.from_keys(secret, [EncryptionPrivateKey.generate()])
    header = {"alg": "ES256K", "typ": "JWT", "kid": wallet.address}
    signing_input = f"{part(header)}.{part(claims_for(wallet.address))}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    s = min(s, SECPK1_N - s)
    assertion = f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    service = TokenService(URL, is_authorized=lambda a: True, clock=lambda: NOW)
    assert service.resolve(service.token(form(assertion))["access_token"]).client == (
        wallet.address
    )


# -- refusals: algorithm -----------------------------------------------------------------


def test_alg_none(service: TokenService, hospital: Wallet) -> None:
    header = part({"alg": "none", "typ": "JWT", "kid": hospital.address})
    refused(service, form(f"{header}.{part(claims_for(hospital.address))}."))


def test_alg_hs256_with_the_address_as_secret(service: TokenService, hospital: Wallet) -> None:
    header = part({"alg": "HS256", "typ": "JWT", "kid": hospital.address})
    signing_input = f"{header}.{part(claims_for(hospital.address))}"
    mac = hmac.new(hospital.address.encode(), signing_input.encode(), hashlib.sha256).digest()
    refused(service, form(f"{signing_input}.{b64(mac)}"))


def test_alg_rs256(service: TokenService, hospital: Wallet) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = part({"alg": "RS256", "typ": "JWT", "kid": hospital.address})
    signing_input = f"{header}.{part(claims_for(hospital.address))}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    refused(service, form(f"{signing_input}.{b64(sig)}"))


@pytest.mark.parametrize("alg", ["es256k", "ES256", "ES384", None])
def test_other_algs(service: TokenService, hospital: Wallet, alg: str | None) -> None:
    header: dict[str, Any] = {"typ": "JWT", "kid": hospital.address}
    if alg is not None:
        header["alg"] = alg
    refused(service, form(forge(hospital, header=header)))


def test_missing_kid(service: TokenService, hospital: Wallet) -> None:
    refused(service, form(forge(hospital, header={"alg": "ES256K", "typ": "JWT"})))


def test_kid_of_another_account(service: TokenService, hospital: Wallet, stranger: Wallet) -> None:
    refused(service, form(forge(hospital, header={"alg": "ES256K", "kid": stranger.address})))


@pytest.mark.parametrize(
    "extra", [{"crit": ["exp"]}, {"typ": "JOSE+JSON"}, {"typ": 1}], ids=["crit", "typ", "typ_int"]
)
def test_unsupported_header_members(
    service: TokenService, hospital: Wallet, extra: dict[str, Any]
) -> None:
    header = {"alg": "ES256K", "typ": "JWT", "kid": hospital.address, **extra}
    refused(service, form(forge(hospital, header=header)))


# -- refusals: signature -----------------------------------------------------------------


def test_tampered_claims(service: TokenService, hospital: Wallet) -> None:
    header, _, sig = client_assertion(hospital, URL, now=NOW, jti="original").split(".")
    tampered = part(claims_for(hospital.address, jti="tampered"))
    error = refused(service, form(f"{header}.{tampered}.{sig}"))
    assert "signature" in error.message


def test_signed_by_another_wallet(
    service: TokenService, hospital: Wallet, stranger: Wallet
) -> None:
    header = {"alg": "ES256K", "typ": "JWT", "kid": hospital.address}
    refused(service, form(forge(stranger, header=header, claims=claims_for(hospital.address))))


def test_high_s_is_refused(service: TokenService, hospital: Wallet) -> None:
    signing_input, _, sig = client_assertion(hospital, URL, now=NOW).rpartition(".")
    raw = unb64(sig)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin = SECPK1_N - s
    # the malleable twin still recovers the signer with the other recovery id...
    digest = hashlib.sha256(signing_input.encode()).digest()
    recovered = {
        Signature(vrs=(v, r, twin)).recover_public_key_from_msg_hash(digest).to_checksum_address()
        for v in (0, 1)
    }
    assert hospital.address in recovered
    # ...but it is refused
    high = b64(r.to_bytes(32, "big") + twin.to_bytes(32, "big"))
    assert "high s" in refused(service, form(f"{signing_input}.{high}")).message


@pytest.mark.parametrize("rs", [(0, 1), (1, 0), (SECPK1_N, 1)], ids=["r0", "s0", "r_n"])
def test_out_of_range_signature(
    service: TokenService, hospital: Wallet, rs: tuple[int, int]
) -> None:
    signing_input, _, _ = client_assertion(hospital, URL, now=NOW).rpartition(".")
    sig = b64(rs[0].to_bytes(32, "big") + rs[1].to_bytes(32, "big"))
    refused(service, form(f"{signing_input}.{sig}"))


# -- refusals: claims --------------------------------------------------------------------


def test_expired(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW - 301)
    assert "expired" in refused(service, form(assertion)).message


def test_exp_too_far_ahead(service: TokenService, hospital: Wallet) -> None:
    claims = claims_for(hospital.address, exp=int(NOW) + 301)
    refused(service, form(forge(hospital, claims=claims)))
    no_iat = claims_for(hospital.address, iat=None, exp=int(NOW) + 301)
    refused(service, form(forge(hospital, claims=no_iat)))


def test_iat_in_the_future(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW + 61, lifetime=60)
    assert "future" in refused(service, form(assertion)).message


def test_nbf_in_the_future(service: TokenService, hospital: Wallet) -> None:
    claims = claims_for(hospital.address, nbf=int(NOW) + 120)
    refused(service, form(forge(hospital, claims=claims)))


@pytest.mark.parametrize(
    "exp",
    [None, "1800000300", True, float("nan"), 10**400],
    ids=["none", "str", "bool", "nan", "huge"],
)
def test_bad_exp(service: TokenService, hospital: Wallet, exp: Any) -> None:
    claims = claims_for(hospital.address)
    claims.pop("exp")
    if exp is not None:
        claims["exp"] = exp
    header = part({"alg": "ES256K", "kid": hospital.address})
    signing_input = f"{header}.{part(claims)}"
    refused(service, form(f"{signing_input}.{es256k(hospital, signing_input)}"))


@pytest.mark.parametrize(
    "aud", [URL + "/", "https://other.example/token", ["https://other.example"], None, 1]
)
def test_wrong_aud(service: TokenService, hospital: Wallet, aud: Any) -> None:
    claims = claims_for(hospital.address, aud=aud)
    refused(service, form(forge(hospital, claims=claims)))


def test_iss_differs_from_sub(service: TokenService, hospital: Wallet, stranger: Wallet) -> None:
    claims = claims_for(hospital.address, sub=stranger.address)
    refused(service, form(forge(hospital, claims=claims)))


@pytest.mark.parametrize("iss", ["hospital", None, 7, "0x" + "1" * 39])
def test_iss_not_an_address(service: TokenService, hospital: Wallet, iss: Any) -> None:
    claims = claims_for(hospital.address, iss=iss, sub=iss)
    refused(service, form(forge(hospital, claims=claims)))


def test_iss_with_a_bad_checksum(service: TokenService, hospital: Wallet) -> None:
    digits = hospital.address[2:]
    flipped = next(i for i, c in enumerate(digits) if c.isalpha())
    bad = "0x" + digits[:flipped] + digits[flipped].swapcase() + digits[flipped + 1 :]
    header = {"alg": "ES256K", "kid": bad}
    refused(service, form(forge(hospital, header=header, claims=claims_for(bad))))


def test_client_id_mismatch(service: TokenService, hospital: Wallet, stranger: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW)
    refused(service, form(assertion, client_id=stranger.address))
    refused(service, form(assertion, client_id="hospital"))


@pytest.mark.parametrize("jti", [None, "", 5, "x" * 257])
def test_bad_jti(service: TokenService, hospital: Wallet, jti: Any) -> None:
    claims = claims_for(hospital.address, jti=jti)
    if jti is None:
        claims.pop("jti", None)
    refused(service, form(forge(hospital, claims=claims)))


def test_replayed_jti(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW, jti="once")
    service.token(form(assertion))
    assert "replay" in refused(service, form(assertion)).message
    # the same jti in a fresh assertion is refused until the first one has expired
    again = client_assertion(hospital, URL, now=NOW + 10, jti="once")
    refused(service, form(again))
    later = client_assertion(hospital, URL, now=NOW + 300, jti="once")
    service.token(form(later), now=NOW + 301)


def test_a_refused_client_does_not_burn_its_jti(hospital: Wallet) -> None:
    allowed = {"ok": False}
    service = TokenService(URL, is_authorized=lambda a: allowed["ok"], clock=lambda: NOW)
    assertion = client_assertion(hospital, URL, now=NOW)
    refused(service, form(assertion), "unauthorized_client")
    allowed["ok"] = True
    service.token(form(assertion))


# -- refusals: authorization -------------------------------------------------------------


def test_unauthorized_account(service: TokenService, stranger: Wallet) -> None:
    refused(service, form(client_assertion(stranger, URL, now=NOW)), "unauthorized_client")


def test_not_an_allowed_client(hospital: Wallet, stranger: Wallet) -> None:
    calls: list[str] = []

    def authorized(address: str) -> bool:
        calls.append(address)
        return True

    service = TokenService(
        URL,
        is_authorized=authorized,
        allowed_clients=[hospital.address.lower()],
        clock=lambda: NOW,
    )
    service.token(form(client_assertion(hospital, URL, now=NOW)))
    refused(service, form(client_assertion(stranger, URL, now=NOW)), "unauthorized_client")
    assert calls == [hospital.address]  # the ledger is not asked about other clients


def test_authorization_errors_propagate(hospital: Wallet) -> None:
    def down(address: str) -> bool:
        raise RuntimeError("ledger unreachable")

    service = TokenService(URL, is_authorized=down, clock=lambda: NOW)
    with pytest.raises(RuntimeError):
        service.token(form(client_assertion(hospital, URL, now=NOW)))


# -- refusals: request -------------------------------------------------------------------


def test_bad_grant_type(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW)
    refused(service, form(assertion, grant_type="authorization_code"), "unsupported_grant_type")
    data = form(assertion)
    del data["grant_type"]
    refused(service, data, "invalid_request")


def test_bad_assertion_type(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW)
    bad = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
    refused(service, form(assertion, client_assertion_type=bad))
    for missing in ("client_assertion_type", "client_assertion"):
        data = form(assertion)
        del data[missing]
        refused(service, data, "invalid_request")


def test_client_secret_is_refused(service: TokenService, hospital: Wallet) -> None:
    assertion = client_assertion(hospital, URL, now=NOW)
    refused(service, form(assertion, client_secret="s3cret"), "invalid_request")


def _malformed(hospital: Wallet) -> dict[str, Callable[[str], str]]:
    def dup_header(a: str) -> str:
        _, claims, sig = a.split(".")
        raw = f'{{"alg":"ES256K","alg":"none","kid":"{hospital.address}"}}'
        return f"{b64(raw.encode())}.{claims}.{sig}"

    return {
        "two_parts": lambda a: a.rpartition(".")[0],
        "four_parts": lambda a: a + ".AAAA",
        "padding": lambda a: a + "=",
        "std_alphabet": lambda a: a.replace("-", "+").replace("_", "/") + "+/",
        "bad_length": lambda a: a + "AAA",
        "non_canonical_tail": lambda a: a[:-1] + ("B" if a[-1] == "A" else "A"),
        "short_sig": lambda a: a.rpartition(".")[0] + "." + b64(b"\x01" * 63),
        "long_sig": lambda a: a + "AAAA",
        "header_not_json": lambda a: b64(b"{not json") + a[a.index(".") :],
        "header_array": lambda a: b64(b'["ES256K"]') + a[a.index(".") :],
        "header_not_utf8": lambda a: b64(b"\xff\xfe") + a[a.index(".") :],
        "claims_not_json": lambda a: a.split(".")[0] + "." + b64(b"nope") + "." + b64(bytes(64)),
        "duplicate_members": dup_header,
        "too_large": lambda a: a + "A" * 9000,
        "empty": lambda a: "..",
    }


@pytest.mark.parametrize(
    "case",
    [
        "two_parts",
        "four_parts",
        "padding",
        "std_alphabet",
        "bad_length",
        "non_canonical_tail",
        "short_sig",
        "long_sig",
        "header_not_json",
        "header_array",
        "header_not_utf8",
        "claims_not_json",
        "duplicate_members",
        "too_large",
        "empty",
    ],
)
def test_malformed_assertion(service: TokenService, hospital: Wallet, case: str) -> None:
    assertion = _malformed(hospital)[case](client_assertion(hospital, URL, now=NOW))
    refused(service, form(assertion))


def test_error_shape(service: TokenService, hospital: Wallet) -> None:
    error = refused(service, form("x.y.z"))
    assert isinstance(error, AuthError)
    assert error.to_json() == {"error": "invalid_client", "error_description": error.message}
    assert error.error_description == error.message
    assert OAuthError("temporarily_unavailable", "later").status == 503
    assert OAuthError("invalid_grant", "no", status=418).status == 418


# -- scopes at the token endpoint ----------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [None, "", "openid fhirUser", "system/Foo.read", "system/Observation.rs?category=laboratory",
     "system/*.rs bogus", "system/Observation.sr"],
)  # fmt: skip
def test_invalid_scope(service: TokenService, hospital: Wallet, scope: str | None) -> None:
    refused(service, form(client_assertion(hospital, URL, now=NOW), scope), "invalid_scope")


def test_supported_types_parameter(hospital: Wallet) -> None:
    service = TokenService(
        URL, is_authorized=lambda a: True, supported_types=["Observation"], clock=lambda: NOW
    )
    assertion = client_assertion(hospital, URL, now=NOW)
    refused(service, form(assertion, "system/Patient.read"), "invalid_scope")
    answer = service.token(form(assertion, "system/*.read"))
    scopes = service.resolve(answer["access_token"]).scopes
    assert scopes.allows("Observation", "read") and not scopes.allows("Patient", "read")


# -- resolve -----------------------------------------------------------------------------


def test_unknown_token(service: TokenService) -> None:
    for token in ("", "nope", "é\udcff"):
        with pytest.raises(AuthError):
            service.resolve(token)


def test_expired_token(service: TokenService, hospital: Wallet) -> None:
    answer = service.token(form(client_assertion(hospital, URL, now=NOW)))
    token = answer["access_token"]
    assert service.resolve(token, now=NOW + 299).client == hospital.address
    with pytest.raises(AuthError):
        service.resolve(token, now=NOW + 300)
    with pytest.raises(AuthError):  # pruned, stays gone
        service.resolve(token, now=NOW)


def test_revoke(service: TokenService, hospital: Wallet) -> None:
    token = service.token(form(client_assertion(hospital, URL, now=NOW)))["access_token"]
    service.revoke(token)
    service.revoke(token)
    with pytest.raises(AuthError):
        service.resolve(token)


def test_tokens_are_kept_hashed(service: TokenService, hospital: Wallet) -> None:
    token = service.token(form(client_assertion(hospital, URL, now=NOW)))["access_token"]
    assert token not in repr(vars(service))
    assert token.encode() not in repr(vars(service)).encode()


@pytest.mark.parametrize(
    "kwargs",
    [{"token_lifetime": 0}, {"token_lifetime": 3601}, {"token_lifetime": True},
     {"allowed_clients": "0x" + "1" * 40}, {"allowed_clients": ["hospital"]},
     {"allowed_clients": [None]}],
)  # fmt: skip
def test_constructor_checks(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        TokenService(URL, is_authorized=lambda a: True, **kwargs)
    with pytest.raises(InvalidInputError):
        TokenService("", is_authorized=lambda a: True)


# -- scopes ------------------------------------------------------------------------------

ALL = {"read", "search", "create", "update", "delete"}


@pytest.mark.parametrize(
    ("text", "context", "type_", "actions"),
    [
        ("patient/Observation.read", "patient", "Observation", {"read", "search"}),
        ("user/*.write", "user", "*", {"create", "update", "delete"}),
        ("system/Patient.read", "system", "Patient", {"read", "search"}),
        ("system/*.*", "system", "*", ALL),
        ("patient/Observation.rs", "patient", "Observation", {"read", "search"}),
        ("system/*.cruds", "system", "*", ALL),
        ("system/Condition.c", "system", "Condition", {"create"}),
        ("user/Encounter.ud", "user", "Encounter", {"update", "delete"}),
        ("system/ImagingStudy.r", "system", "ImagingStudy", {"read"}),
        ("system/Consent.s", "system", "Consent", {"search"}),
        ("system/AllergyIntolerance.cr", "system", "AllergyIntolerance", {"create", "read"}),
    ],
)
def test_scope_parsing(text: str, context: str, type_: str, actions: set[str]) -> None:
    scope = Scope.parse(text)
    assert (scope.context, scope.resource_type, set(scope.actions), scope.text) == (
        context,
        type_,
        actions,
        text,
    )


@pytest.mark.parametrize(
    "text",
    [
        "*.*",
        "Observation.read",
        "system/Observation",
        "system/Observation.",
        "system/Observation.sr",  # v2 letters must be in c r u d s order
        "system/Observation.rr",
        "system/Observation.x",
        "system/Observation.readwrite",
        "system/observation.read",  # types are case-sensitive
        "system/Medication.read",  # not a supported type
        "system/Observation.rs?category=laboratory",
        "practitioner/*.read",
        "system/*.read ",
        "system//Observation.read",
    ],
)
def test_invalid_scopes(text: str) -> None:
    with pytest.raises(InvalidInputError):
        Scope.parse(text)


def test_scopes_string() -> None:
    scopes = Scopes.parse(
        "openid fhirUser launch launch/patient offline_access online_access profile "
        "system/Observation.rs  user/*.read system/Observation.rs"
    )
    assert str(scopes) == "system/Observation.rs user/*.read"
    assert len(scopes) == 2 and [s.text for s in scopes] == str(scopes).split()
    assert scopes.contexts == {"system", "user"}
    assert not Scopes.parse("openid launch/encounter")
    with pytest.raises(InvalidInputError):
        Scopes.parse("system/*.rs " * 1000)
    with pytest.raises(InvalidInputError):
        Scopes.parse("system/*.rs unknown_thing")


ALLOWS = [
    # scope                    type            read   search create update delete
    ("system/Observation.read", "Observation", (True, True, False, False, False)),
    ("system/Observation.read", "Patient", (False, False, False, False, False)),
    ("system/Observation.write", "Observation", (False, False, True, True, True)),
    ("system/*.read", "Consent", (True, True, False, False, False)),
    ("system/*.*", "ImagingStudy", (True, True, True, True, True)),
    ("system/*.*", "Medication", (False, False, False, False, False)),  # unsupported type
    ("patient/Observation.rs", "Observation", (True, True, False, False, False)),
    ("system/Observation.r", "Observation", (True, False, False, False, False)),
    ("system/Observation.s", "Observation", (False, True, False, False, False)),
    ("user/Condition.cu", "Condition", (False, False, True, True, False)),
    ("system/*.d", "Procedure", (False, False, False, False, True)),
    ("system/*.cruds", "Patient", (True, True, True, True, True)),
    ("system/Patient.r system/*.s", "Patient", (True, True, False, False, False)),
    ("system/Patient.r system/*.s", "Encounter", (False, True, False, False, False)),
    ("openid", "Patient", (False, False, False, False, False)),
]


@pytest.mark.parametrize(("text", "type_", "expected"), ALLOWS)
def test_allows_matrix(text: str, type_: str, expected: tuple[bool, ...]) -> None:
    scopes = Scopes.parse(text)
    actions = ("read", "search", "create", "update", "delete")
    assert tuple(scopes.allows(type_, a) for a in actions) == expected


def test_allows_rejects_unknown_actions() -> None:
    with pytest.raises(InvalidInputError):
        Scopes.parse("system/*.*").allows("Patient", "patch")


def test_supported_types_default() -> None:
    assert len(SUPPORTED_TYPES) == 12 and "Consent" in SUPPORTED_TYPES
    assert Scopes.parse("system/Foo.read", supported_types=["Foo"]).allows("Foo", "read")


# -- discovery ---------------------------------------------------------------------------


def test_smart_configuration() -> None:
    config = smart_configuration(URL)
    assert config["token_endpoint"] == URL
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["ES256K"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert {"permission-v1", "permission-v2"} <= set(config["capabilities"])
    assert "system/*.rs" in config["scopes_supported"]
    for scope in config["scopes_supported"]:
        Scope.parse(scope)
    json.dumps(config)


def test_capability_statement_parts() -> None:
    assert oauth_uris_extension(URL) == {
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
        "extension": [{"url": "token", "valueUri": URL}],
    }
    coding = security_service()["coding"][0]
    assert coding == {
        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
        "code": "SMART-on-FHIR",
    }


def test_expired_entries_are_pruned(hospital: Wallet) -> None:
    service = TokenService(URL, is_authorized=lambda a: True, clock=lambda: NOW)
    for i in range(3):
        service.token(form(client_assertion(hospital, URL, now=NOW, jti=f"j{i}")))
    assert len(service._tokens) == 3 and len(service._seen) == 3
    later = NOW + 600
    service.token(form(client_assertion(hospital, URL, now=later)), now=later)
    assert len(service._tokens) == 1 and len(service._seen) == 1


def test_full_caches_fail_closed(hospital: Wallet) -> None:
    service = TokenService(URL, is_authorized=lambda a: True, clock=lambda: NOW, max_entries=2)
    for i in range(2):
        service.token(form(client_assertion(hospital, URL, now=NOW, jti=f"j{i}")))
    assertion = client_assertion(hospital, URL, now=NOW, jti="third")
    with pytest.raises(OAuthError) as info:
        service.token(form(assertion))
    assert info.value.error == "temporarily_unavailable" and info.value.status == 503
    assert (hospital.address, "third") not in service._seen  # the refused one is not burnt
    later = client_assertion(hospital, URL, now=NOW + 300)
    service.token(form(later), now=NOW + 300)  # room again once the others have expired
