"""The indexer following a real chain into SQLite and into a real PostgreSQL.

A module-scoped scenario writes every kind of event once (registrations, roles, anchors, a
superseding anchor, an erasure, grants with and without capsule, a short-lived grant, a
revocation, a break-glass, gateway access logs); the tests then check the indexer's answers
against values taken from the transactions' own receipts. Tests that add events use fresh
wallets, so the scenario's answers never change. The last tests stop interval mining for a
while (see ``helpers.mining_paused``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from eth_utils.crypto import keccak

from medmesh.errors import ConfigError
from medmesh.identity import Wallet
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import BREAK_GLASS_SCOPE, Purpose, Role, Scope, kind_tag, record_id
from medmesh.ledger.deploy import BREAK_GLASS_SECONDS
from medmesh.ledger.indexer import (
    SCHEMA_VERSION,
    AccessRow,
    GrantRow,
    Indexer,
    RecordRow,
    UInt64,
)
from medmesh.ledger.indexer import metadata as indexer_schema
from medmesh.ledger.tx import Call, Receipt
from tests.integration.ledger.helpers import (
    HOUR,
    Net,
    block_number,
    mining_paused,
    running_net,
    wait_until,
)

pytestmark = pytest.mark.slow

ALL = bytes(32)
CAPSULE = b"\x05" * 32
REASON = keccak(b"unconscious on arrival")


def cid(n: int) -> bytes:
    return b"\x01\x70\x12\x20" + bytes([n]) * 32


def send_all(batches: Sequence[tuple[Ledger, list[Call]]]) -> list[list[Receipt]]:
    """Send each ledger's calls (one pipelined batch per account), then wait for all of them."""
    sent = []
    for ledger, calls in batches:
        assert ledger.sender is not None
        sent.append((ledger.sender, ledger.sender.send_many(calls), calls))
    return [sender.wait(hashes, calls=calls) for sender, hashes, calls in sent]


def consent_event(ledger: Ledger, receipt: Receipt) -> tuple[str, int, dict[str, Any]]:
    """(name, log index, decoded args) of the one Consent event in ``receipt``."""
    (log,) = [r for r in receipt.logs if r["address"].lower() == ledger.consent.address.lower()]
    for name in ("Granted", "Revoked", "BreakGlass"):
        decoded = ledger.consent.events(receipt, name)
        if decoded:
            return name, int(log["logIndex"], 16), decoded[0]
    raise AssertionError(f"no consent event in {receipt.tx_hash}")


@dataclass
class Scenario:
    patient: Wallet
    other: Wallet  # a second patient: its rows must never show up in the first one's answers
    doctor: Wallet
    researcher: Wallet
    gateway: Wallet
    governance: Wallet
    expiry: int
    short_expiry: int
    break_glass_expiry: int
    grants: dict[str, GrantRow]
    records: dict[str, RecordRow]
    accesses: list[AccessRow]  # of the patient, newest first
    other_accesses: list[AccessRow]
    history: list[dict[str, Any]]  # the patient's consent_history
    other_history: list[dict[str, Any]]


@pytest.fixture(scope="module")
def scenario(net: Net) -> Scenario:
    patient, other, doctor, researcher, gateway = net.wallets(5)
    ledgers = {w.address: net.ledger(w) for w in (patient, other, doctor, researcher, gateway)}
    gov = net.ledger(net.governance)
    P, Q, D, G = (ledgers[w.address] for w in (patient, other, doctor, gateway))
    rpc = net.rpc()

    def timestamp(block: int) -> int:
        return int(rpc.call("eth_getBlockByNumber", hex(block), False)["timestamp"], 16)

    # 1. governance admits the provider and the gateway
    gov.transact_many(
        [
            gov.registry.tx("admit", doctor.address, int(Role.PROVIDER)),
            gov.registry.tx("admit", gateway.address, int(Role.GATEWAY)),
        ]
    )

    # 2. everyone registers; the patients anchor records
    def register(w: Wallet) -> Call:
        return ledgers[w.address].registry.tx("register", w.encryption_public_key.to_bytes(), "")

    c1, c2, c3, c1v2, cq = cid(1), cid(2), cid(3), cid(4), cid(9)
    (p_anchors, q_anchors, *_) = send_all(
        [
            (
                P,
                [
                    register(patient),
                    P.records.anchor_call(c1, "fhir:Observation"),
                    P.records.anchor_call(c2, "dicom:study"),
                    P.records.anchor_call(c3, "document"),
                ],
            ),
            (Q, [register(other), Q.records.anchor_call(cq, "fhir:Observation")]),
            (D, [register(doctor)]),
            (ledgers[researcher.address], [register(researcher)]),
            (G, [register(gateway)]),
        ]
    )

    # 3. a new version, an erasure, grants; a break-glass; access logs
    expiry = int(time.time()) + HOUR
    short_expiry = int(time.time()) + 3
    at = int(time.time())
    access_entries = [
        (patient.address, doctor.address, record_id(patient.address, c1v2), Purpose.TREATMENT, at),
        (
            patient.address,
            researcher.address,
            record_id(patient.address, c2),
            Purpose.RESEARCH,
            at + 1,
        ),
        (other.address, doctor.address, record_id(other.address, cq), Purpose.EMERGENCY, at + 2),
    ]
    p3, d3, g3 = send_all(
        [
            (
                P,
                [
                    P.records.anchor_call(c1v2, "fhir:Observation", record_id(patient.address, c1)),
                    P.records.tx("erase", record_id(patient.address, c3)),
                    P.consent.grant_call(
                        doctor.address, Scope.all(), Purpose.TREATMENT, expiry, CAPSULE
                    ),
                    P.consent.grant_call(
                        researcher.address, Scope.kind("dicom:study"), Purpose.RESEARCH, expiry
                    ),
                    P.consent.grant_call(
                        doctor.address, Scope.kind("document"), Purpose.PAYMENT, short_expiry
                    ),
                    P.consent.grant_call(
                        researcher.address, Scope.all(), Purpose.OPERATIONS, expiry
                    ),
                ],
            ),
            (D, [D.consent.tx("break_glass", other.address, REASON)]),
            (G, [G.consent.log_access_call(access_entries)]),
        ]
    )

    # 4. a revocation; one more access log
    late = (
        patient.address,
        doctor.address,
        record_id(patient.address, c1),
        Purpose.TREATMENT,
        at + 3,
    )
    p4, g4 = send_all(
        [
            (P, [P.consent.tx("revoke", researcher.address, ALL)]),
            (G, [G.consent.log_access_call([late])]),
        ]
    )

    # expected answers, from the receipts
    def record_row(c: bytes, owner: Wallet, kind: str, receipt: Receipt, **flags: Any) -> RecordRow:
        return RecordRow(
            record_id(owner.address, c), owner.address, kind_tag(kind), flags.pop("supersedes", None),
            owner.address, c, timestamp(receipt.block_number),
            flags.get("superseded", False), flags.get("erased", False),
        )  # fmt: skip

    records = {
        "c1": record_row(c1, patient, "fhir:Observation", p_anchors[1], superseded=True),
        "c2": record_row(c2, patient, "dicom:study", p_anchors[2]),
        "c3": record_row(c3, patient, "document", p_anchors[3], erased=True),
        "c1v2": record_row(
            c1v2, patient, "fhir:Observation", p3[0], supersedes=record_id(patient.address, c1)
        ),
        "cq": record_row(cq, other, "fhir:Observation", q_anchors[1]),
    }

    bg_expiry = timestamp(d3[0].block_number) + BREAK_GLASS_SECONDS
    p, d, r = patient.address, doctor.address, researcher.address
    grants = {
        "doctor-all": GrantRow(p, d, ALL, Purpose.TREATMENT, expiry, CAPSULE, False),
        "researcher-dicom": GrantRow(
            p, r, Scope.kind("dicom:study").word, Purpose.RESEARCH, expiry, None, False
        ),
        "doctor-document": GrantRow(
            p, d, Scope.kind("document").word, Purpose.PAYMENT, short_expiry, None, False
        ),
        "break-glass": GrantRow(
            other.address, d, BREAK_GLASS_SCOPE, Purpose.EMERGENCY, bg_expiry, None, True
        ),
    }

    def access_row(entry: tuple[str, str, bytes, Purpose, int], receipt: Receipt) -> AccessRow:
        return AccessRow(
            entry[0], entry[1], entry[2], entry[3], entry[4], gateway.address, receipt.tx_hash
        )

    accesses = [
        access_row(late, g4[0]),
        access_row(access_entries[1], g3[0]),
        access_row(access_entries[0], g3[0]),
    ]
    other_accesses = [access_row(access_entries[2], g3[0])]

    def history_entry(receipt: Receipt, patient_address: str) -> dict[str, Any]:
        name, index, args = consent_event(P, receipt)
        event = {"Granted": "granted", "Revoked": "revoked", "BreakGlass": "break_glass"}[name]
        grantee = args["provider"] if event == "break_glass" else args["grantee"]
        scope = BREAK_GLASS_SCOPE if event == "break_glass" else args["scope"]
        purposes = {"granted": args.get("purposes"), "break_glass": int(Purpose.EMERGENCY)}
        return {
            "block": receipt.block_number,
            "log_index": index,
            "event": event,
            "patient": patient_address,
            "grantee": grantee,
            "scope": "0x" + bytes(scope).hex(),
            "purposes": purposes.get(event),
            "expiry": args.get("expiry"),
            "capsule": "0x" + bytes(args["capsule"]).hex()
            if event == "granted" and any(args["capsule"])
            else None,
            "at": timestamp(receipt.block_number),
            "tx": receipt.tx_hash,
        }

    history = [history_entry(rc, p) for rc in (*p3[2:], p4[0])]
    other_history = [history_entry(d3[0], other.address)]
    assert [h["event"] for h in history] == ["granted"] * 4 + ["revoked"]
    assert other_history[0]["expiry"] == bg_expiry

    return Scenario(
        patient, other, doctor, researcher, gateway, net.governance, expiry, short_expiry,
        bg_expiry, grants, records, accesses, other_accesses, history, other_history,
    )  # fmt: skip


@pytest.fixture
def indexers() -> Iterator[list[Indexer]]:
    """Indexers a test opens, closed (connections released) at its end."""
    opened: list[Indexer] = []
    yield opened
    for ix in opened:
        ix.close()


def open_indexer(opened: list[Indexer], ledger: Ledger, url: str, **kwargs: Any) -> Indexer:
    ix = Indexer(ledger, url, **kwargs)
    opened.append(ix)
    return ix


def test_follows_every_event_and_answers_queries(
    net: Net, scenario: Scenario, db_url: str, indexers: list[Indexer]
) -> None:
    s = scenario
    ix = open_indexer(indexers, net.ledger(), db_url)
    assert ix.indexed_block() is None
    first = ix.sync()
    assert first > 0
    assert ix.sync() == 0  # nothing new
    assert ix.indexed_block() is not None and ix.indexed_block() >= s.history[-1]["block"]

    p = s.patient.address
    g = s.grants
    assert set(ix.grants(patient=p)) == {
        g["doctor-all"],
        g["researcher-dicom"],
        g["doctor-document"],
    }
    wait_until(lambda: time.time() > s.short_expiry, 5.0, "the short grant to expire")
    now = time.time()
    assert set(ix.grants(patient=p, active_at=now)) == {g["doctor-all"], g["researcher-dicom"]}
    assert set(ix.grants(patient=p, active_at=s.short_expiry - 1)) == {
        g["doctor-all"],
        g["researcher-dicom"],
        g["doctor-document"],
    }
    assert ix.grants(patient=p, active_at=s.expiry) == []  # expiry is exclusive, as on chain
    assert ix.grants(patient=s.other.address, active_at=now) == [g["break-glass"]]
    assert ix.grants(grantee=s.researcher.address) == [g["researcher-dicom"]]
    assert set(ix.grants(grantee=s.doctor.address, active_at=now)) == {
        g["doctor-all"],
        g["break-glass"],
    }
    assert ix.capsule_ref(p, s.doctor.address, ALL) == CAPSULE
    assert ix.capsule_refs(p) == [CAPSULE]  # every digest ever referenced, once
    assert ix.capsule_refs(s.other.address) == []
    assert ix.capsule_ref(p, s.researcher.address, ALL) is None  # revoked

    assert ix.accesses(patient=p) == s.accesses
    assert ix.accesses(patient=s.other.address) == s.other_accesses
    assert ix.accesses(patient=p, accessor=s.researcher.address) == [s.accesses[1]]
    assert ix.accesses(record=record_id(p, cid(1))) == [s.accesses[0]]
    assert ix.accesses(patient=p, limit=1) == [s.accesses[0]]
    assert ix.accesses(patient=p, since=s.accesses[1].at) == s.accesses[:2]

    r = s.records
    assert sorted(ix.records(p), key=lambda x: x.record) == sorted(
        [r["c2"], r["c3"], r["c1v2"]], key=lambda x: x.record
    )
    assert sorted(ix.records(p, include_history=True), key=lambda x: x.record) == sorted(
        [r["c1"], r["c2"], r["c3"], r["c1v2"]], key=lambda x: x.record
    )
    assert ix.records(s.other.address) == [r["cq"]]
    assert ix.record(record_id(p, cid(1))) == r["c1"]
    assert ix.record(record_id(p, cid(77))) is None

    assert ix.consent_history(p) == s.history
    assert ix.consent_history(s.other.address) == s.other_history

    key = lambda w: w.encryption_public_key.to_bytes()  # noqa: E731
    assert ix.participant(p) == (Role.PATIENT, key(s.patient), "")
    assert ix.participant(s.doctor.address) == (Role.PROVIDER, key(s.doctor), "")
    assert ix.participant(s.gateway.address) == (Role.GATEWAY, key(s.gateway), "")
    assert ix.participant(s.governance.address) == (Role.GOVERNANCE, bytes(32), "")

    # a rebuild from scratch gives the same tables
    counts = ix.counts()
    assert ix.rebuild() == first
    assert ix.counts() == counts
    assert ix.consent_history(p) == s.history


def test_reverted_transactions_leave_no_trace(
    net: Net, scenario: Scenario, tmp_path: Path, indexers: list[Indexer]
) -> None:
    someone, stranger = net.wallets(2)
    ledger = net.ledger(someone)
    assert ledger.sender is not None
    ix = open_indexer(indexers, ledger, f"sqlite:///{tmp_path / 'index.db'}")
    ix.sync()
    counts = ix.counts()

    # explicit gas limits skip the estimate, so these reach the chain and revert there
    calls = [
        dataclasses.replace(ledger.consent.tx("revoke", stranger.address, ALL), gas=200_000),
        dataclasses.replace(
            ledger.records.anchor_call(cid(20), "document", record_id(someone.address, cid(21))),
            gas=200_000,
        ),
        dataclasses.replace(
            ledger.consent.log_access_call(
                [(someone.address, stranger.address, ALL, Purpose.TREATMENT, 1)]
            ),
            gas=200_000,
        ),
    ]
    receipts = ledger.sender.wait(ledger.sender.send_many(calls), check=False)
    assert [(r.status, r.logs) for r in receipts] == [(0, [])] * 3

    assert ix.sync() == 0
    assert ix.indexed_block() is not None
    assert ix.indexed_block() >= max(r.block_number for r in receipts)
    assert ix.counts() == counts
    assert ix.consent_history(someone.address) == []
    assert ix.records(someone.address) == []
    assert ix.accesses(patient=someone.address) == []


class Crash(Exception):
    pass


def test_restart_safety_no_duplicates(
    net: Net, scenario: Scenario, db_url: str, tmp_path: Path, indexers: list[Indexer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    someone, friend = net.wallets(2)
    ledger = net.ledger(someone)
    first = open_indexer(indexers, ledger, db_url)
    applied = first.sync()
    assert applied > 0
    counts = first.counts()
    first.close()

    # a new process on the same database resumes at its cursor: nothing is applied twice
    second = open_indexer(indexers, ledger, db_url)
    assert second.indexed_block() is not None
    assert second.sync() == 0
    assert second.counts() == counts

    expiry = int(time.time()) + HOUR
    ledger.transact_many(
        [
            ledger.consent.grant_call(friend.address, Scope.all(), Purpose.TREATMENT, expiry),
            ledger.consent.grant_call(
                friend.address, Scope.kind("document"), Purpose.PAYMENT, expiry
            ),
        ]
    )

    # it dies in the middle of a range: the range's transaction leaves nothing behind
    cursor = second.indexed_block()
    calls = []

    def crash_on_second_grant(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        if len(calls) == 2:
            raise Crash
        Indexer._on_Granted(second, *args, **kwargs)

    monkeypatch.setattr(second, "_on_Granted", crash_on_second_grant)
    with pytest.raises(Crash):
        second.sync()
    assert second.indexed_block() == cursor
    assert second.counts() == counts
    assert second.consent_history(someone.address) == []

    third = open_indexer(indexers, ledger, db_url)
    assert third.sync() == 2
    after = third.counts()
    assert after == {
        **counts,
        "grants": counts["grants"] + 2,
        "consent_log": counts["consent_log"] + 2,
    }
    assert [e["event"] for e in third.consent_history(someone.address)] == ["granted", "granted"]

    fresh = open_indexer(indexers, ledger, f"sqlite:///{tmp_path / 'fresh.db'}")
    assert fresh.sync() == applied + 2
    assert fresh.counts() == after
    assert fresh.consent_history(someone.address) == third.consent_history(someone.address)
    assert third.rebuild() == applied + 2
    assert third.counts() == after


def test_rebuilds_when_the_block_at_its_cursor_changed(
    net: Net, scenario: Scenario, tmp_path: Path, indexers: list[Indexer]
) -> None:
    someone, friend = net.wallets(2)
    ledger = net.ledger(someone)
    assert ledger.sender is not None
    ix = open_indexer(indexers, ledger, f"sqlite:///{tmp_path / 'index.db'}")
    ix.sync()
    before = ix.counts()

    snapshot = net.admin.call("evm_snapshot")
    expiry = int(time.time()) + HOUR
    lost = ledger.consent.grant(friend.address, Scope.all(), Purpose.TREATMENT, expiry)
    lost_block = net.admin.call("eth_getBlockByNumber", hex(lost.block_number), False)
    ix.sync()
    cursor = ix.indexed_block()
    assert cursor is not None and cursor >= lost.block_number
    assert len(ix.grants(patient=someone.address)) == 1

    # the chain drops the grant's block and grows another history past the cursor
    assert net.admin.call("evm_revert", snapshot) is True
    ledger.sender.resync()  # its nonce went back too
    kept = ledger.consent.grant(friend.address, Scope.kind("document"), Purpose.RESEARCH, expiry)
    wait_until(lambda: block_number(net.admin) > cursor, 10.0, "the chain to pass the cursor")
    replaced = net.admin.call("eth_getBlockByNumber", hex(lost.block_number), False)
    assert replaced["hash"] != lost_block["hash"]
    assert lost.tx_hash in lost_block["transactions"]
    assert lost.tx_hash not in replaced["transactions"]
    assert net.admin.call("eth_getTransactionReceipt", lost.tx_hash) is None

    ix.sync()
    assert ix.grants(patient=someone.address) == [
        GrantRow(
            someone.address, friend.address, Scope.kind("document").word, Purpose.RESEARCH,
            expiry, None, False,
        )
    ]  # fmt: skip
    assert [e["tx"] for e in ix.consent_history(someone.address)] == [kept.tx_hash]
    assert ix.counts() == {
        **before,
        "grants": before["grants"] + 1,
        "consent_log": before["consent_log"] + 1,
    }


def test_confirmations_hold_back_the_newest_blocks(
    net: Net, scenario: Scenario, tmp_path: Path, indexers: list[Indexer]
) -> None:
    someone, friend = net.wallets(2)
    ledger = net.ledger(someone)
    assert ledger.sender is not None
    ix = open_indexer(indexers, ledger, f"sqlite:///{tmp_path / 'index.db'}", confirmations=2)
    expiry = int(time.time()) + HOUR
    with mining_paused(net.admin):
        net.admin.call("evm_mine")
        net.admin.call("evm_mine")
        ix.sync()  # everything before the pause
        tx = ledger.sender.send(
            ledger.consent.grant_call(friend.address, Scope.all(), Purpose.TREATMENT, expiry)
        )
        net.admin.call("evm_mine")
        (receipt,) = ledger.sender.wait([tx])
        n = receipt.block_number
        assert block_number(net.admin) == n

        assert ix.sync() == 0
        assert ix.indexed_block() == n - 2
        assert ix.grants(patient=someone.address) == []

        net.admin.call("evm_mine")
        assert ix.sync() == 0
        assert ix.indexed_block() == n - 1
        assert ix.grants(patient=someone.address) == []

        net.admin.call("evm_mine")
        assert ix.sync() == 1
        assert ix.indexed_block() == n
        assert ix.grants(patient=someone.address) == [
            GrantRow(someone.address, friend.address, ALL, Purpose.TREATMENT, expiry, None, False)
        ]


@pytest.fixture(scope="module")
def forever_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """A chain of its own: once it holds the values below, indexing it fails (see the test)."""
    with running_net(tmp_path_factory.mktemp("forever")) as n:
        yield n


def test_indexes_grants_that_never_expire(
    forever_net: Net, db_url: str, indexers: list[Indexer]
) -> None:
    patient, doctor, gateway = forever_net.wallets(3)
    gov = forever_net.ledger(forever_net.governance)
    gov.registry.admit(gateway.address, Role.GATEWAY)
    ledger = forever_net.ledger(patient)
    gw = forever_net.ledger(gateway)
    forever = 2**64 - 1
    p, d = patient.address, doctor.address
    entry = (p, d, record_id(p, cid(1)), Purpose.TREATMENT, forever)
    send_all(
        [
            (ledger, [ledger.consent.grant_call(d, Scope.all(), Purpose.TREATMENT, forever)]),
            (gw, [gw.consent.log_access_call([entry])]),
        ]
    )
    assert ledger.consent.grant_of(p, d, Scope.all()) == (Purpose.TREATMENT, forever)

    ix = open_indexer(indexers, ledger, db_url)
    try:
        ix.sync()  # signed BIGINT columns: OverflowError (SQLite) / DataError (PostgreSQL)
    except (OverflowError, sa.exc.DataError) as exc:
        raise AssertionError(f"the indexer cannot store 2**64-1: {exc!r}") from exc
    assert ix.grants(patient=p, active_at=time.time()) == [
        GrantRow(p, d, ALL, Purpose.TREATMENT, forever, None, False)
    ]
    assert [a.at for a in ix.accesses(patient=p)] == [forever]
    # and compared in SQL, at both ends of the range
    assert ix.grants(patient=p, active_at=forever - 1) == ix.grants(patient=p)
    assert ix.grants(patient=p, active_at=forever) == []
    assert ix.grants(patient=p, active_at=2.0**70) == []
    assert ix.grants(patient=p, active_at=-1) == ix.grants(patient=p)
    assert [a.at for a in ix.accesses(patient=p, since=forever)] == [forever]
    assert ix.accesses(patient=p, since=2**64) == []
    assert ix.accesses(patient=p, since=-1) == ix.accesses(patient=p)


def _write_schema_1(url: str, chain_id: int, registry: str, block: int, block_hash: str) -> None:
    """The first indexer's tables (uint64 fields in BIGINT, no schema_version table), with a
    cursor at ``block`` of the current deployment and one row it had indexed."""
    old = sa.MetaData()
    for table in indexer_schema.sorted_tables:
        if table.name != "schema_version":
            table.to_metadata(old)
    for table in old.tables.values():
        for column in table.columns:
            if isinstance(column.type, UInt64):
                column.type = sa.BigInteger()
    engine = sa.create_engine(url)
    try:
        old.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                old.tables["cursor"]
                .insert()
                .values(
                    id=1, chain_id=chain_id, registry=registry, block=block, block_hash=block_hash
                )
            )
            conn.execute(
                old.tables["batches"]
                .insert()
                .values(root="0x" + "ab" * 32, author="0x" + "00" * 20, count=1, block=block)
            )
    finally:
        engine.dispose()


def test_an_index_of_the_first_schema_is_built_again(
    net: Net, scenario: Scenario, db_url: str, tmp_path: Path, indexers: list[Indexer]
) -> None:
    ledger = net.ledger()
    head = block_number(net.admin)
    head_hash = net.admin.call("eth_getBlockByNumber", hex(head), False)["hash"]
    _write_schema_1(db_url, net.book.chain_id, net.book.contracts["Registry"], head, head_hash)

    ix = open_indexer(indexers, ledger, db_url)
    # the old cursor (which would have skipped everything up to the head) went with the tables
    assert ix.indexed_block() is None
    assert set(ix.counts().values()) == {0}
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version FROM schema_version")).all() == [
                (SCHEMA_VERSION,)
            ]
    finally:
        engine.dispose()
    applied = ix.sync(until=head)
    fresh = open_indexer(indexers, ledger, f"sqlite:///{tmp_path / 'fresh.db'}")
    assert applied == fresh.sync(until=head) > 0
    assert ix.counts() == fresh.counts()
    assert ix.grants() == fresh.grants()
    ix.close()

    # opened again, it is the current schema: kept as it is
    again = open_indexer(indexers, ledger, db_url)
    assert again.indexed_block() == head
    assert again.counts() == fresh.counts()


def test_an_index_of_a_newer_schema_is_refused(
    net: Net, db_url: str, indexers: list[Indexer]
) -> None:
    open_indexer(indexers, net.ledger(), db_url).close()
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE schema_version SET version = 99"))
    finally:
        engine.dispose()
    with pytest.raises(ConfigError, match="schema 99, newer than this medmesh"):
        Indexer(net.ledger(), db_url)
