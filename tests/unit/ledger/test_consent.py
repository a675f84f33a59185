"""Tests for contracts/Consent.vy: grants at each scope, purposes, expiry, break-glass, audit log."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from tests.unit.ledger.world import (
    ALL,
    BREAK_GLASS,
    BREAK_GLASS_SECONDS,
    IMAGING,
    OBSERVATION,
    ZERO32,
    ZERO_ADDRESS,
    Purpose,
    Role,
    World,
    deployer,
    kind_scope,
    record_id,
)

T, P, R, E = Purpose.TREATMENT, Purpose.PAYMENT, Purpose.RESEARCH, Purpose.EMERGENCY
REASON = keccak(b"patient unconscious, ER admission #4411")


@pytest.fixture
def records(world: World) -> tuple[bytes, bytes, bytes]:
    """Three records of the patient: two observations and one imaging study."""
    return (
        world.anchor(world.patient, b"obs-1", OBSERVATION),
        world.anchor(world.patient, b"obs-2", OBSERVATION),
        world.anchor(world.patient, b"img-1", IMAGING),
    )


def _access(world: World, grantee: str, rids: tuple[bytes, ...], purpose: int) -> list[bool]:
    return [world.consent.has_access(grantee, rid, purpose) for rid in rids]


# --- deployment and constants -------------------------------------------------------------


def test_constructor_wiring_and_constants(world: World) -> None:
    assert world.consent.registry() == world.registry.address
    assert world.consent.records() == world.records.address
    assert world.consent.break_glass_seconds() == BREAK_GLASS_SECONDS
    assert world.consent.ALL() == ZERO32
    assert world.consent.BREAK_GLASS() == BREAK_GLASS


def test_constructor_refuses_zero_break_glass_time(world: World) -> None:
    with boa.reverts("consent: break-glass time must be positive"):
        deployer("Consent").deploy(world.registry.address, world.records.address, 0)


@pytest.mark.parametrize("tag", [OBSERVATION, b"\x00\x00\x00\x01", b"\xff\xff\xff\xff"])
def test_kind_scope_right_aligns_the_tag(world: World, tag: bytes) -> None:
    assert world.consent.kind_scope(tag) == bytes(28) + tag == kind_scope(tag)


# --- grant at each scope ------------------------------------------------------------------


def test_grant_logs_and_stores(world: World, records: tuple[bytes, ...]) -> None:
    capsule = keccak(b"capsule block")
    expiry = boa.env.timestamp + 3600
    with boa.env.prank(world.patient):
        world.consent.grant(world.provider, records[0], T | R, expiry, capsule)
    (event,) = world.consent.get_logs()
    assert type(event).__name__ == "Granted"
    assert (event.patient, event.grantee, event.scope) == (
        world.patient,
        world.provider,
        records[0],
    )
    assert (event.purposes, event.expiry, event.capsule) == (T | R, expiry, capsule)
    assert world.consent.grant_of(world.patient, world.provider, records[0]) == (T | R, expiry)
    # nothing stored under the other scopes or for the other direction
    assert world.consent.grant_of(world.patient, world.provider, ALL) == (0, 0)
    assert world.consent.grant_of(world.provider, world.patient, records[0]) == (0, 0)


def test_record_scope_covers_that_record_only(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, records[0], T)
    assert _access(world, world.provider, records, T) == [True, False, False]
    assert world.consent.has_kind_access(world.patient, world.provider, OBSERVATION, T) is False


def test_kind_scope_covers_every_record_of_that_kind(
    world: World, records: tuple[bytes, ...]
) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), T)
    assert _access(world, world.provider, records, T) == [True, True, False]
    later = world.anchor(world.patient, b"obs-3", OBSERVATION)  # anchored after the grant
    assert world.consent.has_access(world.provider, later, T) is True
    assert world.consent.has_kind_access(world.patient, world.provider, OBSERVATION, T) is True
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, T) is False


def test_all_scope_covers_every_record(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, ALL, T)
    assert _access(world, world.provider, records, T) == [True, True, True]
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, T) is True
    # but only the granting patient's records
    theirs = world.anchor(world.other_patient, b"theirs", OBSERVATION)
    assert world.consent.has_access(world.provider, theirs, T) is False


def test_scopes_add_up(world: World, records: tuple[bytes, ...]) -> None:
    """Access is the union of the record, kind and ALL grants, each with its own purposes."""
    world.grant(world.patient, world.provider, records[2], R)
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), T)
    world.grant(world.patient, world.provider, ALL, P)
    assert _access(world, world.provider, records, T) == [True, True, False]
    assert _access(world, world.provider, records, R) == [False, False, True]
    assert _access(world, world.provider, records, P) == [True, True, True]
    # a request is judged against one grant at a time: T|P is in none of them
    assert _access(world, world.provider, records, T | P) == [False, False, False]


def test_a_record_scope_grant_for_another_patients_record_gives_nothing(world: World) -> None:
    theirs = world.anchor(world.other_patient, b"theirs", OBSERVATION)
    world.grant(world.patient, world.provider, theirs, T)
    assert world.consent.has_access(world.provider, theirs, T) is False


def test_grants_are_per_grantee(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, ALL, T)
    assert _access(world, world.researcher, records, T) == [False, False, False]


# --- purposes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "allowed"),
    [
        (T, True),
        (R, True),
        (T | R, True),
        (P, False),
        (T | P, False),
        (T | R | P, False),
        (E, False),
        (Purpose.CONTRIBUTE, False),
        (0, False),
    ],
)
def test_every_requested_purpose_must_be_granted(
    world: World, records: tuple[bytes, ...], wanted: int, allowed: bool
) -> None:
    world.grant(world.patient, world.provider, ALL, T | R)
    assert world.consent.has_access(world.provider, records[0], wanted) is allowed
    assert (
        world.consent.has_kind_access(world.patient, world.provider, OBSERVATION, wanted) is allowed
    )


def test_the_owner_has_access_for_any_purpose(world: World, records: tuple[bytes, ...]) -> None:
    for purpose in (0, T, E, 0x7F):
        assert world.consent.has_access(world.patient, records[0], purpose) is True
        assert world.consent.has_kind_access(world.patient, world.patient, IMAGING, purpose) is True


def test_unknown_record_gives_no_access(world: World) -> None:
    world.grant(world.patient, world.provider, ALL, T)
    assert world.consent.has_access(world.provider, record_id(world.patient, b"nope"), T) is False
    assert world.consent.has_access(world.patient, record_id(world.patient, b"nope"), T) is False


# --- expiry -------------------------------------------------------------------------------


def test_grant_is_live_until_one_second_before_expiry(
    world: World, records: tuple[bytes, ...]
) -> None:
    expiry = world.grant(world.patient, world.provider, records[0], T, seconds=100)
    boa.env.time_travel(seconds=99)
    assert boa.env.timestamp == expiry - 1
    assert world.consent.has_access(world.provider, records[0], T) is True
    boa.env.time_travel(seconds=1)
    assert boa.env.timestamp == expiry
    assert world.consent.has_access(world.provider, records[0], T) is False
    # the expired grant is still stored
    assert world.consent.grant_of(world.patient, world.provider, records[0]) == (T, expiry)


def test_kind_grant_expiry_boundary(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(IMAGING), T, seconds=1)
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, T) is True
    boa.env.time_travel(seconds=1)
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, T) is False


def test_grant_expiry_must_be_in_the_future_and_fit_64_bits(world: World) -> None:
    now = boa.env.timestamp
    for expiry in (0, now - 1, now, 2**64, 2**256 - 1):
        with boa.env.prank(world.patient), boa.reverts("consent: expiry must be in the future"):
            world.consent.grant(world.provider, ALL, T, expiry, ZERO32)
    with boa.env.prank(world.patient):
        world.consent.grant(world.provider, ALL, T, now + 1, ZERO32)
        world.consent.grant(world.researcher, ALL, T, 2**64 - 1, ZERO32)
    assert world.consent.grant_of(world.patient, world.provider, ALL) == (T, now + 1)
    assert world.consent.grant_of(world.patient, world.researcher, ALL) == (T, 2**64 - 1)


# --- grant revert paths -------------------------------------------------------------------


def test_grant_refuses_self_and_zero_grantee(world: World) -> None:
    expiry = boa.env.timestamp + 60
    for grantee in (world.patient, ZERO_ADDRESS):
        with boa.env.prank(world.patient), boa.reverts("consent: bad grantee"):
            world.consent.grant(grantee, ALL, T, expiry, ZERO32)


def test_grant_refuses_empty_purposes(world: World) -> None:
    with boa.env.prank(world.patient), boa.reverts("consent: no purpose"):
        world.consent.grant(world.provider, ALL, 0, boa.env.timestamp + 60, ZERO32)


def test_grant_refuses_the_break_glass_scope(world: World) -> None:
    with boa.env.prank(world.patient), boa.reverts("consent: reserved scope"):
        world.consent.grant(world.provider, BREAK_GLASS, E, boa.env.timestamp + 60, ZERO32)
    assert world.consent.grant_of(world.patient, world.provider, BREAK_GLASS) == (0, 0)


# --- revoke and re-grant ------------------------------------------------------------------


def test_revoke_ends_access_at_once(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), T)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, kind_scope(OBSERVATION))
    (event,) = world.consent.get_logs()
    assert type(event).__name__ == "Revoked"
    assert (event.patient, event.grantee, event.scope) == (
        world.patient,
        world.provider,
        kind_scope(OBSERVATION),
    )
    assert world.consent.grant_of(world.patient, world.provider, kind_scope(OBSERVATION)) == (0, 0)
    assert _access(world, world.provider, records, T) == [False, False, False]


def test_revoke_needs_an_existing_grant_of_the_caller(world: World) -> None:
    with boa.env.prank(world.patient), boa.reverts("consent: no such grant"):
        world.consent.revoke(world.provider, ALL)
    world.grant(world.patient, world.provider, ALL, T)
    # another patient cannot revoke it: the key includes the caller
    with boa.env.prank(world.other_patient), boa.reverts("consent: no such grant"):
        world.consent.revoke(world.provider, ALL)
    # the grantee cannot either
    with boa.env.prank(world.provider), boa.reverts("consent: no such grant"):
        world.consent.revoke(world.patient, ALL)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, ALL)
    with boa.env.prank(world.patient), boa.reverts("consent: no such grant"):
        world.consent.revoke(world.provider, ALL)


def test_revoke_an_expired_grant(world: World) -> None:
    world.grant(world.patient, world.provider, ALL, T, seconds=10)
    boa.env.time_travel(seconds=3600)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, ALL)
    assert world.consent.grant_of(world.patient, world.provider, ALL) == (0, 0)


def test_regrant_replaces_purposes_and_expiry(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, ALL, T | R, seconds=10_000)
    expiry = world.grant(world.patient, world.provider, ALL, P, seconds=100)
    assert world.consent.grant_of(world.patient, world.provider, ALL) == (P, expiry)
    assert world.consent.has_access(world.provider, records[0], T) is False
    assert world.consent.has_access(world.provider, records[0], P) is True
    boa.env.time_travel(seconds=100)  # the shorter expiry wins, not the longer one
    assert world.consent.has_access(world.provider, records[0], P) is False


def test_regrant_after_revoke(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, records[1], T)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, records[1])
    world.grant(world.patient, world.provider, records[1], R)
    assert world.consent.has_access(world.provider, records[1], R) is True
    assert world.consent.has_access(world.provider, records[1], T) is False


# --- registration and erasure -------------------------------------------------------------


def test_unregistered_grantee_has_no_access_until_it_registers(
    world: World, records: tuple[bytes, ...]
) -> None:
    world.grant(world.patient, world.stranger, ALL, T)
    assert _access(world, world.stranger, records, T) == [False, False, False]
    assert world.consent.has_kind_access(world.patient, world.stranger, OBSERVATION, T) is False
    world.registry.admit(world.stranger, Role.INSURER)
    assert _access(world, world.stranger, records, T) == [True, True, True]


def test_expelled_grantee_loses_access_and_readmitted_regains_it(
    world: World, records: tuple[bytes, ...]
) -> None:
    world.grant(world.patient, world.provider, records[0], T)
    world.grant(world.patient, world.provider, kind_scope(IMAGING), T)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert _access(world, world.provider, records, T) == [False, False, False]
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, T) is False
    world.registry.admit(world.provider, Role.PROVIDER)
    assert _access(world, world.provider, records, T) == [True, False, True]


def test_expelling_one_of_several_roles_keeps_access(
    world: World, records: tuple[bytes, ...]
) -> None:
    """Grants need the grantee to be registered (any role), not to hold a particular role."""
    world.registry.admit(world.provider, Role.RESEARCHER)
    world.grant(world.patient, world.provider, ALL, T)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert _access(world, world.provider, records, T) == [True, True, True]


def test_erased_record_loses_access_other_records_keep_it(
    world: World, records: tuple[bytes, ...]
) -> None:
    world.grant(world.patient, world.provider, ALL, T)
    world.grant(world.patient, world.provider, records[0], T)
    with boa.env.prank(world.patient):
        world.records.erase(records[0])
    assert _access(world, world.provider, records, T) == [False, True, True]


def test_superseded_record_stays_accessible(world: World, records: tuple[bytes, ...]) -> None:
    """Superseding is versioning, not revocation: a grant on the old version still works."""
    world.grant(world.patient, world.provider, records[0], T)
    new = world.anchor(world.patient, b"obs-1-v2", OBSERVATION, supersedes=records[0])
    assert world.consent.has_access(world.provider, records[0], T) is True
    assert world.consent.has_access(world.provider, new, T) is False


# --- break-glass --------------------------------------------------------------------------


def test_break_glass_gives_emergency_access_to_every_record(
    world: World, records: tuple[bytes, ...]
) -> None:
    with boa.env.prank(world.provider):
        expiry = world.consent.break_glass(world.patient, REASON)
    (event,) = world.consent.get_logs()

    assert expiry == boa.env.timestamp + BREAK_GLASS_SECONDS
    assert type(event).__name__ == "BreakGlass"
    assert (event.patient, event.provider, event.reason, event.expiry) == (
        world.patient,
        world.provider,
        REASON,
        expiry,
    )
    assert world.consent.grant_of(world.patient, world.provider, BREAK_GLASS) == (E, expiry)
    assert _access(world, world.provider, records, E) == [True, True, True]
    assert world.consent.has_kind_access(world.patient, world.provider, IMAGING, E) is True
    theirs = world.anchor(world.other_patient, b"theirs", OBSERVATION)
    assert world.consent.has_access(world.provider, theirs, E) is False


@pytest.mark.parametrize("purpose", [T, R, T | E, Purpose.CONTRIBUTE, 0])
def test_break_glass_is_for_the_emergency_purpose_only(
    world: World, records: tuple[bytes, ...], purpose: int
) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    assert _access(world, world.provider, records, purpose) == [False, False, False]


def test_break_glass_expires(world: World, records: tuple[bytes, ...]) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    boa.env.time_travel(seconds=BREAK_GLASS_SECONDS - 1)
    assert world.consent.has_access(world.provider, records[0], E) is True
    boa.env.time_travel(seconds=1)
    assert world.consent.has_access(world.provider, records[0], E) is False


def test_break_glass_again_extends_it(world: World, records: tuple[bytes, ...]) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    boa.env.time_travel(seconds=BREAK_GLASS_SECONDS - 10)
    with boa.env.prank(world.provider):
        expiry = world.consent.break_glass(world.patient, keccak(b"still in ER"))
    assert expiry == boa.env.timestamp + BREAK_GLASS_SECONDS
    boa.env.time_travel(seconds=10)
    assert world.consent.has_access(world.provider, records[0], E) is True


def test_patient_can_revoke_break_glass(world: World, records: tuple[bytes, ...]) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, BREAK_GLASS)
    (event,) = world.consent.get_logs()
    assert (event.patient, event.grantee, event.scope) == (
        world.patient,
        world.provider,
        BREAK_GLASS,
    )
    assert _access(world, world.provider, records, E) == [False, False, False]
    assert world.consent.grant_of(world.patient, world.provider, BREAK_GLASS) == (0, 0)


def test_provider_can_break_the_glass_again_after_the_patient_revoked(
    world: World, records: tuple[bytes, ...]
) -> None:
    """The patient's revoke of a break-glass is not sticky: nothing stops a second break_glass
    (each one is logged with its reason, which is the only check)."""
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, BREAK_GLASS)
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    assert world.consent.has_access(world.provider, records[0], E) is True


def test_break_glass_combines_with_grants(world: World, records: tuple[bytes, ...]) -> None:
    world.grant(world.patient, world.provider, records[0], T)
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    assert world.consent.has_access(world.provider, records[0], T) is True
    assert world.consent.has_access(world.provider, records[1], T) is False
    assert _access(world, world.provider, records, E) == [True, True, True]


@pytest.mark.parametrize(
    "who", ["patient", "other_patient", "researcher", "gateway", "stranger", "governance"]
)
def test_only_providers_break_the_glass(world: World, records: tuple[bytes, ...], who: str) -> None:
    with (
        boa.env.prank(getattr(world, who)),
        boa.reverts("consent: only providers may break the glass"),
    ):
        world.consent.break_glass(world.patient, REASON)


def test_expelled_provider_cannot_break_the_glass(world: World) -> None:
    world.registry.expel(world.provider, Role.PROVIDER)
    with boa.env.prank(world.provider), boa.reverts("consent: only providers may break the glass"):
        world.consent.break_glass(world.patient, REASON)


def test_break_glass_needs_a_patient_and_a_reason(world: World) -> None:
    for patient in (ZERO_ADDRESS, world.provider):
        with boa.env.prank(world.provider), boa.reverts("consent: bad patient"):
            world.consent.break_glass(patient, REASON)
    with boa.env.prank(world.provider), boa.reverts("consent: a reason is required"):
        world.consent.break_glass(world.patient, ZERO32)
    assert world.consent.grant_of(world.patient, world.provider, BREAK_GLASS) == (0, 0)


def test_fully_expelled_provider_loses_break_glass_access(
    world: World, records: tuple[bytes, ...]
) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert _access(world, world.provider, records, E) == [False, False, False]


def test_provider_role_removal_ends_break_glass_access(
    world: World, records: tuple[bytes, ...]
) -> None:
    world.registry.admit(world.provider, Role.RESEARCHER)
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, REASON)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert world.registry.has_role(world.provider, Role.PROVIDER) is False
    assert _access(world, world.provider, records, E) == [False, False, False]


# --- audit log ----------------------------------------------------------------------------


def test_log_access_emits_one_event_per_entry(world: World, records: tuple[bytes, ...]) -> None:
    entries = [
        (world.patient, world.provider, records[0], T, 1_700_000_000),
        (world.patient, world.researcher, records[2], R | P, 1_700_000_001),
        (world.other_patient, world.provider, record_id(world.other_patient, b"x"), E, 2**64 - 1),
    ]
    with boa.env.prank(world.gateway):
        world.consent.log_access(entries)
    logs = world.consent.get_logs()
    assert [type(e).__name__ for e in logs] == ["AccessLogged"] * 3
    got = [(e.patient, e.accessor, e.record, e.purpose, e.at, e.gateway) for e in logs]
    assert got == [(*entry, world.gateway) for entry in entries]


def test_log_access_with_no_entries_logs_nothing(world: World) -> None:
    with boa.env.prank(world.gateway):
        world.consent.log_access([])
    assert world.consent.get_logs() == []


@pytest.mark.parametrize("who", ["patient", "provider", "researcher", "stranger", "governance"])
def test_only_gateways_log_access(world: World, records: tuple[bytes, ...], who: str) -> None:
    entry = (world.patient, world.provider, records[0], T, 1)
    with boa.env.prank(getattr(world, who)), boa.reverts("consent: only gateways may log access"):
        world.consent.log_access([entry])


def test_expelled_gateway_cannot_log_access(world: World) -> None:
    world.registry.expel(world.gateway, Role.GATEWAY)
    with boa.env.prank(world.gateway), boa.reverts("consent: only gateways may log access"):
        world.consent.log_access([])
