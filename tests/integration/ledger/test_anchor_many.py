"""Records.anchor_many on a real Anvil: many records per transaction, every one of them in the
index; a refused entry named by its index in the caller's list, whether the refusal comes
from the estimate or from the mined transaction.

One chain is shared by the module; every test uses fresh wallets. The last test stops interval
mining for a while (see ``helpers.mining_paused``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from medmesh.identity import Wallet
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import (
    ANCHOR_MANY_MAX,
    ZERO,
    AnchoredRecord,
    AnchorEntry,
    AnchorRefusedError,
    Purpose,
    Scope,
    kind_tag,
    record_id,
)
from medmesh.ledger.indexer import Indexer
from tests.integration.ledger.helpers import HOUR, Net, mining_paused, nonce, wait_until

pytestmark = pytest.mark.slow

KINDS = ("fhir:Observation", "fhir:Condition", "fhir:Encounter")


def cid() -> bytes:
    return b"\x01\x71\x12\x20" + os.urandom(32)


@pytest.fixture
def indexer(net: Net, tmp_path: Path) -> Iterator[Indexer]:
    ix = Indexer(net.ledger(), f"sqlite:///{tmp_path / 'index.db'}")
    yield ix
    ix.engine.dispose()


def provider_for(net: Net, patient: Wallet, kinds: Scope, *, durable: bool = False) -> Ledger:
    """A registered wallet holding ``patient``'s CONTRIBUTE consent for ``kinds``."""
    (doctor,) = net.wallets(1)
    ledger = net.ledger(doctor, durable=durable)
    ledger.registry.register(doctor.encryption_public_key.to_bytes())
    net.ledger(patient).consent.grant(
        doctor.address, kinds, Purpose.CONTRIBUTE, int(time.time()) + HOUR
    )
    return ledger


def test_the_indexer_sees_every_record_of_anchor_many(net: Net, indexer: Indexer) -> None:
    patient, other = net.wallets(2)
    own = net.ledger(patient, durable=True)
    doctor = provider_for(net, patient, Scope.all(), durable=True)
    assert doctor.address is not None

    # the patient's own 600 records: three transactions, one of them (the last) in a second
    # round, because its first entry supersedes a record of the first transaction
    entries: list[AnchorEntry] = [(patient.address, cid(), KINDS[i % 3], ZERO) for i in range(600)]
    entries[512] = (patient.address, cid(), KINDS[2], record_id(patient.address, entries[2][1]))
    entries[513] = (patient.address, cid(), KINDS[0], record_id(patient.address, entries[0][1]))
    mine = own.records.anchor_many(entries)
    # the provider's: 300 for the patient in mixed kinds, its own in between, one new version
    # of a record the patient anchored above
    theirs: list[AnchorEntry] = [
        (patient.address if i % 5 else doctor.address, cid(), KINDS[i % 3], ZERO)
        for i in range(300)
    ]
    theirs[7] = (patient.address, cid(), KINDS[1], record_id(patient.address, entries[1][1]))
    contributed = doctor.records.anchor_many(theirs)

    assert [a.record for a in mine] == [record_id(p, c) for p, c, _, _ in entries]
    assert [a.record for a in contributed] == [record_id(p, c) for p, c, _, _ in theirs]
    assert len({a.tx_hash for a in mine}) == 3 and len({a.tx_hash for a in contributed}) == 2
    assert mine[512].block_number > mine[0].block_number  # sent once the first was mined

    indexer.sync()
    everything = entries + theirs
    done: list[AnchoredRecord] = mine + contributed
    authors = [patient.address] * 600 + [doctor.address] * 300
    superseded = {e[3] for e in everything if e[3] != ZERO}
    for (p, c, kind, previous), anchored, author in zip(everything, done, authors, strict=True):
        row = indexer.record(anchored.record)
        assert row is not None, anchored
        assert (row.patient, row.kind, row.cid, row.author) == (p, kind_tag(kind), c, author)
        assert row.supersedes == (previous if previous != ZERO else None)
        assert row.superseded == (anchored.record in superseded)
    history = indexer.records(patient.address, include_history=True)
    assert len(history) == 600 + 240
    assert len(indexer.records(patient.address)) == 600 + 240 - 3  # three versions replaced
    assert indexer.records(other.address) == []
    # and each is a real anchor: the chain agrees with the index
    for anchored in (mine[0], mine[513], contributed[7]):
        assert own.records.anchor_of(anchored.record).exists


def test_a_refused_entry_is_named_and_nothing_is_sent(net: Net) -> None:
    (patient,) = net.wallets(1)
    doctor = provider_for(net, patient, Scope.kind("fhir:Observation"))
    assert doctor.sender is not None
    entries: list[AnchorEntry] = [
        (patient.address, cid(), "fhir:Observation", ZERO) for _ in range(ANCHOR_MANY_MAX + 50)
    ]
    entries[270] = (patient.address, cid(), "fhir:Condition", ZERO)  # no consent for this kind
    before = nonce(doctor.rpc, doctor.sender.address)

    with pytest.raises(AnchorRefusedError) as refused:
        doctor.records.anchor_many(entries)

    assert refused.value.index == 270
    assert refused.value.reason == "records: no consent to contribute"
    assert refused.value.anchored == ()
    assert nonce(doctor.rpc, doctor.sender.address) == before  # every call estimated first
    assert not doctor.records.anchor_of(record_id(patient.address, entries[0][1])).exists
    # without the refused entry, the rest goes through
    del entries[270]
    assert len(doctor.records.anchor_many(entries)) == ANCHOR_MANY_MAX + 49

    with pytest.raises(AnchorRefusedError, match="entry 1 refused: records: already anchored"):
        doctor.records.anchor_many([(patient.address, cid(), "fhir:Observation", ZERO), entries[5]])


def test_thousands_of_entries_in_rounds_of_a_block(net: Net) -> None:
    """5,400 entries: 22 transactions (2.9 MB of call data, more than Anvil takes in one
    request) filling block after block. The last one is smaller: Anvil would drop it once a
    full block had made it skip the one before (its nonce is then too high), unless its gas
    limit is no lower than theirs."""
    (patient,) = net.wallets(1)
    ledger = net.ledger(patient)
    entries: list[AnchorEntry] = [
        (patient.address, cid(), KINDS[i % 3], ZERO) for i in range(5_400)
    ]
    anchored = ledger.records.anchor_many(entries, timeout=120.0)

    assert [a.record for a in anchored] == [record_id(p, c) for p, c, _, _ in entries]
    blocks = sorted({a.block_number for a in anchored})
    assert len({a.tx_hash for a in anchored}) == 22
    gas_limit = int(net.rpc().call("eth_getBlockByNumber", "latest", False)["gasLimit"], 16)
    assert len(blocks) >= 22 * 7_000_000 // gas_limit  # about 7.4M gas a transaction
    assert all(ledger.records.anchor_of(anchored[i].record).exists for i in (0, 2_700, 5_399))


def test_a_call_refused_when_mined_is_named(net: Net) -> None:
    """The consent is revoked after the estimate but before the block: the revoke (with a
    higher tip) is mined first, so the second transaction reverts; the first is anchored."""
    (patient,) = net.wallets(1)
    doctor = provider_for(net, patient, Scope.kind("fhir:Observation"))
    assert doctor.sender is not None
    me = doctor.sender.address
    # transaction 1: the doctor's own records; transaction 2: its own and the patient's,
    # interleaved (the call sends them grouped, so the contract's index is not the caller's)
    entries: list[AnchorEntry] = [(me, cid(), "document", ZERO) for _ in range(ANCHOR_MANY_MAX)]
    entries += [
        (patient.address if i % 2 else me, cid(), "fhir:Observation", ZERO) for i in range(20)
    ]
    first_patient_entry = ANCHOR_MANY_MAX + 1
    rpc = net.rpc()
    outcome: dict[str, object] = {}

    def anchor() -> None:
        try:
            outcome["result"] = doctor.records.anchor_many(entries)
        except Exception as exc:  # handed to the test's thread
            outcome["error"] = exc

    before = nonce(rpc, me)
    with mining_paused(rpc):
        worker = threading.Thread(target=anchor)
        worker.start()
        wait_until(lambda: nonce(rpc, me) == before + 2, 30.0, "both anchor_many sent")
        revoke = net.ledger(patient).consent.tx(
            "revoke", to_checksum_address(me), Scope.kind("fhir:Observation").word
        )
        _send_with_tip(net, patient, revoke.data, revoke.to)
        rpc.call("evm_mine")
        worker.join(60.0)

    error = outcome.get("error")
    assert isinstance(error, AnchorRefusedError), outcome
    assert error.index == first_patient_entry
    assert error.reason == "records: no consent to contribute"
    assert error.anchored == tuple(range(ANCHOR_MANY_MAX))
    assert doctor.records.anchor_of(record_id(me, entries[0][1])).exists
    assert not doctor.records.anchor_of(record_id(me, entries[-2][1])).exists


def _send_with_tip(net: Net, wallet: Wallet, data: bytes, to: str | None) -> str:
    """Send a call with a priority fee far above the others', so it is mined first."""
    rpc = net.rpc()
    base = int(rpc.call("eth_getBlockByNumber", "latest", False)["baseFeePerGas"], 16)
    tip = 10**11
    tx = {
        "to": to,
        "data": data,
        "value": 0,
        "chainId": int(rpc.call("eth_chainId"), 16),
        "nonce": nonce(rpc, wallet.address),
        "gas": 200_000,
        "maxFeePerGas": 2 * base + tip,
        "maxPriorityFeePerGas": tip,
    }
    return str(rpc.call("eth_sendRawTransaction", "0x" + wallet.sign_transaction(tx).hex()))


def test_durable_false_leaves_the_wait_for_durability_to_the_caller(net: Net) -> None:
    (patient,) = net.wallets(1)
    waited: list[int] = []
    ledger = Ledger(net.url, net.book, signer=patient, durable=waited.append)
    net.clients.append(ledger)
    entries: list[AnchorEntry] = [(patient.address, cid(), KINDS[0], ZERO) for _ in range(3)]
    mined = ledger.records.anchor_many(entries, durable=False)
    assert waited == []  # mined, not waited for
    assert all(ledger.records.anchor_of(a.record).exists for a in mined)
    ledger.make_durable(max(a.block_number for a in mined))
    assert waited == [mined[-1].block_number]
    more = ledger.records.anchor_many([(patient.address, cid(), KINDS[1], ZERO)])
    assert waited == [mined[-1].block_number, more[0].block_number]  # the default waits


def test_on_sent_comes_once_after_the_last_transaction_is_sent(net: Net) -> None:
    (patient,) = net.wallets(1)
    ledger = net.ledger(patient)
    entries: list[AnchorEntry] = [(patient.address, cid(), KINDS[0], ZERO) for _ in range(300)]
    # the last entry supersedes the first: a second wave, sent once the first is mined
    entries[299] = (patient.address, cid(), KINDS[0], record_id(patient.address, entries[0][1]))
    seen: list[bool] = []

    def on_sent() -> None:  # (whether the last is mined yet depends on the block clock)
        seen.append(ledger.records.anchor_of(record_id(patient.address, entries[0][1])).exists)

    done = ledger.records.anchor_many(entries, on_sent=on_sent)
    assert len(done) == 300
    assert seen == [True]  # once, after the first wave was mined and the last one sent
