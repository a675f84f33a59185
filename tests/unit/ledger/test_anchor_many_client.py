"""anchor_many's plan without a chain (medmesh.ledger.anchoring, RecordsContract.
anchor_many_call): entries checked before any RPC, split into transactions of ANCHOR_MANY_MAX,
grouped by (patient, kind) inside each one, in waves and rounds; refusals mapped back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from medmesh.errors import InvalidInputError, RevertError
from medmesh.ledger import artifacts
from medmesh.ledger.anchoring import ROUND_BLOCKS, AnchorPlan, encode_rows, rounds
from medmesh.ledger.contracts import (
    ANCHOR_MANY_MAX,
    ZERO,
    AnchorEntry,
    AnchorRefusedError,
    RecordsContract,
    kind_tag,
    record_id,
)
from medmesh.ledger.rpc import Rpc

A = to_checksum_address("0x" + "aa" * 20)
B = to_checksum_address("0x" + "bb" * 20)
SELECTOR = keccak(b"anchor_many((address,bytes,bytes4,bytes32)[])")[:4]


@pytest.fixture(scope="module")
def records() -> Iterator[RecordsContract]:
    rpc = Rpc("http://127.0.0.1:9")  # never called: encoding is offline
    yield RecordsContract(artifacts.load("Records"), "0x" + "01" * 20, rpc)
    rpc.close()


def decoded(data: bytes) -> list[tuple[str, bytes, bytes, bytes]]:
    assert data[:4] == SELECTOR
    (rows,) = abi_decode(["(address,bytes,bytes4,bytes32)[]"], data[4:])
    return [(to_checksum_address(p), bytes(c), bytes(k), bytes(s)) for p, c, k, s in rows]


def cid(n: int) -> bytes:
    return b"\x01\x55\x12\x20" + n.to_bytes(32, "big")


def test_the_abi_has_anchor_many_with_its_bound(records: RecordsContract) -> None:
    (fn,) = [e for e in artifacts.load("Records").abi if e.get("name") == "anchor_many"]
    assert [i["type"] for i in fn["inputs"]] == ["tuple[]"]
    assert [c["type"] for c in fn["inputs"][0]["components"]] == [
        "address",
        "bytes",
        "bytes4",
        "bytes32",
    ]
    assert ANCHOR_MANY_MAX == 256  # Records.MAX_ANCHORS, checked on chain in test_records_many


def test_entries_are_split_into_consecutive_calls(records: RecordsContract) -> None:
    entries: list[AnchorEntry] = [(A, cid(i), "fhir:Observation", ZERO) for i in range(600)]
    calls = records.anchor_many_call(entries)
    sent = [decoded(c.data) for c in calls]
    assert [len(rows) for rows in sent] == [256, 256, 88]
    assert [c.label for c in calls] == [
        "anchor_many[0:256]",
        "anchor_many[256:512]",
        "anchor_many[512:600]",
    ]
    assert [r[1] for rows in sent for r in rows] == [cid(i) for i in range(600)]
    assert all(c.gas is None and c.to == records.address for c in calls)  # estimated when sent
    assert records.anchor_many_call([]) == []
    # the plan's own encoding is web3's, from the ABI
    rows = [(A, cid(i), kind_tag("fhir:Observation"), ZERO) for i in range(256)]
    assert calls[0].data == records.call_data("anchor_many", rows)


def test_each_call_groups_its_entries_by_patient_and_kind(records: RecordsContract) -> None:
    """Consent is checked once per run of one (patient, kind): the client makes the runs.
    The sort is stable, so a version still comes after the one it supersedes."""
    kinds = ["fhir:Observation", "fhir:Condition", "fhir:Observation", "fhir:Condition"]
    entries: list[AnchorEntry] = [
        (B if i % 3 else A, cid(i), kinds[i % 4], ZERO) for i in range(12)
    ]
    v1 = record_id(B, cid(1))  # entry 1: (B, Condition)
    entries.append((B, cid(99), "fhir:Condition", v1))
    (call,) = records.anchor_many_call(entries)
    rows = decoded(call.data)
    expected = sorted(entries, key=lambda e: (e[0], kind_tag(e[2])))
    assert [(p, c) for p, c, _, _ in rows] == [(p, bytes(c)) for p, c, _, _ in expected]
    runs = [(p, k) for i, (p, _, k, _) in enumerate(rows) if i == 0 or rows[i - 1][::2] != (p, k)]
    assert len(runs) == len({(p, k) for p, _, k, _ in rows}) == 4
    assert [r[1] for r in rows].index(cid(1)) < [r[1] for r in rows].index(cid(99))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param(("0x1234", cid(1), "fhir:Observation", ZERO), "entry 1: not an address"),
        pytest.param((A, b"", "fhir:Observation", ZERO), "entry 1: a binary CID has 1 to 64"),
        pytest.param((A, b"x" * 65, "fhir:Observation", ZERO), "entry 1: a binary CID has 1"),
        pytest.param((A, cid(1), "", ZERO), "entry 1: a record kind is a short"),
        pytest.param((A, cid(1), "fhir:Observation", b"\1" * 31), "entry 1: supersedes is a"),
        pytest.param((A, cid(0), "fhir:Observation", ZERO), "entry 1: the same record as entry 0"),
        pytest.param((A, cid(1)), "entry 1: give (patient, cid, kind, supersedes)"),
    ],
)
def test_bad_entries_are_refused_before_any_rpc(
    records: RecordsContract, entry: Any, message: str
) -> None:
    entries = [(A, cid(0), "fhir:Observation", ZERO), entry]
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        records.anchor_many_call(entries)


def test_supersede_order_is_checked_before_any_rpc(records: RecordsContract) -> None:
    v0 = record_id(A, cid(0))
    twice = [
        (A, cid(0), "document", ZERO),
        (A, cid(1), "document", v0),
        (A, cid(2), "document", v0),
    ]
    with pytest.raises(InvalidInputError, match="entry 2: supersedes the version entry 1"):
        records.anchor_many_call(twice)
    later = [(A, cid(1), "document", v0), (A, cid(0), "document", ZERO)]
    with pytest.raises(InvalidInputError, match="entry 0: supersedes entry 1, which comes after"):
        records.anchor_many_call(later)


def test_a_version_superseding_one_of_an_earlier_call_needs_anchor_many(
    records: RecordsContract,
) -> None:
    """anchor_many_call's calls are estimated together, before the earlier one is mined."""
    entries: list[AnchorEntry] = [(A, cid(i), "document", ZERO) for i in range(300)]
    near = [*entries, (A, cid(999), "document", record_id(A, cid(299)))]
    assert len(records.anchor_many_call(near)) == 2  # 299 and 300 are in the same call
    far = [*entries, (A, cid(999), "document", record_id(A, cid(3)))]
    with pytest.raises(InvalidInputError, match="use anchor_many"):
        records.anchor_many_call(far)


def test_waves_wait_only_for_versions_of_an_earlier_transaction() -> None:
    entries: list[AnchorEntry] = [(A, cid(i), "document", ZERO) for i in range(1100)]
    assert AnchorPlan.of(entries).waves == [[0, 1, 2, 3, 4]]
    entries[600] = (A, cid(10_000), "document", record_id(A, cid(300)))  # tx 2 needs tx 1
    entries[1050] = (A, cid(10_001), "document", record_id(A, cid(1030)))  # in its own tx
    assert AnchorPlan.of(entries).waves == [[0, 1], [2, 3, 4]]
    entries[900] = (A, cid(10_002), "document", record_id(A, cid(700)))  # tx 3 needs tx 2
    assert AnchorPlan.of(entries).waves == [[0, 1], [2], [3, 4]]
    assert AnchorPlan.of([]).waves == [] and AnchorPlan.of([]).transactions == []


def test_rounds_fill_up_to_four_blocks_each() -> None:
    assert ROUND_BLOCKS == 4
    assert rounds([9] * 13 + [2, 9], 30) == [list(range(14)), [14]]  # 119 of 120, then 9
    assert rounds([9] * 3, 100) == [[0, 1, 2]]
    assert rounds([150, 5], 30) == [[0], [1]]  # more than a round: alone (the node says no)
    assert rounds([], 30) == []


def test_a_refusal_names_the_entry_in_the_callers_list() -> None:
    entries: list[AnchorEntry] = [
        (B, cid(0), "document", ZERO),
        (A, cid(1), "fhir:Observation", ZERO),
        (B, cid(2), "fhir:Observation", ZERO),
        (A, cid(3), "document", ZERO),
    ]
    plan = AnchorPlan.of(entries)
    (order,) = plan.transactions
    assert order == sorted(range(4), key=lambda i: (entries[i][0], kind_tag(entries[i][2])))
    for position, index in enumerate(order):
        exc = RevertError(f"records: already anchored (entry {position})")
        error = plan.refusal(exc, 0, [7])
        assert isinstance(error, AnchorRefusedError)
        assert (error.index, error.reason, error.anchored) == (
            index,
            "records: already anchored",
            (7,),
        )
        assert str(error) == f"anchor_many entry {index} refused: records: already anchored"
    # reasons that name no entry (or one the call did not have) are left as they are
    for reason in (None, "records: empty cid", "records: empty cid (entry 4)"):
        plain = RevertError(reason)
        assert plan.refusal(plain, 0, []) is plain


_ROWS = st.lists(
    st.tuples(
        st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b)),
        st.binary(min_size=1, max_size=64),
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=32, max_size=32),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(rows=_ROWS)
def test_anchor_many_calldata_is_the_abi_encoding(
    rows: list[tuple[str, bytes, bytes, bytes]],
) -> None:
    """encode_rows writes the ABI encoding out by hand: it must be eth_abi's, byte for byte."""
    assert encode_rows(rows) == abi_encode(["(address,bytes,bytes4,bytes32)[]"], [rows])
