# pragma version ~=0.4.3
"""
@title medmesh Records
@license Apache-2.0
@notice Anchors of record versions. A record version is identified by
        `keccak256(patient ‖ cid)`: the patient's 20-byte address followed by
        the binary CID of its (encrypted) content in the storage network.
        Binding the patient into the id means nobody who sees a CID (in the
        mempool, say) can anchor it first and so claim or block the record. An anchor holds who owns the record (the patient),
        its kind (a 4-byte tag, `bytes4(keccak256("fhir:Observation"))` and the
        like), when it was anchored and the version it supersedes. The CID
        itself appears only in the `Anchored` event, so that the patient's
        client can rebuild its record list from the chain; it names ciphertext.

        A patient anchors its own records. A provider may anchor for a patient
        when the patient has granted it the CONTRIBUTE purpose for that kind.
        `anchor_many` anchors up to MAX_ANCHORS record versions in one
        transaction, each by exactly these rules and with its own `Anchored`
        event (an import pays the 21,000 gas of a transaction once per batch,
        not once per record). Many records can also be committed at once under
        one Merkle root (sorted-pair keccak256 tree, double-hashed leaves as in
        OpenZeppelin's StandardMerkleTree), and a record's inclusion is checked
        on chain; such records have no anchor, so no grant reaches them.

        One storage slot per anchor: owner (160 bits) | time (48) | flags (16) |
        kind (32).
"""

from snekmate.auth import ownable
from snekmate.utils import merkle_proof_verification as merkle

initializes: ownable
initializes: merkle

exports: ownable.owner

from interfaces import IConsent
from interfaces import IRecords
from interfaces import IRegistry

implements: IRecords

FLAG_SUPERSEDED: constant(uint256) = 1
FLAG_ERASED: constant(uint256) = 2
MAX_CID: constant(uint256) = 64
MAX_PROOF: constant(uint256) = 64
# entries per anchor_many: 256 new records use 7.4M gas (9.0M with 64-byte CIDs that all
# supersede a version), under the 2**24 gas cap per transaction of EIP-7825 with room
# for a client's estimate margin (512 would not be)
MAX_ANCHORS: public(constant(uint256)) = 256
# `entry` of a single anchor / anchor_for: its refusals carry no entry number
SINGLE: constant(uint256) = max_value(uint256)

registry: public(IRegistry)
consent: public(IConsent)

# record id -> packed anchor
anchors: HashMap[bytes32, uint256]
# batch root -> packed (author | time << 160 | count << 208)
batches: HashMap[bytes32, uint256]


struct NewAnchor:
    patient: address
    cid: Bytes[MAX_CID]
    kind: bytes4
    supersedes: bytes32


event Anchored:
    patient: indexed(address)
    record: indexed(bytes32)
    supersedes: indexed(bytes32)
    kind: bytes4
    author: address
    cid: Bytes[MAX_CID]


event BatchAnchored:
    author: indexed(address)
    root: indexed(bytes32)
    count: uint256


event Erased:
    patient: indexed(address)
    record: indexed(bytes32)


@deploy
def __init__(registry: IRegistry):
    ownable.__init__()
    merkle.__init__()
    self.registry = registry


@external
def set_consent(consent: IConsent):
    """
    @notice Wire the Consent contract once, right after deployment (Consent
            needs this contract's address, so it is deployed second).
    """
    ownable._check_owner()
    assert self.consent.address == empty(address), "records: consent already set"
    assert consent.address != empty(address), "records: zero address"
    self.consent = consent
    ownable._transfer_ownership(empty(address))


@external
def anchor(cid: Bytes[MAX_CID], kind: bytes4, supersedes: bytes32) -> bytes32:
    """
    @notice Anchor a version of one of your own records.
    @return The record id, keccak256(patient ‖ cid).
    """
    return self._anchor(msg.sender, cid, kind, supersedes, SINGLE)


@external
def anchor_for(patient: address, cid: Bytes[MAX_CID], kind: bytes4, supersedes: bytes32) -> bytes32:
    """
    @notice Anchor a record version for `patient`, who must have granted the
            caller the CONTRIBUTE purpose for this kind of record.
    """
    if not self._may_contribute(patient, kind):
        self._refuse("records: no consent to contribute", SINGLE)
    return self._anchor(patient, cid, kind, supersedes, SINGLE)


@external
def anchor_many(entries: DynArray[NewAnchor, MAX_ANCHORS]) -> DynArray[bytes32, MAX_ANCHORS]:
    """
    @notice Anchor up to MAX_ANCHORS record versions in order, each as
            `anchor` (your own records) or `anchor_for` (another patient's)
            would: the same checks, the same `Anchored` event. An entry may
            supersede one anchored by an earlier entry of the same call.
            All or nothing: the first entry refused reverts the whole call,
            with the reason `anchor` or `anchor_for` gives followed by
            " (entry i)", i counted from 0.
    @return The record ids, in the order of `entries`.
    """
    records: DynArray[bytes32, MAX_ANCHORS] = []
    # the (patient, kind) whose CONTRIBUTE consent was checked last: consent
    # cannot change within this call, so a run of entries for it is checked once
    consented_patient: address = msg.sender
    consented_kind: bytes4 = empty(bytes4)
    for i: uint256 in range(len(entries), bound=MAX_ANCHORS):
        entry: NewAnchor = entries[i]
        if entry.patient != msg.sender and (entry.patient != consented_patient or entry.kind != consented_kind):
            if not self._may_contribute(entry.patient, entry.kind):
                self._refuse("records: no consent to contribute", i)
            consented_patient = entry.patient
            consented_kind = entry.kind
        records.append(self._anchor(entry.patient, entry.cid, entry.kind, entry.supersedes, i))
    return records


@internal
@view
def _may_contribute(patient: address, kind: bytes4) -> bool:
    # true for the patient itself (Consent.has_kind_access checks that first)
    return staticcall self.consent.has_kind_access(patient, msg.sender, kind, IConsent.Purpose.CONTRIBUTE)


@internal
@pure
def _refuse(reason: String[64], entry: uint256):
    if entry == SINGLE:
        raise reason
    raise concat(reason, " (entry ", uint2str(entry), ")")


@internal
def _anchor(patient: address, cid: Bytes[MAX_CID], kind: bytes4, supersedes: bytes32, entry: uint256) -> bytes32:
    """
    @dev Every rule of a new anchor but consent; `entry` names the entry of
         anchor_many in a refusal (SINGLE for anchor and anchor_for).
    """
    if len(cid) == 0:
        self._refuse("records: empty cid", entry)
    # kind 0 would share its grant scope with ALL (the zero word)
    if kind == empty(bytes4):
        self._refuse("records: kind 0 is reserved", entry)
    record: bytes32 = keccak256(concat(convert(patient, bytes20), cid))
    if self.anchors[record] != 0:
        self._refuse("records: already anchored", entry)
    if supersedes != empty(bytes32):
        previous: uint256 = self.anchors[supersedes]
        if previous == 0:
            self._refuse("records: superseded record unknown", entry)
        if convert(previous & convert(max_value(uint160), uint256), address) != patient:
            self._refuse("records: superseded record has another owner", entry)
        if convert(convert(previous >> 224, uint32), bytes4) != kind:
            self._refuse("records: superseded record is of another kind", entry)
        if (previous >> 208) & FLAG_SUPERSEDED != 0:
            self._refuse("records: already superseded", entry)
        self.anchors[supersedes] = previous | (FLAG_SUPERSEDED << 208)
    self.anchors[record] = (
        convert(patient, uint256)
        | (block.timestamp << 160)
        | (convert(convert(kind, uint32), uint256) << 224)
    )
    log Anchored(patient=patient, record=record, supersedes=supersedes, kind=kind, author=msg.sender, cid=cid)
    return record


@external
def erase(record: bytes32):
    """
    @notice Mark your record as erased (crypto-shredded): its key capsules are
            destroyed off chain and no grant gives access to it any more.
    """
    packed: uint256 = self.anchors[record]
    assert packed != 0, "records: unknown record"
    assert convert(packed & convert(max_value(uint160), uint256), address) == msg.sender, "records: not the owner"
    assert (packed >> 208) & FLAG_ERASED == 0, "records: already erased"
    self.anchors[record] = packed | (FLAG_ERASED << 208)
    log Erased(patient=msg.sender, record=record)


@external
@view
def anchor_of(record: bytes32) -> (address, bytes4, uint256, uint256):
    """
    @notice (owner, kind, anchored at, flags) of a record; owner 0 if unknown.
            Flags: 1 superseded, 2 erased.
    """
    packed: uint256 = self.anchors[record]
    owner: address = convert(packed & convert(max_value(uint160), uint256), address)
    at: uint256 = (packed >> 160) & convert(max_value(uint48), uint256)
    flags: uint256 = (packed >> 208) & convert(max_value(uint16), uint256)
    kind: bytes4 = convert(convert(packed >> 224, uint32), bytes4)
    return (owner, kind, at, flags)


@external
def anchor_batch(root: bytes32, count: uint256):
    """
    @notice Anchor `count` records under one Merkle root. Leaves are
            keccak256(keccak256(abi_encode(patient, record, kind, supersedes))).
    """
    assert root != empty(bytes32), "records: empty root"
    assert count > 0 and count <= convert(max_value(uint48), uint256), "records: bad count"
    assert self.batches[root] == 0, "records: batch already anchored"
    self.batches[root] = convert(msg.sender, uint256) | (block.timestamp << 160) | (count << 208)
    log BatchAnchored(author=msg.sender, root=root, count=count)


@external
@view
def batch_of(root: bytes32) -> (address, uint256, uint256):
    """
    @notice (author, anchored at, count) of a batch; author 0 if unknown.
    """
    packed: uint256 = self.batches[root]
    return (
        convert(packed & convert(max_value(uint160), uint256), address),
        (packed >> 160) & convert(max_value(uint48), uint256),
        packed >> 208,
    )


@external
@view
def in_batch(root: bytes32, patient: address, record: bytes32, kind: bytes4, supersedes: bytes32, proof: DynArray[bytes32, MAX_PROOF]) -> bool:
    """
    @notice True if the batch `root` is anchored, the leaf is in it, and the
            batch's author is the patient or holds its CONTRIBUTE consent for
            this kind now.
    """
    packed: uint256 = self.batches[root]
    if packed == 0:
        return False
    leaf: bytes32 = keccak256(abi_encode(keccak256(abi_encode(patient, record, kind, supersedes))))
    if not merkle._verify(proof, root, leaf):
        return False
    author: address = convert(packed & convert(max_value(uint160), uint256), address)
    if author == patient:
        return True
    return staticcall self.consent.has_kind_access(patient, author, kind, IConsent.Purpose.CONTRIBUTE)

