"""The gateway's access log: allowed accesses on chain (batched), refusals locally.

Allowed accesses are written with ``Consent.log_access``: up to ``MAX_BATCH`` entries per
transaction and up to ``MAX_CALLS`` transactions per flush, sent together (one block holds
them all), one flush per ``interval``. Logging costs the request one row insert and the
chain about 5,000 gas per access.

Durability: :meth:`AccessLog.allowed` writes the entry to the ``pending_access`` table (the
write-ahead) before the gateway answers, as one autocommitted insert on a connection kept open
for the purpose (~30 µs on SQLite in WAL mode), and queues it in memory; the flush sends what
is queued and deletes those rows once they are mined. A crash of the gateway therefore loses
no log line: on start, the rows still there are queued again and sent. (A crash between a
batch being mined and its rows being deleted sends that batch twice; the chain then holds
those accesses twice, never zero times.)

Calldata is encoded with ``eth_abi`` from the contract's ABI (web3's generic encoder takes
~90 ms of CPU for a batch of 256, ~7 ms here), because a flush runs in a thread of the
gateway process and every millisecond it holds the interpreter is a millisecond a request
may wait.

Refusals stay local (``refusals`` table): they name no grant, and writing them on chain would
let anyone flood the ledger. Neither table holds personal data: addresses, record ids,
purposes, reasons and times.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types

from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose
from medmesh.ledger.indexer import engine_for
from medmesh.ledger.tx import Call

__all__ = ["MAX_BATCH", "MAX_CALLS", "AccessLog", "Entry"]

log = logging.getLogger(__name__)

MAX_BATCH: Final = 256  # entries per log_access transaction (~1.3M gas)
MAX_CALLS: Final = 16  # transactions per flush: 4,096 entries, ~21M gas, one 30M-gas block

_meta = sa.MetaData()
pending_t = sa.Table(
    "pending_access",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("patient", sa.String(42), nullable=False),
    sa.Column("accessor", sa.String(42), nullable=False),
    sa.Column("record", sa.String(66), nullable=False),
    sa.Column("purpose", sa.Integer, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("tx", sa.String(66)),
)
refusals_t = sa.Table(
    "refusals",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("requester", sa.String(42)),
    sa.Column("record", sa.String(66)),
    sa.Column("purpose", sa.Integer),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    # whose records, when the request named a patient rather than one record (added later:
    # older databases get the column on open)
    sa.Column("patient", sa.String(42)),
)


@dataclass(frozen=True)
class Entry:
    patient: str
    accessor: str
    record: bytes
    purpose: Purpose
    at: int


def _address(text: str) -> bytes:
    raw = bytes.fromhex(text.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"not an address: {text!r}")
    return raw


def _add_missing_columns(engine: sa.Engine) -> None:
    """Columns added to ``refusals`` since a database was made (SQLite or PostgreSQL)."""
    have = {c["name"] for c in sa.inspect(engine).get_columns("refusals")}
    if "patient" not in have:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE refusals ADD COLUMN patient VARCHAR(42)"))


class AccessLog:
    """Queues allowed accesses for the chain; records refusals locally."""

    def __init__(self, ledger: Ledger, db_url: str, *, interval: float = 1.0) -> None:
        self.ledger = ledger
        self.interval = interval
        self.engine = engine_for(db_url)
        _meta.create_all(self.engine)
        _add_missing_columns(self.engine)
        abi = next(
            e
            for e in ledger.consent.web3.abi
            if e.get("type") == "function" and e.get("name") == "log_access"
        )
        self._selector = function_abi_to_4byte_selector(abi)
        self._types = get_abi_input_types(abi)
        self._lock = threading.Lock()  # the write-ahead connection and the queue
        self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._insert = sa.insert(pending_t)
        self._queue: deque[tuple[int, Entry]] = deque()
        rows = self._conn.execute(sa.select(pending_t).order_by(pending_t.c.id)).mappings()
        for r in rows:  # left by a previous run: send them again
            entry = Entry(r["patient"], r["accessor"], bytes.fromhex(r["record"][2:]),
                          Purpose(r["purpose"]), int(r["at"]))  # fmt: skip
            self._queue.append((int(r["id"]), entry))
        self._conn.commit()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # one flush at a time, or entries go out twice
        self.sent = 0
        self.failures = 0

    def allowed(self, entry: Entry) -> None:
        """Write ``entry`` ahead (one row, committed) and queue it for the chain."""
        values = {
            "patient": entry.patient,
            "accessor": entry.accessor,
            "record": "0x" + entry.record.hex(),
            "purpose": int(entry.purpose),
            "at": entry.at,
        }
        with self._lock:
            result = self._conn.execute(self._insert, values)
            self._conn.commit()
            key = result.inserted_primary_key
            assert key is not None  # an insert into a table with an integer primary key
            self._queue.append((int(key[0]), entry))

    def refused(
        self,
        requester: str | None,
        record: bytes | None,
        purpose: int | None,
        reason: str,
        *,
        patient: str | None = None,
    ) -> None:
        """Keep a refusal (locally): of one ``record``, or of all of ``patient``'s."""
        values = {
            "requester": requester,
            "record": "0x" + record.hex() if record else None,
            "purpose": purpose,
            "reason": reason,
            "at": time.time(),
            "patient": patient,
        }
        with self._lock:
            self._conn.execute(sa.insert(refusals_t), values)
            self._conn.commit()

    def refusals(self, limit: int = 1000) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(refusals_t).order_by(refusals_t.c.id.desc()).limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def pending(self) -> int:
        """Allowed accesses not yet mined."""
        return len(self._queue)

    def log_access_call(self, entries: list[Entry]) -> Call:
        """One ``Consent.log_access`` transaction for ``entries``."""
        rows = [
            (_address(e.patient), _address(e.accessor), e.record, int(e.purpose), e.at)
            for e in entries
        ]
        data = self._selector + abi_encode(self._types, [rows])
        return Call(self.ledger.consent.address, data, label="log_access")

    def flush(self) -> int:
        """Send every pending entry (in batches) and wait until mined; returns how many."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        done = 0
        while True:
            with self._lock:
                head = list(itertools.islice(self._queue, MAX_BATCH * MAX_CALLS))
            if not head:
                return done
            entries = [e for _, e in head]
            calls = [
                self.log_access_call(entries[i : i + MAX_BATCH])
                for i in range(0, len(entries), MAX_BATCH)
            ]
            self.ledger.transact_many(calls)
            last = head[-1][0]
            with self._lock:
                # new rows get ids above every row still in the table, so above ``last``:
                # this deletes exactly ``head``
                self._conn.execute(sa.delete(pending_t).where(pending_t.c.id <= last))
                self._conn.commit()
                for _ in head:
                    self._queue.popleft()
            done += len(head)
            self.sent += len(head)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medmesh-access-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.interval)
            try:
                self.flush()
            except Exception as exc:  # the chain may be down: keep entries, retry later
                self.failures += 1
                log.warning("access log not written yet (%s); will retry", type(exc).__name__)

    def stop(self, *, flush: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if flush:
            try:
                self.flush()
            except Exception as exc:
                log.warning("access log entries left pending (%s)", type(exc).__name__)
        with self._lock:
            self._conn.close()
        self.engine.dispose()
