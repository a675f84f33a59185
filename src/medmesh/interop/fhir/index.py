"""The FHIR search index of one gateway: the resources it may decrypt, searchable.

Resources live encrypted in the storage network; the gateway cannot search ciphertext. So
each FHIR gateway keeps, in one SQLite file, an index of the resources its institution may
decrypt under current consents (kept in step with the ledger by
:class:`medmesh.interop.fhir.repository.FhirRepository`): which record holds which version of
which resource, and the search-parameter values of current versions.

The index holds as little in clear as search allows, because a stolen index file must not be
a copy of the records:

- resource bodies are sealed with AES-256-GCM under a key derived from the institution's
  wallet (HKDF, ``medmesh/fhir-index/v1/body``), bound to their record id;
- token values (codes, identifiers) are stored as HMAC-SHA256 under another derived key, so
  ``code=http://loinc.org|8867-4`` is found by equality without the code being readable;
- dates (to compare ranges), reference targets (``Patient/…``: ids, not identities), types,
  ids and patient addresses are stored in clear.

Only current versions have parameter rows; history stays in ``resources``. Revoking consent
removes every row of the affected records (:meth:`FhirIndex.drop`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medmesh.crypto.aead import NONCE_SIZE, decrypt_aes256gcm, encrypt_aes256gcm
from medmesh.crypto.kdf import hkdf_sha256
from medmesh.interop.fhir.params import DateRange, extract

__all__ = ["FhirIndex", "IndexedResource", "Query"]

SCHEMA_VERSION: Final = 1  # (a new table is created by IF NOT EXISTS; bump on changes)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS resources (
    record BLOB PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    current INTEGER NOT NULL,
    patient TEXT NOT NULL,
    cid BLOB NOT NULL,
    last_updated REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resources_version ON resources (type, id, version);
CREATE INDEX IF NOT EXISTS resources_current ON resources (type, current, last_updated);
CREATE INDEX IF NOT EXISTS resources_patient ON resources (patient);
CREATE TABLE IF NOT EXISTS tokens (record BLOB NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS tokens_value ON tokens (name, value);
CREATE INDEX IF NOT EXISTS tokens_record ON tokens (record);
CREATE TABLE IF NOT EXISTS dates (record BLOB NOT NULL, name TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL);
CREATE INDEX IF NOT EXISTS dates_lo ON dates (name, lo);
CREATE INDEX IF NOT EXISTS dates_record ON dates (record);
CREATE TABLE IF NOT EXISTS refs (record BLOB NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS refs_target ON refs (name, target);
CREATE INDEX IF NOT EXISTS refs_record ON refs (record);
CREATE TABLE IF NOT EXISTS forgotten (
    type TEXT NOT NULL, id TEXT NOT NULL, record BLOB NOT NULL, patient TEXT NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class IndexedResource:
    record: bytes
    type: str
    id: str
    version: int
    current: bool
    patient: str
    cid: bytes
    last_updated: float


@dataclass
class Query:
    """A search, already parsed: every condition must hold (AND); values of one condition
    are alternatives (OR)."""

    type: str
    ids: list[str] | None = None
    tokens: list[tuple[str, list[str]]] | None = None  # (param, ["system|code" | "|code"])
    refs: list[tuple[str, list[str]]] | None = None  # (param, ["Type/id"])
    dates: list[tuple[str, str, DateRange]] | None = None  # (param, prefix, range)
    updated: list[tuple[str, DateRange]] | None = None  # _lastUpdated (prefix, range)
    patients: Sequence[str] | None = None  # restrict to these owners (addresses)
    count: int = 20
    offset: int = 0


# SQL for each date prefix, over the resource's range [lo, hi) and the parameter's [plo, phi)
_DATE_SQL: Final = {
    "eq": "lo >= ? AND hi <= ?",
    "ne": "NOT (lo >= ? AND hi <= ?)",
    "gt": "hi > ?",
    "lt": "lo < ?",
    "ge": "hi > ?",
    "le": "lo < ?",
    "sa": "lo >= ?",
    "eb": "hi <= ?",
    "ap": "lo < ? AND hi > ?",
}


def _date_args(prefix: str, r: DateRange) -> tuple[float, ...]:
    span = max(r.hi - r.lo, 1.0)
    return {
        "eq": (r.lo, r.hi),
        "ne": (r.lo, r.hi),
        "gt": (r.hi,),
        "lt": (r.lo,),
        "ge": (r.lo,),
        "le": (r.hi,),
        "sa": (r.hi,),
        "eb": (r.lo,),
        "ap": (r.hi + span * 0.1, r.lo - span * 0.1),
    }[prefix]


class FhirIndex:
    """One gateway's index, at ``path``, protected with keys derived from ``secret``."""

    def __init__(self, path: Path | str, secret: bytes) -> None:
        self.path = str(path)
        self._body_key = hkdf_sha256(secret, info=b"medmesh/fhir-index/v1/body")
        self._token_key = hkdf_sha256(secret, info=b"medmesh/fhir-index/v1/token")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            check = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            mine = self._token(b"key-check").hex()
            if check is None:
                conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (mine,))
            elif check[0] != mine:  # another wallet's index: useless to this one, rebuild
                self._clear(conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'key_check'", (mine,))

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; see :meth:`_tx` for transactions)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _tx(self) -> _Tx:
        """``with self._tx() as conn``: one IMMEDIATE transaction on this thread's connection."""
        return _Tx(self._conn())

    # -- secrets ------------------------------------------------------------------------------

    def _token(self, value: bytes) -> bytes:
        return hmac.new(self._token_key, value, hashlib.sha256).digest()[:16]

    def token_value(self, text: str) -> bytes:
        return self._token(text.encode())

    def _seal(self, record: bytes, body: dict[str, Any]) -> bytes:
        plain = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        nonce, ct = encrypt_aes256gcm(self._body_key, plain, aad=record)
        return nonce + ct

    def _open(self, record: bytes, sealed: bytes) -> dict[str, Any]:
        plain = decrypt_aes256gcm(
            self._body_key, sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad=record
        )
        out: dict[str, Any] = json.loads(plain)
        return out

    # -- writing ------------------------------------------------------------------------------

    def put(self, entries: Iterable[tuple[IndexedResource, dict[str, Any]]]) -> None:
        """Add resource versions (already decrypted and validated), in one transaction.

        A version newer than the one the index holds as current becomes current, and the
        older one loses its parameter rows.
        """
        with self._write_lock, self._tx() as conn:
            for row, body in entries:
                self._put(conn, row, body)

    def _put(self, conn: sqlite3.Connection, row: IndexedResource, body: dict[str, Any]) -> None:
        existing = conn.execute(
            "SELECT record, version FROM resources WHERE type = ? AND id = ? AND current = 1",
            (row.type, row.id),
        ).fetchone()
        current = existing is None or existing[1] <= row.version
        if existing is not None and current and bytes(existing[0]) != row.record:
            conn.execute("UPDATE resources SET current = 0 WHERE record = ?", (existing[0],))
            self._forget_params(conn, bytes(existing[0]))
        conn.execute("DELETE FROM resources WHERE record = ?", (row.record,))
        conn.execute("DELETE FROM forgotten WHERE type = ? AND id = ?", (row.type, row.id))
        self._forget_params(conn, row.record)
        conn.execute(
            "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.record, row.type, row.id, row.version, int(current), row.patient, row.cid,
             row.last_updated, self._seal(row.record, body)),
        )  # fmt: skip
        if not current:
            return
        found = extract(body)
        conn.executemany(
            "INSERT INTO tokens VALUES (?, ?, ?)",
            [(row.record, name, self.token_value(v)) for name, v in found.tokens],
        )
        conn.executemany(
            "INSERT INTO dates VALUES (?, ?, ?, ?)",
            [(row.record, name, r.lo, r.hi) for name, r in found.dates],
        )
        conn.executemany(
            "INSERT INTO refs VALUES (?, ?, ?)", [(row.record, n, t) for n, t in found.refs]
        )

    @staticmethod
    def _forget_params(conn: sqlite3.Connection, record: bytes) -> None:
        for table in ("tokens", "dates", "refs"):
            conn.execute(f"DELETE FROM {table} WHERE record = ?", (record,))  # noqa: S608

    def drop(self, records: Iterable[bytes]) -> int:
        """Forget these record versions (consent revoked or expired, erased): bodies and
        parameters go; only (type, id) → record of current versions is kept, in
        ``forgotten``, so that a read of the id is refused (and logged) rather than unknown."""
        n = 0
        with self._write_lock, self._tx() as conn:
            for record in records:
                conn.execute(
                    "INSERT OR REPLACE INTO forgotten SELECT type, id, record, patient "
                    "FROM resources WHERE record = ? AND current = 1",
                    (record,),
                )
                self._forget_params(conn, record)
                n += conn.execute("DELETE FROM resources WHERE record = ?", (record,)).rowcount
        return n

    def forgotten(self, type_: str, id_: str) -> IndexedResource | None:
        """The last current version of a resource the index dropped (no body, version 0)."""
        row = (
            self._conn()
            .execute(
                "SELECT record, patient FROM forgotten WHERE type = ? AND id = ?", (type_, id_)
            )
            .fetchone()
        )
        if row is None:
            return None
        return IndexedResource(bytes(row[0]), type_, id_, 0, False, row[1], b"", 0.0)

    def _clear(self, conn: sqlite3.Connection) -> None:
        for table in ("resources", "tokens", "dates", "refs", "forgotten"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608
        conn.execute("DELETE FROM meta WHERE key NOT IN ('schema', 'key_check')")

    def clear(self) -> None:
        with self._write_lock, self._tx() as conn:
            self._clear(conn)

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write_lock, self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- reading ------------------------------------------------------------------------------

    @staticmethod
    def _row(r: Sequence[Any]) -> IndexedResource:
        return IndexedResource(
            bytes(r[0]), r[1], r[2], int(r[3]), bool(r[4]), r[5], bytes(r[6]), float(r[7])
        )

    _COLUMNS: Final = "record, type, id, version, current, patient, cid, last_updated"

    def versions(self, type_: str, id_: str) -> list[IndexedResource]:
        """Every indexed version of ``type_/id_``, newest first."""
        rows = self._conn().execute(
            f"SELECT {self._COLUMNS} FROM resources WHERE type = ? AND id = ? "  # noqa: S608
            "ORDER BY version DESC",
            (type_, id_),
        )
        return [self._row(r) for r in rows]

    def current(self, type_: str, id_: str) -> IndexedResource | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {self._COLUMNS} FROM resources "  # noqa: S608
                "WHERE type = ? AND id = ? AND current = 1",
                (type_, id_),
            )
            .fetchone()
        )
        return None if row is None else self._row(row)

    def by_record(self, record: bytes) -> IndexedResource | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._COLUMNS} FROM resources WHERE record = ?", (record,))  # noqa: S608
            .fetchone()
        )
        return None if row is None else self._row(row)

    def body(self, record: bytes) -> dict[str, Any] | None:
        row = (
            self._conn()
            .execute("SELECT body FROM resources WHERE record = ?", (record,))
            .fetchone()
        )
        return None if row is None else self._open(record, bytes(row[0]))

    def patients(self) -> list[str]:
        """Every patient with a resource in the index."""
        return [r[0] for r in self._conn().execute("SELECT DISTINCT patient FROM resources")]

    def records_of(self, patient: str) -> list[bytes]:
        rows = self._conn().execute("SELECT record FROM resources WHERE patient = ?", (patient,))
        return [bytes(r[0]) for r in rows]

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM resources").fetchone()[0])

    def search(self, q: Query) -> tuple[list[tuple[IndexedResource, dict[str, Any]]], int]:
        """(one page of current resources matching ``q``, newest first; the total)."""
        where = ["r.type = ?", "r.current = 1"]
        args: list[Any] = [q.type]
        if q.ids is not None:
            where.append(f"r.id IN ({','.join('?' * len(q.ids))})")
            args += q.ids
        if q.patients is not None:
            where.append(f"r.patient IN ({','.join('?' * len(q.patients))})")
            args += list(q.patients)
        for name, values in q.tokens or []:
            where.append(
                "r.record IN (SELECT record FROM tokens WHERE name = ? AND value IN "  # noqa: S608
                f"({','.join('?' * len(values))}))"
            )
            args += [name, *(self.token_value(v) for v in values)]
        for name, targets in q.refs or []:
            where.append(
                "r.record IN (SELECT record FROM refs WHERE name = ? AND target IN "  # noqa: S608
                f"({','.join('?' * len(targets))}))"
            )
            args += [name, *targets]
        for name, prefix, rng in q.dates or []:
            where.append(
                f"r.record IN (SELECT record FROM dates WHERE name = ? AND {_DATE_SQL[prefix]})"  # noqa: S608
            )
            args += [name, *_date_args(prefix, rng)]
        for prefix, rng in q.updated or []:
            cond = _DATE_SQL[prefix].replace("lo", "r.last_updated").replace("hi", "r.last_updated")
            where.append(cond)
            args += list(_date_args(prefix, rng))
        sql_where = " AND ".join(where)
        conn = self._conn()
        total = int(
            conn.execute(f"SELECT count(*) FROM resources r WHERE {sql_where}", args).fetchone()[0]  # noqa: S608
        )
        rows = conn.execute(
            f"SELECT {', '.join('r.' + c for c in self._COLUMNS.split(', '))}, r.body "  # noqa: S608
            f"FROM resources r WHERE {sql_where} ORDER BY r.last_updated DESC, r.record "
            "LIMIT ? OFFSET ?",
            [*args, q.count, q.offset],
        ).fetchall()
        return [(self._row(r), self._open(bytes(r[0]), bytes(r[8]))) for r in rows], total

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Tx:
    """One IMMEDIATE transaction: committed if the block ends normally, else rolled back."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def __enter__(self) -> sqlite3.Connection:
        self._c.execute("BEGIN IMMEDIATE")
        return self._c

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._c.execute("COMMIT" if exc_type is None else "ROLLBACK")
