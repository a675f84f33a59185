"""Tests for contracts/Registry.vy: roles, encryption keys, metadata and governance."""

from __future__ import annotations

import boa
import pytest
from eth_utils import keccak

from tests.unit.ledger.world import (
    ALL,
    ZERO32,
    ZERO_ADDRESS,
    Purpose,
    Role,
    World,
    deployer,
    enc_key,
)

GOVERNANCE_ROLE = keccak(b"GOVERNANCE")
MISSING_ROLE = "access_control: account is missing role"


# --- deployment ---------------------------------------------------------------------------


def test_deployer_is_first_governance_participant() -> None:
    gov = boa.env.eoa
    registry = deployer("Registry").deploy(enc_key("gov"), "https://gov.example")
    logs = registry.get_logs()

    assert registry.roles(gov) == Role.GOVERNANCE
    assert registry.encryption_key(gov) == enc_key("gov")
    assert registry.metadata_uri(gov) == "https://gov.example"
    assert registry.is_registered(gov) is True
    assert registry.GOVERNANCE_ROLE() == GOVERNANCE_ROLE
    assert registry.hasRole(GOVERNANCE_ROLE, gov) is True
    assert registry.hasRole(registry.DEFAULT_ADMIN_ROLE(), gov) is True
    assert registry.DEFAULT_ADMIN_ROLE() == ZERO32
    assert registry.getRoleAdmin(GOVERNANCE_ROLE) == ZERO32

    registered = [e for e in logs if type(e).__name__ == "Registered"]
    assert len(registered) == 1
    assert registered[0].account == gov
    assert registered[0].roles == Role.GOVERNANCE
    assert registered[0].encryption_key == enc_key("gov")
    assert registered[0].metadata_uri == "https://gov.example"
    granted = [(e.role, e.account) for e in logs if type(e).__name__ == "RoleGranted"]
    assert granted == [(ZERO32, gov), (GOVERNANCE_ROLE, gov)]


def test_supports_erc165_and_access_control_interfaces(world: World) -> None:
    assert world.registry.supportsInterface(bytes.fromhex("01ffc9a7")) is True
    assert world.registry.supportsInterface(bytes.fromhex("7965db0b")) is True
    assert world.registry.supportsInterface(bytes.fromhex("ffffffff")) is False


# --- register -----------------------------------------------------------------------------


def test_register_makes_a_new_address_a_patient(world: World) -> None:
    account = boa.env.generate_address()
    assert world.registry.is_registered(account) is False
    with boa.env.prank(account):
        world.registry.register(enc_key("new"), "ipfs://profile")
    logs = world.registry.get_logs()

    assert world.registry.roles(account) == Role.PATIENT
    assert world.registry.is_registered(account) is True
    assert world.registry.encryption_key(account) == enc_key("new")
    assert world.registry.metadata_uri(account) == "ipfs://profile"
    assert len(logs) == 1
    (event,) = logs
    assert type(event).__name__ == "Registered"
    assert (event.account, event.roles, event.encryption_key, event.metadata_uri) == (
        account,
        Role.PATIENT,
        enc_key("new"),
        "ipfs://profile",
    )


def test_register_again_replaces_key_and_uri_and_keeps_roles(world: World) -> None:
    with boa.env.prank(world.patient):
        world.registry.register(enc_key("patient-2"), "")
    (event,) = world.registry.get_logs()
    assert event.roles == Role.PATIENT
    assert world.registry.roles(world.patient) == Role.PATIENT
    assert world.registry.encryption_key(world.patient) == enc_key("patient-2")
    assert world.registry.metadata_uri(world.patient) == ""


def test_register_keeps_admitted_roles_without_adding_patient(world: World) -> None:
    """An institution admitted first and registering its key afterwards is not made a patient."""
    assert world.registry.roles(world.provider) == Role.PROVIDER
    with boa.env.prank(world.provider):
        world.registry.register(enc_key("provider-2"), "https://provider.example/v2")
    (event,) = world.registry.get_logs()
    assert event.roles == Role.PROVIDER
    assert world.registry.roles(world.provider) == Role.PROVIDER


def test_register_accepts_a_uri_of_maximum_length(world: World) -> None:
    uri = "u" * 256
    with boa.env.prank(world.stranger):
        world.registry.register(enc_key("s"), uri)
    assert world.registry.metadata_uri(world.stranger) == uri


def test_register_refuses_an_empty_key(world: World) -> None:
    with boa.env.prank(world.stranger), boa.reverts("registry: empty encryption key"):
        world.registry.register(ZERO32, "x")
    assert world.registry.is_registered(world.stranger) is False


# --- admit --------------------------------------------------------------------------------


def test_admit_adds_roles_and_logs_the_union(world: World) -> None:
    world.registry.admit(world.provider, Role.RESEARCHER | Role.INSURER)
    (event,) = world.registry.get_logs()

    expected = Role.PROVIDER | Role.RESEARCHER | Role.INSURER
    assert world.registry.roles(world.provider) == expected
    assert type(event).__name__ == "RolesChanged"
    assert (event.account, event.by, event.roles) == (world.provider, world.governance, expected)
    # not a governance holder just because roles changed
    assert world.registry.hasRole(GOVERNANCE_ROLE, world.provider) is False


def test_admit_an_address_that_never_registered(world: World) -> None:
    """Admission does not need a key: the account is registered (has a role) with key 0."""
    world.registry.admit(world.stranger, Role.STORAGE_NODE)
    assert world.registry.roles(world.stranger) == Role.STORAGE_NODE
    assert world.registry.is_registered(world.stranger) is True
    assert world.registry.encryption_key(world.stranger) == ZERO32


def test_admit_governance_grants_the_access_control_role(world: World) -> None:
    world.registry.admit(world.provider, Role.GOVERNANCE)
    assert world.registry.hasRole(GOVERNANCE_ROLE, world.provider) is True
    # the new governor can now admit others
    with boa.env.prank(world.provider):
        world.registry.admit(world.stranger, Role.INSPECTOR)
    (event,) = world.registry.get_logs()
    assert (event.account, event.by, event.roles) == (
        world.stranger,
        world.provider,
        Role.INSPECTOR,
    )


@pytest.mark.parametrize("who", ["patient", "provider", "gateway", "stranger"])
def test_admit_needs_governance(world: World, who: str) -> None:
    with boa.env.prank(getattr(world, who)), boa.reverts(MISSING_ROLE):
        world.registry.admit(world.stranger, Role.PROVIDER)
    assert world.registry.roles(world.stranger) == 0


def test_admit_refuses_zero_address_and_empty_roles(world: World) -> None:
    with boa.reverts("registry: zero address"):
        world.registry.admit(ZERO_ADDRESS, Role.PROVIDER)
    with boa.reverts("registry: no roles"):
        world.registry.admit(world.stranger, 0)


# --- expel --------------------------------------------------------------------------------


def test_expel_removes_roles_and_logs_what_is_left(world: World) -> None:
    world.registry.admit(world.provider, Role.RESEARCHER)
    world.registry.expel(world.provider, Role.PROVIDER)
    (event,) = world.registry.get_logs()
    assert type(event).__name__ == "RolesChanged"
    assert (event.account, event.by, event.roles) == (
        world.provider,
        world.governance,
        Role.RESEARCHER,
    )
    assert world.registry.roles(world.provider) == Role.RESEARCHER
    assert world.registry.is_registered(world.provider) is True


def test_expel_every_role_unregisters(world: World) -> None:
    world.registry.expel(world.provider, Role.PROVIDER)
    assert world.registry.roles(world.provider) == 0
    assert world.registry.is_registered(world.provider) is False
    # key and URI stay published; only the roles are gone
    assert world.registry.encryption_key(world.provider) == enc_key("provider")


def test_expel_a_role_not_held_changes_nothing(world: World) -> None:
    world.registry.expel(world.patient, Role.INSURER)
    (event,) = world.registry.get_logs()
    assert event.roles == Role.PATIENT
    assert world.registry.roles(world.patient) == Role.PATIENT


def test_expel_governance_revokes_the_access_control_role(world: World) -> None:
    world.registry.admit(world.provider, Role.GOVERNANCE)
    world.registry.expel(world.provider, Role.GOVERNANCE)
    assert world.registry.hasRole(GOVERNANCE_ROLE, world.provider) is False
    assert world.registry.roles(world.provider) == Role.PROVIDER
    with boa.env.prank(world.provider), boa.reverts(MISSING_ROLE):
        world.registry.expel(world.patient, Role.PATIENT)


def test_a_second_governor_can_expel_the_first(world: World) -> None:
    world.registry.admit(world.provider, Role.GOVERNANCE)
    with boa.env.prank(world.provider):
        world.registry.expel(world.governance, Role.GOVERNANCE)
    assert world.registry.hasRole(GOVERNANCE_ROLE, world.governance) is False
    assert world.registry.is_registered(world.governance) is False
    with boa.reverts(MISSING_ROLE):
        world.registry.admit(world.stranger, Role.PROVIDER)


@pytest.mark.parametrize("who", ["patient", "provider", "gateway", "stranger"])
def test_expel_needs_governance(world: World, who: str) -> None:
    with boa.env.prank(getattr(world, who)), boa.reverts(MISSING_ROLE):
        world.registry.expel(world.provider, Role.PROVIDER)
    assert world.registry.roles(world.provider) == Role.PROVIDER


def test_expel_refuses_empty_roles(world: World) -> None:
    with boa.reverts("registry: no roles"):
        world.registry.expel(world.provider, 0)


def test_governance_cannot_expel_itself_from_governance(world: World) -> None:
    with boa.reverts("registry: cannot expel yourself from governance"):
        world.registry.expel(world.governance, Role.GOVERNANCE | Role.PROVIDER)
    assert world.registry.roles(world.governance) == Role.GOVERNANCE
    # dropping its other roles is allowed
    world.registry.admit(world.governance, Role.INSPECTOR)
    world.registry.expel(world.governance, Role.INSPECTOR)
    assert world.registry.roles(world.governance) == Role.GOVERNANCE


def test_expelled_participant_cannot_revive_its_grants_by_registering(world: World) -> None:
    """Expelling all roles ends grant-based access; self-service register does not undo it."""
    rid = world.anchor(world.patient, b"bafy-expel-revive", b"\x00\x00\x00\x01")
    world.grant(world.patient, world.provider, ALL, Purpose.TREATMENT)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert world.registry.barred(world.provider) is True
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is False

    with (
        boa.env.prank(world.provider),
        boa.reverts("registry: expelled; ask governance to admit you"),
    ):
        world.registry.register(enc_key("provider-again"), "")
    assert world.registry.is_registered(world.provider) is False
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is False

    # governance may take it back, which lifts the bar and revives the grants it still holds
    world.registry.admit(world.provider, Role.PROVIDER)
    assert world.registry.barred(world.provider) is False
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is True
    with boa.env.prank(world.provider):
        world.registry.register(enc_key("provider-again"), "")


def test_losing_one_role_of_several_does_not_bar(world: World) -> None:
    world.registry.admit(world.provider, Role.RESEARCHER)
    world.registry.expel(world.provider, Role.PROVIDER)
    assert world.registry.barred(world.provider) is False
    assert world.registry.is_registered(world.provider) is True


# --- rotate_key, set_metadata -------------------------------------------------------------


def test_rotate_key(world: World) -> None:
    with boa.env.prank(world.patient):
        world.registry.rotate_key(enc_key("rotated"))
    (event,) = world.registry.get_logs()
    assert type(event).__name__ == "EncryptionKeyRotated"
    assert (event.account, event.encryption_key) == (world.patient, enc_key("rotated"))
    assert world.registry.encryption_key(world.patient) == enc_key("rotated")
    assert world.registry.metadata_uri(world.patient) == "https://patient.example"


def test_rotate_key_needs_registration_and_a_key(world: World) -> None:
    with boa.env.prank(world.stranger), boa.reverts("registry: not registered"):
        world.registry.rotate_key(enc_key("x"))
    with boa.env.prank(world.patient), boa.reverts("registry: empty encryption key"):
        world.registry.rotate_key(ZERO32)
    world.registry.expel(world.provider, Role.PROVIDER)
    with boa.env.prank(world.provider), boa.reverts("registry: not registered"):
        world.registry.rotate_key(enc_key("y"))
    assert world.registry.encryption_key(world.provider) == enc_key("provider")


def test_set_metadata(world: World) -> None:
    with boa.env.prank(world.gateway):
        world.registry.set_metadata("https://gw.example:8443")
    (event,) = world.registry.get_logs()
    assert type(event).__name__ == "MetadataChanged"
    assert (event.account, event.metadata_uri) == (world.gateway, "https://gw.example:8443")
    assert world.registry.metadata_uri(world.gateway) == "https://gw.example:8443"
    assert world.registry.encryption_key(world.gateway) == enc_key("gateway")


def test_set_metadata_needs_registration(world: World) -> None:
    with boa.env.prank(world.stranger), boa.reverts("registry: not registered"):
        world.registry.set_metadata("https://nope.example")
    assert world.registry.metadata_uri(world.stranger) == ""


# --- views --------------------------------------------------------------------------------


def test_has_role_is_true_for_any_of_the_roles(world: World) -> None:
    reg = world.registry
    assert reg.has_role(world.provider, Role.PROVIDER) is True
    assert reg.has_role(world.provider, Role.PROVIDER | Role.RESEARCHER) is True
    assert reg.has_role(world.provider, Role.RESEARCHER | Role.GATEWAY) is False
    assert reg.has_role(world.provider, 0) is False
    assert reg.has_role(world.stranger, Role(0x1FF)) is False
    assert reg.has_role(world.gateway, Role.GATEWAY) is True


def test_is_registered(world: World) -> None:
    for who in ("governance", "patient", "other_patient", "provider", "researcher", "gateway"):
        assert world.registry.is_registered(getattr(world, who)) is True, who
    assert world.registry.is_registered(world.stranger) is False
    assert world.registry.is_registered(ZERO_ADDRESS) is False
