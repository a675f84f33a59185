"""The medmesh contracts deployed in titanoboa's in-process EVM, and constants the tests share.

``boa.load_partial`` compiles a contract with vyper's own import resolution: the folder of
the compiled file (``contracts/``) is pushed on the search path, so ``from interfaces import
IRegistry`` finds ``contracts/interfaces/IRegistry.vyi``, and ``sys.path`` is always searched,
so ``from snekmate.auth import ...`` finds the installed snekmate package. No extra search
paths are needed, whatever the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag
from functools import cache
from pathlib import Path
from typing import Any

import boa
from eth_utils import keccak

CONTRACTS_DIR = Path(__file__).resolve().parents[3] / "contracts"

ZERO32 = bytes(32)
ZERO_ADDRESS = "0x" + "00" * 20
BREAK_GLASS = keccak(b"medmesh:break-glass")
ALL = ZERO32
FLAG_SUPERSEDED = 1
FLAG_ERASED = 2
BREAK_GLASS_SECONDS = 4 * 3600
TOKEN_SUPPLY = 1_000_000 * 10**18  # HealthToken's initial supply in the session fixture


class Role(IntFlag):
    PATIENT = 1
    PROVIDER = 2
    RESEARCHER = 4
    STORAGE_NODE = 8
    COMPUTE_NODE = 16
    INSURER = 32
    INSPECTOR = 64
    GOVERNANCE = 128
    GATEWAY = 256


class Purpose(IntFlag):
    TREATMENT = 1
    PAYMENT = 2
    OPERATIONS = 4
    RESEARCH = 8
    PUBLIC_HEALTH = 16
    EMERGENCY = 32
    CONTRIBUTE = 64


def kind(name: str) -> bytes:
    """A record kind tag as the contracts expect it: ``bytes4(keccak256(name))``."""
    return keccak(text=name)[:4]


OBSERVATION = kind("fhir:Observation")
IMAGING = kind("fhir:ImagingStudy")
DIAGNOSIS = kind("fhir:Condition")


def kind_scope(tag: bytes) -> bytes:
    """The grant scope of a kind: the tag right-aligned in a zero word."""
    return tag.rjust(32, b"\x00")


def record_id(patient: str, cid: bytes) -> bytes:
    """A record's id: ``keccak256(patient's 20 bytes ‖ cid)``."""
    return keccak(bytes.fromhex(patient.removeprefix("0x")) + cid)


def enc_key(label: str) -> bytes:
    """A stand-in X25519 public key (the contracts store it opaquely)."""
    return keccak(text=f"x25519:{label}")


@cache
def deployer(name: str) -> Any:
    """The compiled contract ``contracts/<name>.vy`` (compiled once per process)."""
    return boa.load_partial(str(CONTRACTS_DIR / f"{name}.vy"))


@dataclass(frozen=True)
class World:
    """Registry, Records and Consent wired together, with a cast of participants."""

    registry: Any
    records: Any
    consent: Any
    governance: str
    patient: str
    other_patient: str
    provider: str
    researcher: str
    gateway: str
    stranger: str  # never registered

    def anchor(self, patient: str, cid: bytes, tag: bytes, supersedes: bytes = ZERO32) -> bytes:
        with boa.env.prank(patient):
            rid: bytes = self.records.anchor(cid, tag, supersedes)
        assert rid == record_id(patient, cid)
        return rid

    def grant(
        self,
        patient: str,
        grantee: str,
        scope: bytes,
        purposes: int,
        seconds: int = 3600,
        capsule: bytes = ZERO32,
    ) -> int:
        """Grant for ``seconds`` from now; returns the expiry."""
        expiry = boa.env.timestamp + seconds
        with boa.env.prank(patient):
            self.consent.grant(grantee, scope, purposes, expiry, capsule)
        return expiry


def deploy_world() -> World:
    governance = boa.env.eoa
    registry = deployer("Registry").deploy(enc_key("governance"), "https://gov.medmesh.example")
    records = deployer("Records").deploy(registry.address)
    consent = deployer("Consent").deploy(registry.address, records.address, BREAK_GLASS_SECONDS)
    records.set_consent(consent.address)

    def participant(alias: str, roles: Role | None) -> str:
        account = boa.env.generate_address(alias)
        if roles is not None:
            registry.admit(account, roles)
        with boa.env.prank(account):
            registry.register(enc_key(alias), f"https://{alias}.example")
        return account

    return World(
        registry=registry,
        records=records,
        consent=consent,
        governance=governance,
        patient=participant("patient", None),
        other_patient=participant("other_patient", None),
        provider=participant("provider", Role.PROVIDER),
        researcher=participant("researcher", Role.RESEARCHER),
        gateway=participant("gateway", Role.GATEWAY),
        stranger=boa.env.generate_address("stranger"),
    )
