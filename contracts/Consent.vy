# pragma version ~=0.4.3
"""
@title medmesh Consent
@license Apache-2.0
@notice Patients grant, revoke and audit access to their records.

        A grant lets `grantee` use the patient's records for some purposes
        (a set of flags) until `expiry`, within a scope:
        - one record version: scope = the record id, keccak256(patient ‖ cid);
        - a kind of record: scope = the 4-byte kind tag in the low bytes of a
          zero word (`kind_scope(kind)`);
        - all records: scope = 0.
        A new grant for the same (patient, grantee, scope) replaces the old one;
        `revoke` ends it at once. Access also requires that the grantee is still
        registered and the record is not erased.

        `break_glass` gives a registered provider emergency access to all of a
        patient's records for the EMERGENCY purpose, for a fixed time and only
        while it keeps the PROVIDER role, and is always logged with the digest of a reason kept by the institution.

        Gateways (participants with the GATEWAY role) log every access they
        allow in batches (`log_access`), which with this contract's own events
        is the audit trail. Only digests, addresses, flags and times are
        written: no personal data.

        One storage slot per grant: expiry (64 bits) | purposes (<< 64).
        The capsule reference (the digest of the key-capsule block in the
        storage network, 0 if none) is carried in the `Granted` event only.
"""

from interfaces import IConsent
from interfaces import IRecords
from interfaces import IRegistry

implements: IConsent

ALL: public(constant(bytes32)) = empty(bytes32)
BREAK_GLASS: public(constant(bytes32)) = keccak256("medmesh:break-glass")
FLAG_ERASED: constant(uint256) = 2
MAX_LOG: constant(uint256) = 512

registry: public(IRegistry)
records: public(IRecords)
break_glass_seconds: public(uint256)

# keccak256(abi_encode(patient, grantee, scope)) -> expiry | purposes << 64
grants: HashMap[bytes32, uint256]


struct Access:
    patient: address
    accessor: address
    record: bytes32
    purpose: IConsent.Purpose
    at: uint64


event Granted:
    patient: indexed(address)
    grantee: indexed(address)
    scope: indexed(bytes32)
    purposes: IConsent.Purpose
    expiry: uint256
    capsule: bytes32


event Revoked:
    patient: indexed(address)
    grantee: indexed(address)
    scope: indexed(bytes32)


event BreakGlass:
    patient: indexed(address)
    provider: indexed(address)
    reason: bytes32
    expiry: uint256


event AccessLogged:
    patient: indexed(address)
    accessor: indexed(address)
    record: indexed(bytes32)
    purpose: IConsent.Purpose
    at: uint64
    gateway: address


@deploy
def __init__(registry: IRegistry, records: IRecords, break_glass_seconds: uint256):
    assert break_glass_seconds > 0, "consent: break-glass time must be positive"
    self.registry = registry
    self.records = records
    self.break_glass_seconds = break_glass_seconds


@external
@pure
def kind_scope(kind: bytes4) -> bytes32:
    return convert(convert(kind, uint32), bytes32)


@external
def grant(grantee: address, scope: bytes32, purposes: IConsent.Purpose, expiry: uint256, capsule: bytes32):
    """
    @notice Let `grantee` use your records in `scope` for `purposes` until
            `expiry` (unix seconds). `capsule` names the key-capsule block made
            for the grantee (0 for none).
    """
    assert grantee != empty(address) and grantee != msg.sender, "consent: bad grantee"
    assert purposes != empty(IConsent.Purpose), "consent: no purpose"
    assert expiry > block.timestamp and expiry < 2**64, "consent: expiry must be in the future"
    assert scope != BREAK_GLASS, "consent: reserved scope"
    self.grants[self._key(msg.sender, grantee, scope)] = expiry | (convert(purposes, uint256) << 64)
    log Granted(patient=msg.sender, grantee=grantee, scope=scope, purposes=purposes, expiry=expiry, capsule=capsule)


@external
def revoke(grantee: address, scope: bytes32):
    """
    @notice End a grant (or a break-glass access: scope BREAK_GLASS) now.
    """
    key: bytes32 = self._key(msg.sender, grantee, scope)
    assert self.grants[key] != 0, "consent: no such grant"
    self.grants[key] = 0
    log Revoked(patient=msg.sender, grantee=grantee, scope=scope)


@external
def break_glass(patient: address, reason: bytes32) -> uint256:
    """
    @notice Emergency access to all of `patient`'s records for the EMERGENCY
            purpose, for `break_glass_seconds`. `reason` is the digest of the
            justification the institution keeps. Returns the expiry.
    """
    assert staticcall self.registry.has_role(msg.sender, IRegistry.Role.PROVIDER), "consent: only providers may break the glass"
    assert patient != empty(address) and patient != msg.sender, "consent: bad patient"
    assert reason != empty(bytes32), "consent: a reason is required"
    expiry: uint256 = block.timestamp + self.break_glass_seconds
    self.grants[self._key(patient, msg.sender, BREAK_GLASS)] = expiry | (convert(IConsent.Purpose.EMERGENCY, uint256) << 64)
    log BreakGlass(patient=patient, provider=msg.sender, reason=reason, expiry=expiry)
    return expiry


@external
def log_access(entries: DynArray[Access, MAX_LOG]):
    """
    @notice Gateways record the accesses they allowed.
    """
    assert staticcall self.registry.has_role(msg.sender, IRegistry.Role.GATEWAY), "consent: only gateways may log access"
    for entry: Access in entries:
        log AccessLogged(patient=entry.patient, accessor=entry.accessor, record=entry.record, purpose=entry.purpose, at=entry.at, gateway=msg.sender)


@external
@view
def grant_of(patient: address, grantee: address, scope: bytes32) -> (IConsent.Purpose, uint256):
    """
    @notice (purposes, expiry) of the current grant; expiry 0 if none.
    """
    packed: uint256 = self.grants[self._key(patient, grantee, scope)]
    return (convert(packed >> 64, IConsent.Purpose), packed & convert(max_value(uint64), uint256))


@external
@view
def has_access(grantee: address, record: bytes32, purpose: IConsent.Purpose) -> bool:
    """
    @notice True if `grantee` may use `record` for `purpose` (every flag
            given) now.
    """
    owner: address = empty(address)
    kind: bytes4 = empty(bytes4)
    at: uint256 = 0
    flags: uint256 = 0
    owner, kind, at, flags = staticcall self.records.anchor_of(record)
    if owner == empty(address) or flags & FLAG_ERASED != 0:
        return False
    if grantee == owner:
        return True
    if not staticcall self.registry.is_registered(grantee):
        return False
    if self._allows(self._key(owner, grantee, record), purpose):
        return True
    return self._covers_kind(owner, grantee, kind, purpose)


@external
@view
def has_kind_access(patient: address, grantee: address, kind: bytes4, purpose: IConsent.Purpose) -> bool:
    """
    @notice True if `grantee` may use all of `patient`'s records of `kind`
            for `purpose` now.
    """
    if grantee == patient:
        return True
    if not staticcall self.registry.is_registered(grantee):
        return False
    return self._covers_kind(patient, grantee, kind, purpose)


@internal
@view
def _covers_kind(patient: address, grantee: address, kind: bytes4, purpose: IConsent.Purpose) -> bool:
    if self._allows(self._key(patient, grantee, convert(convert(kind, uint32), bytes32)), purpose):
        return True
    if self._allows(self._key(patient, grantee, ALL), purpose):
        return True
    if self._allows(self._key(patient, grantee, BREAK_GLASS), purpose):
        # emergency access lasts only while the grantee is still a provider
        return staticcall self.registry.has_role(grantee, IRegistry.Role.PROVIDER)
    return False


@internal
@view
def _allows(key: bytes32, purpose: IConsent.Purpose) -> bool:
    packed: uint256 = self.grants[key]
    if packed & convert(max_value(uint64), uint256) <= block.timestamp:
        return False
    wanted: uint256 = convert(purpose, uint256)
    return wanted != 0 and (packed >> 64) & wanted == wanted


@internal
@pure
def _key(patient: address, grantee: address, scope: bytes32) -> bytes32:
    return keccak256(abi_encode(patient, grantee, scope))
