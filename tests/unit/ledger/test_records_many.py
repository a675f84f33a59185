"""Tests for Records.anchor_many: many record versions in one call, each by the rules of
anchor / anchor_for, all or nothing, a refusal naming its entry."""

from __future__ import annotations

import os
from typing import Any

import boa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmesh.ledger.contracts import ANCHOR_MANY_MAX
from tests.unit.ledger.world import (
    ALL,
    DIAGNOSIS,
    FLAG_SUPERSEDED,
    IMAGING,
    OBSERVATION,
    ZERO32,
    ZERO_ADDRESS,
    Purpose,
    World,
    kind_scope,
    record_id,
)

Entry = tuple[str, bytes, bytes, bytes]  # (patient, cid, kind, supersedes)


def anchor_many(world: World, sender: str, entries: list[Entry]) -> list[bytes]:
    with boa.env.prank(sender):
        ids: list[bytes] = world.records.anchor_many(entries)
    return ids


def anchored(world: World, entries: list[Entry]) -> list[bool]:
    """Which entries' records exist on chain."""
    return [world.records.anchor_of(record_id(p, c))[0] != ZERO_ADDRESS for p, c, _, _ in entries]


def event_fields(events: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (e.patient, e.record, e.supersedes, e.kind, e.author, e.cid)
        for e in events
        if type(e).__name__ == "Anchored"
    ]


# --- what one call anchors ----------------------------------------------------------------


def test_own_records_are_anchored_in_order_with_one_event_each(world: World) -> None:
    entries = [
        (world.patient, b"obs-%d" % i, (OBSERVATION, IMAGING, DIAGNOSIS)[i % 3], ZERO32)
        for i in range(7)
    ]
    ids = anchor_many(world, world.patient, entries)
    events = world.records.get_logs()

    assert ids == [record_id(world.patient, c) for _, c, _, _ in entries]
    for rid, (_, _, tag, _) in zip(ids, entries, strict=True):
        assert world.records.anchor_of(rid) == (world.patient, tag, boa.env.timestamp, 0)
    assert event_fields(events) == [
        (world.patient, rid, ZERO32, tag, world.patient, c)
        for rid, (_, c, tag, _) in zip(ids, entries, strict=True)
    ]


def test_an_empty_list_anchors_nothing(world: World) -> None:
    assert anchor_many(world, world.patient, []) == []
    assert world.records.get_logs() == []


def test_records_for_a_patient_with_contribute_consent(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    world.grant(world.other_patient, world.provider, ALL, Purpose.CONTRIBUTE)
    entries = [
        (world.patient, b"lab-1", OBSERVATION, ZERO32),
        (world.other_patient, b"scan", IMAGING, ZERO32),  # all-records consent
        (world.provider, b"own-note", DIAGNOSIS, ZERO32),  # the provider's own: no consent
        (world.patient, b"lab-2", OBSERVATION, ZERO32),
    ]
    ids = anchor_many(world, world.provider, entries)
    events = world.records.get_logs()

    assert [world.records.anchor_of(r)[:2] for r in ids] == [(p, k) for p, _, k, _ in entries]
    assert [(e[0], e[4]) for e in event_fields(events)] == [
        (p, world.provider) for p, _, _, _ in entries
    ]
    # the contributor does not own what it anchored: it cannot read it without a grant
    assert world.consent.has_access(world.provider, ids[0], Purpose.TREATMENT) is False
    assert world.consent.has_access(world.patient, ids[0], Purpose.TREATMENT) is True


def test_anchors_are_real_anchors_for_consent(world: World) -> None:
    """Unlike a Merkle batch, each record has its owner and kind in storage, so grants
    reach it."""
    entries = [(world.patient, b"a", OBSERVATION, ZERO32), (world.patient, b"b", IMAGING, ZERO32)]
    obs, img = anchor_many(world, world.patient, entries)
    world.grant(world.patient, world.researcher, kind_scope(IMAGING), Purpose.RESEARCH)
    assert world.consent.has_access(world.researcher, img, Purpose.RESEARCH) is True
    assert world.consent.has_access(world.researcher, obs, Purpose.RESEARCH) is False


def test_a_full_call_of_max_anchors(world: World) -> None:
    assert world.records.MAX_ANCHORS() == ANCHOR_MANY_MAX == 256
    entries = [(world.patient, b"n-%d" % i, OBSERVATION, ZERO32) for i in range(256)]
    ids = anchor_many(world, world.patient, entries)
    assert len(ids) == 256 and len(set(ids)) == 256
    assert all(anchored(world, entries))


def test_more_than_max_anchors_is_refused(world: World) -> None:
    """257 entries do not fit the DynArray: the ABI decoder reverts, nothing is anchored."""
    entries = [(world.patient, b"n-%d" % i, OBSERVATION, ZERO32) for i in range(257)]
    with boa.env.prank(world.patient), boa.reverts():
        world.records.anchor_many(entries)
    assert not any(anchored(world, entries))


# --- refusals: the whole call reverts and names the entry ----------------------------------


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        pytest.param((b"", OBSERVATION), "records: empty cid", id="empty-cid"),
        pytest.param((b"zero", b"\x00" * 4), "records: kind 0 is reserved", id="kind-0"),
        pytest.param((b"ok-0", OBSERVATION), "records: already anchored", id="duplicate"),
    ],
)
def test_a_bad_entry_reverts_the_call_and_is_named(
    world: World, bad: tuple[bytes, bytes], reason: str
) -> None:
    entries = [(world.patient, b"ok-%d" % i, OBSERVATION, ZERO32) for i in range(4)]
    entries.insert(2, (world.patient, *bad, ZERO32))
    with boa.env.prank(world.patient), boa.reverts(f"{reason} (entry 2)"):
        world.records.anchor_many(entries)
    assert not any(anchored(world, [e for e in entries if e[1]]))


def test_a_record_already_on_chain(world: World) -> None:
    world.anchor(world.patient, b"old", OBSERVATION)
    entries = [
        (world.patient, b"new", OBSERVATION, ZERO32),
        (world.patient, b"old", IMAGING, ZERO32),
    ]
    with boa.env.prank(world.patient), boa.reverts("records: already anchored (entry 1)"):
        world.records.anchor_many(entries)
    assert anchored(world, entries) == [False, True]


def test_single_calls_keep_their_reasons_without_an_entry(world: World) -> None:
    """anchor and anchor_for share anchor_many's checks but name no entry."""
    with boa.env.prank(world.patient), boa.reverts("records: empty cid"):
        world.records.anchor(b"", OBSERVATION, ZERO32)
    with boa.env.prank(world.provider), boa.reverts("records: no consent to contribute"):
        world.records.anchor_for(world.patient, b"x", OBSERVATION, ZERO32)


def test_records_for_a_patient_without_consent(world: World) -> None:
    entries = [
        (world.provider, b"own", OBSERVATION, ZERO32),
        (world.patient, b"lab", OBSERVATION, ZERO32),
    ]
    with boa.env.prank(world.provider), boa.reverts("records: no consent to contribute (entry 1)"):
        world.records.anchor_many(entries)
    assert not any(anchored(world, entries))


@pytest.mark.parametrize(
    ("scope", "purposes"),
    [
        pytest.param(kind_scope(IMAGING), Purpose.CONTRIBUTE, id="other-kind"),
        pytest.param(kind_scope(OBSERVATION), Purpose.TREATMENT, id="other-purpose"),
        pytest.param(ALL, 0x3F, id="every-purpose-but-contribute"),
    ],
)
def test_consent_that_does_not_cover_the_entry(world: World, scope: bytes, purposes: int) -> None:
    world.grant(world.patient, world.provider, scope, purposes)
    with boa.env.prank(world.provider), boa.reverts("records: no consent to contribute (entry 0)"):
        world.records.anchor_many([(world.patient, b"lab", OBSERVATION, ZERO32)])


def test_consent_for_one_pair_does_not_carry_to_the_next(world: World) -> None:
    """Consent is checked once per run of the same (patient, kind), and again whenever
    either changes, including back to a pair checked before."""
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    cases = [
        # another kind of the same patient
        [(world.patient, OBSERVATION), (world.patient, OBSERVATION), (world.patient, IMAGING)],
        # the same kind of another patient
        [(world.patient, OBSERVATION), (world.other_patient, OBSERVATION)],
        # the provider's own record in between does not reset the check
        [(world.patient, OBSERVATION), (world.provider, IMAGING), (world.patient, IMAGING)],
    ]
    for n, case in enumerate(cases):
        entries = [(p, b"c%d-%d" % (n, i), k, ZERO32) for i, (p, k) in enumerate(case)]
        last = len(entries) - 1
        with (
            boa.env.prank(world.provider),
            boa.reverts(f"records: no consent to contribute (entry {last})"),
        ):
            world.records.anchor_many(entries)
        assert not any(anchored(world, entries))
    # and back to a pair checked before: each run is checked again (here: still granted)
    entries = [
        (world.patient, b"x1", OBSERVATION, ZERO32),
        (world.provider, b"x2", IMAGING, ZERO32),
        (world.patient, b"x3", OBSERVATION, ZERO32),
    ]
    assert len(anchor_many(world, world.provider, entries)) == 3


def test_consent_expiring_is_seen_per_call(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE, 100)
    anchor_many(world, world.provider, [(world.patient, b"in-time", OBSERVATION, ZERO32)])
    boa.env.time_travel(seconds=100)
    with boa.env.prank(world.provider), boa.reverts("records: no consent to contribute (entry 0)"):
        world.records.anchor_many([(world.patient, b"too-late", OBSERVATION, ZERO32)])


# --- supersede rules inside one call --------------------------------------------------------


def test_a_version_chain_inside_one_call(world: World) -> None:
    v0 = world.anchor(world.patient, b"v0", OBSERVATION)
    v1, v2 = record_id(world.patient, b"v1"), record_id(world.patient, b"v2")
    entries = [
        (world.patient, b"v1", OBSERVATION, v0),  # supersedes a record on chain
        (world.patient, b"other", IMAGING, ZERO32),
        (world.patient, b"v2", OBSERVATION, v1),  # supersedes an entry of this call
    ]
    ids = anchor_many(world, world.patient, entries)
    supersedes = [e[2] for e in event_fields(world.records.get_logs())]
    assert ids == [v1, record_id(world.patient, b"other"), v2]
    assert [world.records.anchor_of(r)[3] for r in (v0, v1, v2)] == [FLAG_SUPERSEDED] * 2 + [0]
    assert supersedes == [v0, ZERO32, v1]


def test_a_contributor_supersedes_inside_one_call(world: World) -> None:
    world.grant(world.patient, world.provider, kind_scope(OBSERVATION), Purpose.CONTRIBUTE)
    v1 = record_id(world.patient, b"v1")
    entries = [(world.patient, b"v1", OBSERVATION, ZERO32), (world.patient, b"v2", OBSERVATION, v1)]
    anchor_many(world, world.provider, entries)
    assert world.records.anchor_of(v1)[3] == FLAG_SUPERSEDED


def test_supersede_refusals_inside_one_call(world: World) -> None:
    p, q = world.patient, world.other_patient
    v1, later = record_id(p, b"v1"), record_id(p, b"later")
    world.grant(q, p, ALL, Purpose.CONTRIBUTE)
    cases = [
        # an entry superseding one that comes after it in the call
        (
            [(p, b"v2", OBSERVATION, later), (p, b"later", OBSERVATION, ZERO32)],
            "records: superseded record unknown (entry 0)",
        ),
        # two versions superseding the same one
        (
            [
                (p, b"v1", OBSERVATION, ZERO32),
                (p, b"a", OBSERVATION, v1),
                (p, b"b", OBSERVATION, v1),
            ],
            "records: already superseded (entry 2)",
        ),
        # a new kind for the version
        (
            [(p, b"v1", OBSERVATION, ZERO32), (p, b"v2", IMAGING, v1)],
            "records: superseded record is of another kind (entry 1)",
        ),
        # another patient's version
        (
            [(p, b"v1", OBSERVATION, ZERO32), (q, b"v2", OBSERVATION, v1)],
            "records: superseded record has another owner (entry 1)",
        ),
    ]
    for entries, reason in cases:
        with boa.env.prank(p), boa.reverts(reason):
            world.records.anchor_many(entries)
        assert not any(anchored(world, entries)), reason


# --- anchor_many does what the single calls do ----------------------------------------------

TAGS = (OBSERVATION, IMAGING, b"\x00" * 4)
# (sender, patient, kind) of the grants in the test below, and the records anchored before it
MAY_CONTRIBUTE = {("provider", "patient", 0), ("provider", "other_patient", 0)}
MAY_CONTRIBUTE |= {("provider", "other_patient", 1), ("patient", "other_patient", 1)}
ON_CHAIN = (("patient", 0), ("other_patient", 1))  # (owner, kind) of pre-anchored versions
MISTAKES = ("empty cid", "kind 0", "duplicate", "no consent", "supersede later", "supersede twice")
MISTAKES += ("supersede another kind", "supersede another owner")

Plan = list[tuple[str, int, int, int | None]]  # (patient, cid, kind, supersedes: entry or ~pre)


@st.composite
def entry_plans(draw: st.DrawFn) -> tuple[str, Plan]:
    """A sender and a valid list of entries (own records, others' with consent, versions
    superseding earlier entries or records on chain), then at most one mistake."""
    sender = draw(st.sampled_from(["patient", "provider"]))
    pairs = sorted(
        {(sender, 0), (sender, 1)} | {(p, k) for s, p, k in MAY_CONTRIBUTE if s == sender}
    )
    plan: Plan = []
    superseded: set[int | None] = {None}
    for i in range(draw(st.integers(1, 10))):
        patient, kind = draw(st.sampled_from(pairs))
        versions = [j for j, (p, _, k, _) in enumerate(plan) if (p, k) == (patient, kind)]
        versions += [~m for m, pk in enumerate(ON_CHAIN) if pk == (patient, kind)]
        previous = draw(st.sampled_from([None, None, *versions]))
        if previous in superseded:
            previous = None
        superseded.add(previous)
        plan.append((patient, i + 1, kind, previous))
    mistake = draw(st.sampled_from([None] * 6 + list(MISTAKES)))
    versions = [i for i, entry in enumerate(plan) if entry[3] is not None]
    if mistake in MISTAKES[5:] and versions:  # mistakes in superseding: pick a new version
        at = draw(st.sampled_from(versions))
    else:
        at = draw(st.integers(0, len(plan) - 1))
    patient, c, kind, previous = plan[at]
    if mistake == "empty cid":
        plan[at] = (patient, 0, kind, previous)
    elif mistake == "kind 0":
        plan[at] = (patient, c, 2, None)
    elif mistake == "duplicate":
        plan.insert(draw(st.integers(0, len(plan))), plan[at])
    elif mistake == "no consent":
        plan[at] = ("patient" if sender == "provider" else "other_patient", c, 0, None)
    elif mistake == "supersede later":
        plan.insert(at, (patient, 99, kind, at + 1))
    elif mistake == "supersede twice" and previous is not None:
        plan.insert(draw(st.integers(at + 1, len(plan))), (patient, 99, kind, previous))
    elif mistake == "supersede another kind" and previous is not None:
        plan[at] = (patient, c, 1 - kind, previous)
    elif mistake == "supersede another owner" and previous is not None:
        plan[at] = (sender if patient != sender else "other_patient", c, kind, previous)
    return sender, plan


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=entry_plans())
def test_anchor_many_equals_the_single_calls(world: World, case: tuple[str, Plan]) -> None:
    """For any list: anchor_many refuses it with the reason (and the index) of the first entry
    that anchor / anchor_for, called one by one, would refuse; otherwise it leaves the same
    anchors and the same events."""
    sender, plan = case
    author = getattr(world, sender)
    with boa.env.anchor():
        pre = [world.anchor(getattr(world, p), b"pre-%d" % k, TAGS[k]) for p, k in ON_CHAIN]
        for s, p, k in MAY_CONTRIBUTE:
            scope = kind_scope(TAGS[k]) if (s, p) != ("provider", "other_patient") else ALL
            world.grant(getattr(world, p), getattr(world, s), scope, Purpose.CONTRIBUTE)
        entries: list[Entry] = []
        for who, c, k, s in plan:
            if s is None:
                previous = ZERO32
            elif s >= 0:  # the record of plan entry s
                previous = record_id(getattr(world, plan[s][0]), b"cid-%d" % plan[s][1])
            else:
                previous = pre[~s]
            entries.append((getattr(world, who), b"cid-%d" % c if c else b"", TAGS[k], previous))

        # one by one
        singles_failed: tuple[int, str] | None = None
        expected_events: list[tuple[Any, ...]] = []
        with boa.env.anchor():
            for i, (patient, cid, tag, previous) in enumerate(entries):
                try:
                    with boa.env.prank(author):
                        if patient == author:
                            world.records.anchor(cid, tag, previous)
                        else:
                            world.records.anchor_for(patient, cid, tag, previous)
                except boa.BoaError as exc:
                    singles_failed = (i, _reason(exc))
                    break
                expected_events += event_fields(world.records.get_logs())
            expected_state = [world.records.anchor_of(record_id(p, c)) for p, c, _, _ in entries]
            expected_pre = [world.records.anchor_of(r) for r in pre]

        # all at once
        if singles_failed is not None:
            i, reason = singles_failed
            with boa.env.prank(author), boa.reverts(f"{reason} (entry {i})"):
                world.records.anchor_many(entries)
            return
        ids = anchor_many(world, author, entries)
        assert ids == [record_id(p, c) for p, c, _, _ in entries]
        assert event_fields(world.records.get_logs()) == expected_events
        assert [world.records.anchor_of(record_id(p, c)) for p, c, _, _ in entries] == (
            expected_state
        )
        assert [world.records.anchor_of(r) for r in pre] == expected_pre


def _reason(exc: boa.BoaError) -> str:
    """The revert reason of a failed boa call."""
    reason: str = exc.stack_trace.last_frame.pretty_vm_reason
    return reason


def test_random_cids_of_every_length(world: World) -> None:
    entries = [(world.patient, os.urandom(n), DIAGNOSIS, ZERO32) for n in range(1, 65)]
    ids = anchor_many(world, world.patient, entries)
    assert [e[5] for e in event_fields(world.records.get_logs())] == [c for _, c, _, _ in entries]
    assert ids == [record_id(world.patient, c) for _, c, _, _ in entries]
