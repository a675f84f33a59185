"""Tests for contracts/Records.vy: anchors, supersede chains, erasure, contributions, batches."""

from __future__ import annotations

import boa
import pytest
from eth_abi import encode
from eth_utils import keccak

from tests.unit.ledger.world import (
    ALL,
    BREAK_GLASS,
    DIAGNOSIS,
    FLAG_ERASED,
    FLAG_SUPERSEDED,
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

NOT_OWNER = "ownable: caller is not the owner"

# --- Merkle trees as OpenZeppelin's StandardMerkleTree builds them --------------------------


def leaf_hash(patient: str, record: bytes, tag: bytes, supersedes: bytes) -> bytes:
    """keccak256(keccak256(abi.encode(patient, record, kind, supersedes)))."""
    inner = keccak(
        encode(["address", "bytes32", "bytes4", "bytes32"], [patient, record, tag, supersedes])
    )
    return keccak(inner)


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


class MerkleTree:
    """A complete binary tree in an array, leaves at the end (OpenZeppelin's layout).

    Node ``i`` has children ``2i+1`` and ``2i+2``; pairs are hashed sorted.
    """

    def __init__(self, leaves: list[bytes]) -> None:
        assert leaves
        n = len(leaves)
        self.tree: list[bytes] = [b""] * (2 * n - 1)
        self.position: dict[bytes, int] = {}
        for i, leaf in enumerate(leaves):
            self.tree[len(self.tree) - 1 - i] = leaf
            self.position[leaf] = len(self.tree) - 1 - i
        for i in range(len(self.tree) - 1 - n, -1, -1):
            self.tree[i] = _pair(self.tree[2 * i + 1], self.tree[2 * i + 2])

    @property
    def root(self) -> bytes:
        return self.tree[0]

    def proof(self, leaf: bytes) -> list[bytes]:
        index = self.position[leaf]
        path = []
        while index > 0:
            sibling = index + 1 if index % 2 == 1 else index - 1
            path.append(self.tree[sibling])
            index = (index - 1) // 2
        return path


def _verify(proof: list[bytes], root: bytes, leaf: bytes) -> bool:
    node = leaf
    for sibling in proof:
        node = _pair(node, sibling)
    return node == root


def test_merkle_helper_matches_a_hand_built_tree() -> None:
    """The helper itself: three leaves give root H(H(l0, l1), l2) and proofs that verify."""
    leaves = [keccak(bytes([i])) for i in range(3)]
    tree = MerkleTree(leaves)
    assert tree.root == _pair(_pair(leaves[0], leaves[1]), leaves[2])
    assert tree.proof(leaves[0]) == [leaves[1], leaves[2]]
    assert tree.proof(leaves[2]) == [_pair(leaves[0], leaves[1])]
    for leaf in leaves:
        assert _verify(tree.proof(leaf), tree.root, leaf)
    assert MerkleTree(leaves[:1]).root == leaves[0]


# --- wiring -------------------------------------------------------------------------------


def test_consent_is_wired_and_ownership_renounced(world: World) -> None:
    assert world.records.consent() == world.consent.address
    assert world.records.registry() == world.registry.address
    assert world.records.owner() == ZERO_ADDRESS


def test_set_consent_once_by_the_deployer(world: World) -> None:
    records = deployer("Records").deploy(world.registry.address)
    assert records.owner() == world.governance
    with boa.env.prank(world.patient), boa.reverts(NOT_OWNER):
        records.set_consent(world.consent.address)
    with boa.reverts("records: zero address"):
        records.set_consent(ZERO_ADDRESS)

    records.set_consent(world.consent.address)
    (event,) = records.get_logs()
    assert type(event).__name__ == "OwnershipTransferred"
    assert (event.previous_owner, event.new_owner) == (world.governance, ZERO_ADDRESS)
    assert records.consent() == world.consent.address
    assert records.owner() == ZERO_ADDRESS

    # ownership is gone, so a second call fails on the owner check, before "already set"
    with boa.reverts(NOT_OWNER):
        records.set_consent(world.registry.address)
    assert records.consent() == world.consent.address


# --- anchor -------------------------------------------------------------------------------


def test_anchor_stores_owner_kind_time_and_logs_the_cid(world: World) -> None:
    with boa.env.prank(world.patient):
        rid = world.records.anchor(b"bafy-obs-1", OBSERVATION, ZERO32)
    (event,) = world.records.get_logs()

    assert rid == record_id(world.patient, b"bafy-obs-1")
    assert world.records.anchor_of(rid) == (world.patient, OBSERVATION, boa.env.timestamp, 0)
    assert type(event).__name__ == "Anchored"
    assert (event.patient, event.record, event.supersedes) == (world.patient, rid, ZERO32)
    assert (event.kind, event.author, event.cid) == (OBSERVATION, world.patient, b"bafy-obs-1")


@pytest.mark.parametrize("tag", [b"\x00\x00\x00\x01", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"])
def test_anchor_packing_round_trips_kind_and_time(world: World, tag: bytes) -> None:
    boa.env.time_travel(seconds=2**40)
    rid = world.anchor(world.patient, b"cid-" + tag, tag)
    assert world.records.anchor_of(rid) == (world.patient, tag, boa.env.timestamp, 0)


def test_anchor_of_unknown_record_is_empty(world: World) -> None:
    assert world.records.anchor_of(record_id(world.patient, b"never")) == (
        ZERO_ADDRESS,
        b"\x00" * 4,
        0,
        0,
    )


def test_anchor_refuses_empty_and_duplicate_cids(world: World) -> None:
    with boa.env.prank(world.patient), boa.reverts("records: empty cid"):
        world.records.anchor(b"", OBSERVATION, ZERO32)
    rid = world.anchor(world.patient, b"bafy-dup", OBSERVATION)
    with boa.env.prank(world.patient), boa.reverts("records: already anchored"):
        world.records.anchor(b"bafy-dup", IMAGING, ZERO32)
    assert world.records.anchor_of(rid)[:2] == (world.patient, OBSERVATION)


def test_anchor_accepts_a_cid_of_64_bytes(world: World) -> None:
    cid = bytes(range(64))
    rid = world.anchor(world.patient, cid, OBSERVATION)
    assert world.records.anchor_of(rid)[0] == world.patient


def test_an_unregistered_address_may_anchor_its_own_records(world: World) -> None:
    rid = world.anchor(world.stranger, b"bafy-stranger", OBSERVATION)
    assert world.records.anchor_of(rid)[0] == world.stranger


def test_someone_else_anchoring_a_cid_first_does_not_block_the_patient(world: World) -> None:
    """CID squatting: the stranger front-runs the patient's anchor with the same CID."""
    world.anchor(world.stranger, b"bafy-patient-secret", OBSERVATION)
    with boa.env.prank(world.patient):
        rid = world.records.anchor(b"bafy-patient-secret", OBSERVATION, ZERO32)
    assert world.records.anchor_of(rid)[0] == world.patient
    assert rid == record_id(world.patient, b"bafy-patient-secret")
    squatted = record_id(world.stranger, b"bafy-patient-secret")
    assert squatted != rid
    assert world.records.anchor_of(squatted)[0] == world.stranger


# --- supersede chains ---------------------------------------------------------------------


def test_supersede_chain(world: World) -> None:
    v1 = world.anchor(world.patient, b"v1", OBSERVATION)
    v2 = world.anchor(world.patient, b"v2", OBSERVATION, supersedes=v1)
    (event,) = world.records.get_logs()
    assert event.supersedes == v1
    v3 = world.anchor(world.patient, b"v3", OBSERVATION, supersedes=v2)

    assert world.records.anchor_of(v1)[3] == FLAG_SUPERSEDED
    assert world.records.anchor_of(v2)[3] == FLAG_SUPERSEDED
    assert world.records.anchor_of(v3)[3] == 0
    # superseding does not change the old version's owner, kind or time
    assert world.records.anchor_of(v1)[:2] == (world.patient, OBSERVATION)


def test_supersede_unknown_record(world: World) -> None:
    with boa.env.prank(world.patient), boa.reverts("records: superseded record unknown"):
        world.records.anchor(b"v2", OBSERVATION, record_id(world.patient, b"v1"))
    assert world.records.anchor_of(record_id(world.patient, b"v2"))[0] == ZERO_ADDRESS


def test_supersede_another_patients_record(world: World) -> None:
    theirs = world.anchor(world.other_patient, b"theirs", OBSERVATION)
    with (
        boa.env.prank(world.patient),
        boa.reverts("records: superseded record has another owner"),
    ):
        world.records.anchor(b"mine", OBSERVATION, theirs)
    assert world.records.anchor_of(theirs)[3] == 0


def test_supersede_twice(world: World) -> None:
    v1 = world.anchor(world.patient, b"v1", OBSERVATION)
    world.anchor(world.patient, b"v2a", OBSERVATION, supersedes=v1)
    with boa.env.prank(world.patient), boa.reverts("records: already superseded"):
        world.records.anchor(b"v2b", OBSERVATION, v1)
    assert world.records.anchor_of(record_id(world.patient, b"v2b"))[0] == ZERO_ADDRESS


def test_supersede_an_erased_record_keeps_it_erased(world: World) -> None:
    v1 = world.anchor(world.patient, b"v1", OBSERVATION)
    with boa.env.prank(world.patient):
        world.records.erase(v1)
    world.anchor(world.patient, b"v2", OBSERVATION, supersedes=v1)
    assert world.records.anchor_of(v1)[3] == FLAG_ERASED | FLAG_SUPERSEDED


# --- erase --------------------------------------------------------------------------------


def test_erase(world: World) -> None:
    rid = world.anchor(world.patient, b"to-erase", OBSERVATION)
    at = boa.env.timestamp
    boa.env.time_travel(seconds=60)
    with boa.env.prank(world.patient):
        world.records.erase(rid)
    (event,) = world.records.get_logs()
    assert type(event).__name__ == "Erased"
    assert (event.patient, event.record) == (world.patient, rid)
    assert world.records.anchor_of(rid) == (world.patient, OBSERVATION, at, FLAG_ERASED)


def test_erase_revert_paths(world: World) -> None:
    rid = world.anchor(world.patient, b"to-erase", OBSERVATION)
    with boa.env.prank(world.patient), boa.reverts("records: unknown record"):
        world.records.erase(record_id(world.patient, b"unknown"))
    with boa.env.prank(world.other_patient), boa.reverts("records: not the owner"):
        world.records.erase(rid)
    with boa.env.prank(world.patient):
        world.records.erase(rid)
    with boa.env.prank(world.patient), boa.reverts("records: already erased"):
        world.records.erase(rid)


def test_a_contributor_cannot_erase(world: World) -> None:
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE)
    with boa.env.prank(world.provider):
        rid = world.records.anchor_for(world.patient, b"by-provider", OBSERVATION, ZERO32)
    with boa.env.prank(world.provider), boa.reverts("records: not the owner"):
        world.records.erase(rid)
    assert world.records.anchor_of(rid)[3] == 0


def test_erased_record_is_closed_even_to_its_owner(world: World) -> None:
    """Consent.has_access answers False for an erased record, for the owner too (by design:
    the record's key capsules are destroyed, so nobody can read it)."""
    rid = world.anchor(world.patient, b"to-erase", OBSERVATION)
    world.grant(world.patient, world.provider, rid, Purpose.TREATMENT)
    assert world.consent.has_access(world.patient, rid, Purpose.TREATMENT) is True
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is True
    with boa.env.prank(world.patient):
        world.records.erase(rid)
    assert world.consent.has_access(world.patient, rid, Purpose.TREATMENT) is False
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is False


# --- anchor_for ---------------------------------------------------------------------------


def test_anchor_for_with_contribute_consent_for_the_kind(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    with boa.env.prank(world.provider):
        rid = world.records.anchor_for(world.patient, b"lab-result", OBSERVATION, ZERO32)
    (event,) = world.records.get_logs()
    assert rid == record_id(world.patient, b"lab-result")
    assert world.records.anchor_of(rid) == (world.patient, OBSERVATION, boa.env.timestamp, 0)
    assert (event.patient, event.author, event.kind) == (world.patient, world.provider, OBSERVATION)
    # the contributor does not own the record: it has no access without a grant to read it
    assert world.consent.has_access(world.provider, rid, Purpose.TREATMENT) is False


def test_anchor_for_yourself_needs_no_consent(world: World) -> None:
    with boa.env.prank(world.patient):
        rid = world.records.anchor_for(world.patient, b"self", IMAGING, ZERO32)
    assert world.records.anchor_of(rid)[0] == world.patient


def test_anchor_for_with_all_scope_contribute_covers_every_kind(world: World) -> None:
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE | Purpose.TREATMENT)
    for i, tag in enumerate((OBSERVATION, IMAGING, DIAGNOSIS)):
        with boa.env.prank(world.provider):
            rid = world.records.anchor_for(world.patient, b"c%d" % i, tag, ZERO32)
        assert world.records.anchor_of(rid)[:2] == (world.patient, tag)


@pytest.mark.parametrize(
    ("scope", "purposes"),
    [
        pytest.param(None, 0, id="no-grant"),
        pytest.param(kind_scope(IMAGING), Purpose.CONTRIBUTE, id="other-kind"),
        pytest.param(kind_scope(OBSERVATION), Purpose.TREATMENT, id="other-purpose"),
        pytest.param(ALL, 0x3F, id="every-purpose-but-contribute"),
        pytest.param(b"record", Purpose.CONTRIBUTE, id="record-scope"),
    ],
)
def test_anchor_for_without_matching_consent(
    world: World, scope: bytes | None, purposes: int
) -> None:
    if scope == b"record":  # a grant on the very record being written
        scope = record_id(world.patient, b"lab-result")
    if scope is not None:
        world.grant(world.patient, world.provider, scope, purposes)
    with (
        boa.env.prank(world.provider),
        boa.reverts("records: no consent to contribute"),
    ):
        world.records.anchor_for(world.patient, b"lab-result", OBSERVATION, ZERO32)
    assert world.records.anchor_of(record_id(world.patient, b"lab-result"))[0] == ZERO_ADDRESS


def test_anchor_for_after_the_consent_expires(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE, 100)
    boa.env.time_travel(seconds=99)
    with boa.env.prank(world.provider):
        world.records.anchor_for(world.patient, b"in-time", OBSERVATION, ZERO32)
    boa.env.time_travel(seconds=1)
    with boa.env.prank(world.provider), boa.reverts("records: no consent to contribute"):
        world.records.anchor_for(world.patient, b"too-late", OBSERVATION, ZERO32)


def test_anchor_for_after_revoke_or_expulsion(world: World) -> None:
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE)
    world.grant(world.patient, world.researcher, ALL, Purpose.CONTRIBUTE)
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, ALL)
    world.registry.expel(world.researcher, Role.RESEARCHER)
    for who in (world.provider, world.researcher):
        with boa.env.prank(who), boa.reverts("records: no consent to contribute"):
            world.records.anchor_for(world.patient, b"x", OBSERVATION, ZERO32)


def test_break_glass_does_not_allow_contributing(world: World) -> None:
    with boa.env.prank(world.provider):
        world.consent.break_glass(world.patient, keccak(b"unconscious"))
        with boa.reverts("records: no consent to contribute"):
            world.records.anchor_for(world.patient, b"x", OBSERVATION, ZERO32)
    assert world.consent.grant_of(world.patient, world.provider, BREAK_GLASS)[0] == (
        Purpose.EMERGENCY
    )


def test_anchor_for_supersedes_a_patient_record_of_the_same_kind(world: World) -> None:
    v1 = world.anchor(world.patient, b"v1", OBSERVATION)
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    with boa.env.prank(world.provider):
        v2 = world.records.anchor_for(world.patient, b"v2", OBSERVATION, v1)
    assert world.records.anchor_of(v1)[3] == FLAG_SUPERSEDED
    assert world.records.anchor_of(v2)[:2] == (world.patient, OBSERVATION)


def test_anchor_for_cannot_supersede_the_contributors_own_record(world: World) -> None:
    own = world.anchor(world.provider, b"provider-own", OBSERVATION)
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    with (
        boa.env.prank(world.provider),
        boa.reverts("records: superseded record has another owner"),
    ):
        world.records.anchor_for(world.patient, b"v2", OBSERVATION, own)


def test_contributor_cannot_supersede_a_record_of_another_kind(world: World) -> None:
    diagnosis = world.anchor(world.patient, b"diagnosis-v1", DIAGNOSIS)
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    with (
        boa.env.prank(world.provider),
        boa.reverts("records: superseded record is of another kind"),
    ):
        world.records.anchor_for(world.patient, b"observation", OBSERVATION, diagnosis)
    assert world.records.anchor_of(diagnosis)[3] == 0
    # nor may the patient change a record's kind by superseding it
    with (
        boa.env.prank(world.patient),
        boa.reverts("records: superseded record is of another kind"),
    ):
        world.records.anchor(b"observation", OBSERVATION, diagnosis)


def test_kind_zero_is_refused(world: World) -> None:
    """kind_scope(0x00000000) is the ALL word, so no record may be of kind 0."""
    zero_kind = b"\x00" * 4
    assert world.consent.kind_scope(zero_kind) == ALL
    with boa.env.prank(world.patient), boa.reverts("records: kind 0 is reserved"):
        world.records.anchor(b"zero-kind", zero_kind, ZERO32)
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE)
    with boa.env.prank(world.provider), boa.reverts("records: kind 0 is reserved"):
        world.records.anchor_for(world.patient, b"zero-kind", zero_kind, ZERO32)
    assert world.records.anchor_of(record_id(world.patient, b"zero-kind"))[0] == ZERO_ADDRESS


# --- batches ------------------------------------------------------------------------------


def test_anchor_batch_and_batch_of(world: World) -> None:
    root = keccak(b"root")
    with boa.env.prank(world.provider):
        world.records.anchor_batch(root, 37)
    (event,) = world.records.get_logs()
    assert type(event).__name__ == "BatchAnchored"
    assert (event.author, event.root, event.count) == (world.provider, root, 37)
    assert world.records.batch_of(root) == (world.provider, boa.env.timestamp, 37)
    assert world.records.batch_of(keccak(b"other")) == (ZERO_ADDRESS, 0, 0)


def test_anchor_batch_revert_paths(world: World) -> None:
    root = keccak(b"root")
    with boa.reverts("records: empty root"):
        world.records.anchor_batch(ZERO32, 1)
    with boa.reverts("records: bad count"):
        world.records.anchor_batch(root, 0)
    with boa.reverts("records: bad count"):
        world.records.anchor_batch(root, 2**48)
    world.records.anchor_batch(root, 2**48 - 1)
    assert world.records.batch_of(root)[2] == 2**48 - 1
    with boa.env.prank(world.patient), boa.reverts("records: batch already anchored"):
        world.records.anchor_batch(root, 1)
    assert world.records.batch_of(root)[0] == world.governance


def _batch_leaves(patient: str, n: int) -> list[tuple[str, bytes, bytes, bytes]]:
    tags = (OBSERVATION, IMAGING, DIAGNOSIS)
    out = []
    for i in range(n):
        supersedes = record_id(patient, b"old-%d" % i) if i % 4 == 3 else ZERO32
        out.append((patient, record_id(patient, b"batch-%d" % i), tags[i % 3], supersedes))
    return out


@pytest.mark.parametrize("n", range(1, 38))
def test_every_leaf_of_a_batch_verifies(world: World, n: int) -> None:
    leaves = _batch_leaves(world.patient, n)
    tree = MerkleTree([leaf_hash(*leaf) for leaf in leaves])
    with boa.env.prank(world.patient):
        world.records.anchor_batch(tree.root, n)
    for leaf in leaves:
        proof = tree.proof(leaf_hash(*leaf))
        assert world.records.in_batch(tree.root, *leaf, proof) is True


def test_wrong_leaf_proof_or_root_fails(world: World) -> None:
    leaves = _batch_leaves(world.patient, 11)
    tree = MerkleTree([leaf_hash(*leaf) for leaf in leaves])
    with boa.env.prank(world.patient):
        world.records.anchor_batch(tree.root, len(leaves))
    in_batch = world.records.in_batch
    patient, record, tag, supersedes = leaves[5]
    proof = tree.proof(leaf_hash(*leaves[5]))
    assert in_batch(tree.root, patient, record, tag, supersedes, proof) is True

    # any field of the leaf changed
    assert in_batch(tree.root, world.other_patient, record, tag, supersedes, proof) is False
    assert (
        in_batch(tree.root, patient, record_id(world.patient, b"x"), tag, supersedes, proof)
        is False
    )
    assert in_batch(tree.root, patient, record, b"\x00\x00\x00\x07", supersedes, proof) is False
    assert in_batch(tree.root, patient, record, tag, record_id(world.patient, b"x"), proof) is False
    # the proof changed: one sibling flipped, one dropped, one from another leaf, none
    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    assert in_batch(tree.root, patient, record, tag, supersedes, flipped) is False
    assert in_batch(tree.root, patient, record, tag, supersedes, proof[:-1]) is False
    other_proof = tree.proof(leaf_hash(*leaves[6]))
    assert in_batch(tree.root, patient, record, tag, supersedes, other_proof) is False
    assert in_batch(tree.root, patient, record, tag, supersedes, []) is False
    # a root that was never anchored, even though the proof is right for it
    unanchored = MerkleTree([leaf_hash(*leaf) for leaf in leaves[:10]])
    assert (
        in_batch(
            unanchored.root,
            patient,
            record,
            tag,
            supersedes,
            unanchored.proof(leaf_hash(*leaves[5])),
        )
        is False
    )


def test_single_leaf_batch_has_an_empty_proof(world: World) -> None:
    leaf = (world.patient, record_id(world.patient, b"solo"), OBSERVATION, ZERO32)
    root = leaf_hash(*leaf)
    with boa.env.prank(world.patient):
        world.records.anchor_batch(root, 1)
    assert world.records.in_batch(root, *leaf, []) is True
    # the single-hashed leaf (what a naive client would use) is not accepted
    single = keccak(encode(["address", "bytes32", "bytes4", "bytes32"], list(leaf)))
    assert world.records.in_batch(single, *leaf, []) is False


def test_batch_by_a_contributor_needs_contribute_consent_for_the_kind(world: World) -> None:
    """Leaves for a patient count only while the author holds CONTRIBUTE for the leaf's kind."""
    leaves = _batch_leaves(world.patient, 6)  # kinds cycle OBSERVATION, IMAGING, DIAGNOSIS
    tree = MerkleTree([leaf_hash(*leaf) for leaf in leaves])
    with boa.env.prank(world.provider):
        world.records.anchor_batch(tree.root, len(leaves))

    def verified() -> list[bool]:
        return [
            world.records.in_batch(tree.root, *leaf, tree.proof(leaf_hash(*leaf)))
            for leaf in leaves
        ]

    assert verified() == [False] * 6
    world.grant(world.patient, world.provider, kind_scope(IMAGING), Purpose.CONTRIBUTE, 100)
    assert verified() == [False, True, False, False, True, False]
    world.grant(world.patient, world.provider, ALL, Purpose.TREATMENT)
    assert verified() == [False, True, False, False, True, False]
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE)
    assert verified() == [True] * 6
    with boa.env.prank(world.patient):
        world.consent.revoke(world.provider, ALL)
    boa.env.time_travel(seconds=100)  # the IMAGING grant expires
    assert verified() == [False] * 6


def test_batch_by_a_patient_does_not_vouch_for_other_patients(world: World) -> None:
    leaves = [
        (world.patient, record_id(world.patient, b"mine"), OBSERVATION, ZERO32),
        (world.other_patient, record_id(world.other_patient, b"theirs"), OBSERVATION, ZERO32),
    ]
    tree = MerkleTree([leaf_hash(*leaf) for leaf in leaves])
    with boa.env.prank(world.patient):
        world.records.anchor_batch(tree.root, 2)
    results = [world.records.in_batch(tree.root, *lf, tree.proof(leaf_hash(*lf))) for lf in leaves]
    assert results == [True, False]


def test_batched_records_are_not_anchors(world: World) -> None:
    """A record anchored only in a batch has no anchor: anchor_of is empty, so Consent gives
    no access to it, not even to its owner."""
    leaf = (world.patient, record_id(world.patient, b"batched"), OBSERVATION, ZERO32)
    with boa.env.prank(world.patient):
        world.records.anchor_batch(leaf_hash(*leaf), 1)
    assert world.records.in_batch(leaf_hash(*leaf), *leaf, []) is True
    assert world.records.anchor_of(leaf[1]) == (ZERO_ADDRESS, b"\x00" * 4, 0, 0)
    assert world.consent.has_access(world.patient, leaf[1], Purpose.TREATMENT) is False


def test_consent_granted_after_a_batch_validates_it_retroactively(world: World) -> None:
    """in_batch checks the author's consent now, not when the batch was anchored."""
    leaf = (world.patient, record_id(world.patient, b"early"), OBSERVATION, ZERO32)
    with boa.env.prank(world.provider):
        world.records.anchor_batch(leaf_hash(*leaf), 1)
    assert world.records.in_batch(leaf_hash(*leaf), *leaf, []) is False
    boa.env.time_travel(seconds=86400)
    world.grant(world.patient, world.provider, ALL, Purpose.CONTRIBUTE)
    assert world.records.in_batch(leaf_hash(*leaf), *leaf, []) is True
