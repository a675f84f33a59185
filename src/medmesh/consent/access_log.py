"""The gateway's access log: allowed accesses on chain (batched), refusals locally.

Allowed accesses are queued and written with ``Consent.log_access`` in batches (up to
``MAX_BATCH`` entries per transaction, one transaction per ``interval``), so logging costs
the request nothing and the chain a few thousand gas per access. Until its batch is mined an
entry is also kept in the local database, so a crash of the gateway loses no log line: on
start, entries not yet confirmed are sent again.

Refusals stay local (``refusals`` table): they name no grant, and writing them on chain would
let anyone flood the ledger. Neither table holds personal data: addresses, record ids,
purposes, reasons and times.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose
from medmesh.ledger.indexer import engine_for

__all__ = ["AccessLog", "Entry"]

log = logging.getLogger(__name__)

MAX_BATCH: Final = 256

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
)


@dataclass(frozen=True)
class Entry:
    patient: str
    accessor: str
    record: bytes
    purpose: Purpose
    at: int


class AccessLog:
    """Queues allowed accesses for the chain; records refusals locally."""

    def __init__(self, ledger: Ledger, db_url: str, *, interval: float = 1.0) -> None:
        self.ledger = ledger
        self.interval = interval
        self.engine = engine_for(db_url)
        _meta.create_all(self.engine)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()  # one flush at a time, or entries go out twice
        self.sent = 0
        self.failures = 0

    def allowed(self, entry: Entry) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(pending_t).values(
                    patient=entry.patient, accessor=entry.accessor, record="0x" + entry.record.hex(),
                    purpose=int(entry.purpose), at=entry.at,
                )
            )  # fmt: skip

    def refused(
        self, requester: str | None, record: bytes | None, purpose: int | None, reason: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(refusals_t).values(
                    requester=requester, record="0x" + record.hex() if record else None,
                    purpose=purpose, reason=reason, at=time.time(),
                )
            )  # fmt: skip

    def refusals(self, limit: int = 1000) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(refusals_t).order_by(refusals_t.c.id.desc()).limit(limit)
            ).mappings()
            return [dict(r) for r in rows]

    def pending(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(pending_t)).scalar() or 0
            )

    def flush(self) -> int:
        """Send every pending entry (in batches) and wait until mined; returns how many."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        done = 0
        while True:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(sa.select(pending_t).order_by(pending_t.c.id).limit(MAX_BATCH))
                    .mappings()
                    .all()
                )
            if not rows:
                return done
            call = self.ledger.consent.log_access_call(
                [
                    (
                        r["patient"],
                        r["accessor"],
                        bytes.fromhex(r["record"][2:]),
                        Purpose(r["purpose"]),
                        r["at"],
                    )
                    for r in rows
                ]
            )
            self.ledger.transact_many([call])
            with self.engine.begin() as conn:
                conn.execute(
                    sa.delete(pending_t).where(pending_t.c.id.in_([r["id"] for r in rows]))
                )
            done += len(rows)
            self.sent += len(rows)

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
        self.engine.dispose()
