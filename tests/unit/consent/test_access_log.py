"""The access log's write-ahead and batching, against a stand-in ledger (no chain)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from medmesh.consent.access_log import MAX_BATCH, AccessLog, Entry
from medmesh.errors import RpcUnavailableError
from medmesh.ledger.contracts import Purpose
from tests.unit.consent.fakes import FakeLedger

PATIENT = "0x" + "aa" * 20
ACCESSOR = "0x1111111111111111111111111111111111111111"


def entry(at: int = 1_700_000_000) -> Entry:
    return Entry(PATIENT, ACCESSOR, os.urandom(32), Purpose.TREATMENT, at)


def as_rows(entries: list[Entry]) -> list[tuple[str, str, bytes, Purpose, int]]:
    return [(e.patient, e.accessor, e.record, e.purpose, e.at) for e in entries]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/gateway.db"


def test_entries_are_written_ahead_and_sent_after_a_restart(db: str) -> None:
    # Prepare: three allowed accesses, then the gateway "crashes" (no flush, no stop)
    ledger = FakeLedger()
    first = AccessLog(ledger, db)  # type: ignore[arg-type]
    entries = [entry(at) for at in (1, 2, 3)]
    for e in entries:
        first.allowed(e)
    assert first.pending() == 3

    # Execute: a new log on the same database sends them
    second = AccessLog(ledger, db)  # type: ignore[arg-type]
    assert second.pending() == 3
    assert second.flush() == 3

    # Assert: one transaction, encoded as web3 encodes it; nothing left to send
    (calls,) = ledger.sent
    assert [c.data for c in calls] == [ledger.consent.log_access_call(as_rows(entries)).data]
    assert calls[0].to == ledger.consent.address
    assert second.pending() == 0
    assert AccessLog(ledger, db).pending() == 0  # type: ignore[arg-type]


def test_a_flush_sends_its_batches_together(db: str) -> None:
    ledger = FakeLedger()
    log = AccessLog(ledger, db)  # type: ignore[arg-type]
    entries = [entry() for _ in range(2 * MAX_BATCH + 1)]
    for e in entries:
        log.allowed(e)

    assert log.flush() == len(entries)

    (calls,) = ledger.sent  # one transact_many: mined together
    assert len(calls) == 3
    assert calls[2].data == ledger.consent.log_access_call(as_rows(entries[-1:])).data
    assert log.sent == len(entries)


def test_a_failed_flush_keeps_every_entry(db: str) -> None:
    ledger = FakeLedger()
    log = AccessLog(ledger, db)  # type: ignore[arg-type]
    log.allowed(entry())
    ledger.fail = RpcUnavailableError("the chain is down")

    with pytest.raises(RpcUnavailableError):
        log.flush()

    assert log.pending() == 1
    assert AccessLog(ledger, db).pending() == 1  # type: ignore[arg-type]
    ledger.fail = None
    assert log.flush() == 1
    assert log.pending() == 0


def test_entries_allowed_during_a_flush_are_sent_next_not_dropped(db: str) -> None:
    ledger = FakeLedger()
    log = AccessLog(ledger, db)  # type: ignore[arg-type]
    early, late = entry(1), entry(2)
    log.allowed(early)
    ledger.before_send = lambda: log.allowed(late)  # arrives while the first batch is sent

    assert log.flush() == 2

    first, second = ledger.sent
    assert [c.data for c in first] == [ledger.consent.log_access_call(as_rows([early])).data]
    assert [c.data for c in second] == [ledger.consent.log_access_call(as_rows([late])).data]
    assert AccessLog(ledger, db).pending() == 0  # type: ignore[arg-type]


def test_refusals_of_a_whole_patient_keep_the_patient_and_old_databases_gain_the_column(
    tmp_path: Path,
) -> None:
    # A gateway.db made before refusals named a patient: one refusal in it
    path = tmp_path / "gateway.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE refusals (id INTEGER PRIMARY KEY AUTOINCREMENT, requester VARCHAR(42),"
            " record VARCHAR(66), purpose INTEGER, reason VARCHAR(64) NOT NULL, at FLOAT NOT NULL)"
        )
        old.execute("INSERT INTO refusals (requester, reason, at) VALUES (?, 'no_consent', 1.0)",
                    (ACCESSOR,))  # fmt: skip
    log = AccessLog(FakeLedger(), f"sqlite:///{path}")  # type: ignore[arg-type]
    log.refused(ACCESSOR, None, int(Purpose.TREATMENT), "no_consent", patient=PATIENT)
    record = os.urandom(32)
    log.refused(ACCESSOR, record, None, "no_consent")
    newest, whole, oldest = log.refusals()
    assert (newest["record"], newest["patient"]) == ("0x" + record.hex(), None)
    assert (whole["record"], whole["patient"]) == (None, PATIENT)
    assert (oldest["requester"], oldest["patient"], oldest["at"]) == (ACCESSOR, None, 1.0)
    AccessLog(FakeLedger(), f"sqlite:///{path}")  # type: ignore[arg-type]  # opens again
