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

For search, each parameter row carries its resource's type and integer ``rid`` and is indexed
both ways: by value, (type, name, value, rid), to find the resources that have it, and by
resource, (rid, name, value), to test one resource. ``resources_page`` holds each type's
current resources in page order (newest first). :meth:`FhirIndex.search` starts from the
condition with the fewest matches and tests the others per candidate (the plan is described
there); at 100,000 Observations a ``patient`` + ``code`` + ``date`` search takes about a
millisecond (``bench/fhir.py``, step 3b).

The file's layout has a version (:data:`SCHEMA_VERSION`, in ``meta``); a file of another
version is emptied and rebuilt from the ledger, as the index is only a cache of it.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from medmesh.crypto.aead import NONCE_SIZE, AesGcmKey
from medmesh.crypto.kdf import hkdf_sha256
from medmesh.interop.fhir.params import DateRange, extract
from medmesh.sqlite import immediate

__all__ = ["DEFAULT_TUNING", "FhirIndex", "IndexedResource", "Query", "SearchTuning"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2  # 2: integer rids, typed parameter rows, covering indexes (1: first)

# An index file of another schema version is dropped and rebuilt from the ledger (the index is
# a cache of what the ledger lets this institution open; FhirRepository.sync refills it).
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS resources (
    rid INTEGER PRIMARY KEY,
    record BLOB NOT NULL UNIQUE,
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
CREATE INDEX IF NOT EXISTS resources_page ON resources (type, current, last_updated DESC, record);
CREATE INDEX IF NOT EXISTS resources_patient ON resources (patient, type, current);
CREATE TABLE IF NOT EXISTS tokens (
    type TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (type, name, value, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_rid ON tokens (rid, name, value);
CREATE TABLE IF NOT EXISTS dates (
    type TEXT NOT NULL, name TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    rid INTEGER NOT NULL,
    PRIMARY KEY (type, name, lo, hi, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dates_hi ON dates (type, name, hi, lo);
CREATE INDEX IF NOT EXISTS dates_rid ON dates (rid, name, lo, hi);
CREATE TABLE IF NOT EXISTS dates_multi (
    type TEXT NOT NULL, name TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (type, name, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dates_multi_rid ON dates_multi (rid);
CREATE TABLE IF NOT EXISTS refs (
    type TEXT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (type, name, target, rid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_rid ON refs (rid, name, target);
CREATE TABLE IF NOT EXISTS forgotten (
    type TEXT NOT NULL, id TEXT NOT NULL, record BLOB NOT NULL, patient TEXT NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""
_TABLES: Final = ("resources", "tokens", "dates", "dates_multi", "refs", "forgotten")
_PARAM_TABLES: Final = ("tokens", "dates", "dates_multi", "refs")


@dataclass
class _Params:
    """The parameter rows of one resource version, to insert."""

    tokens: list[tuple[Any, ...]]
    dates: list[tuple[Any, ...]]
    dates_multi: list[tuple[Any, ...]]
    refs: list[tuple[Any, ...]]


@dataclass
class _PutBatch:
    """What :meth:`FhirIndex.put` knows of the index while it adds a batch, kept up to date
    as it goes: current versions by (type, id) as (rid, record, version), rids by record,
    forgotten (type, id), and the parameter rows to write at the end, by rid."""

    current: dict[tuple[str, str], tuple[int, bytes, int]]
    present: dict[bytes, int]
    forgotten: set[tuple[str, str]]
    params: dict[int, _Params] = field(default_factory=dict)


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


@dataclass(frozen=True)
class SearchTuning:
    """How :meth:`FhirIndex.search` plans (results never depend on it, only their speed).

    ``small``: a condition with fewer matches drives a search alone (its matches are joined,
    probed and sorted whole); ``estimate_limit``: the most index entries counted to estimate
    one condition's matches.
    """

    small: int = 2_000
    estimate_limit: int = 50_000


DEFAULT_TUNING: Final = SearchTuning()


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


@dataclass(frozen=True)
class _Cond:
    """One AND-ed condition of a search, in two forms: ``drive`` selects the rids of the
    current resources it matches (a search can start from it), ``test`` checks it on one
    resource ``r`` (``{rid}`` stands for that resource's rid)."""

    drive: str
    drive_args: tuple[Any, ...]
    test: str
    test_args: tuple[Any, ...]
    on_row: bool  # test reads columns of r (else only its rid)
    repeats: bool  # drive may select one rid more than once
    rank: int  # usual selectivity (0: most selective): the order conditions are estimated in
    # the test as a join ("<table> AS {alias} ON …", test_args), where it matches at most one
    # row per resource: cheaper than the test's subquery when counting
    join: str | None = None


def _param(
    table: str, column: str, type_: str, name: str, values: tuple[Any, ...], *, rank: int
) -> _Cond:
    """A token or reference condition: ``name`` is one of ``values`` (distinct)."""
    m = _marks(values)
    return _Cond(
        f"SELECT rid FROM {table} WHERE type = ? AND name = ? AND {column} IN ({m})",  # noqa: S608
        (type_, name, *values),
        test=f"EXISTS (SELECT 1 FROM {table} WHERE rid = {{rid}} AND name = ? AND {column} IN ({m}))",  # noqa: S608
        test_args=(name, *values), on_row=False, repeats=len(values) > 1, rank=rank,
        join=None if len(values) > 1 else
        f"{table} AS {{alias}} ON {{alias}}.rid = {{rid}} AND {{alias}}.name = ? AND {{alias}}.{column} = ?",
    )  # fmt: skip


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _on(template: str, column: str) -> str:
    """A :data:`_DATE_SQL` condition on ``column`` holding one instant (lo = hi)."""
    return template.replace("lo", column).replace("hi", column)


class FhirIndex:
    """One gateway's index, at ``path``, protected with keys derived from ``secret``."""

    def __init__(
        self, path: Path | str, secret: bytes, *, tuning: SearchTuning = DEFAULT_TUNING
    ) -> None:
        self.path = str(path)
        self.tuning = tuning
        self._body_key = AesGcmKey(hkdf_sha256(secret, info=b"medmesh/fhir-index/v1/body"))
        self._token_key = hkdf_sha256(secret, info=b"medmesh/fhir-index/v1/token")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        with self._tx() as conn:
            self._create(conn)
            check = conn.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            mine = self._token(b"key-check").hex()
            if check is None:
                conn.execute("INSERT INTO meta VALUES ('key_check', ?)", (mine,))
            elif check[0] != mine:  # another wallet's index: useless to this one, rebuild
                self._clear(conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'key_check'", (mine,))

    @staticmethod
    def _create(conn: sqlite3.Connection) -> None:
        """Create the tables, first dropping those of another schema version: the index is
        rebuilt from the ledger (``ledger_block`` goes too, so the next sync is a full one)."""
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'"
            )
        ]
        version = None
        if "meta" in tables:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = None if row is None else str(row[0])
        if tables and version != str(SCHEMA_VERSION):
            log.info(
                "FHIR index %s: schema %s, not %d: rebuilding it from the ledger",
                conn.execute("PRAGMA database_list").fetchone()[2],
                version,
                SCHEMA_VERSION,
            )
            for table in tables:
                conn.execute(f'DROP TABLE "{table}"')
        for statement in _SCHEMA.split(";"):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; see :meth:`_tx` for transactions)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _tx(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``with self._tx() as conn``: one IMMEDIATE transaction on this thread's connection."""
        return immediate(self._conn())

    # -- secrets ------------------------------------------------------------------------------

    def _token(self, value: bytes) -> bytes:
        return hmac.digest(self._token_key, value, "sha256")[:16]

    def token_value(self, text: str) -> bytes:
        return self._token(text.encode())

    def _seal(self, record: bytes, body: dict[str, Any]) -> bytes:
        plain = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        nonce, ct = self._body_key.encrypt(plain, aad=record)
        return nonce + ct

    def _open(self, record: bytes, sealed: bytes) -> dict[str, Any]:
        plain = self._body_key.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad=record)
        out: dict[str, Any] = json.loads(plain)
        return out

    # -- writing ------------------------------------------------------------------------------

    def put(self, entries: Iterable[tuple[IndexedResource, dict[str, Any]]]) -> None:
        """Add resource versions (already decrypted and validated), in one transaction.

        A version newer than the one the index holds as current becomes current, and the
        older one loses its parameter rows. The batch is looked up in a few queries and its
        parameter rows written together: a batch of 1,000 costs about 1,000 statements, not
        10,000.
        """
        entries = list(entries)
        if not entries:
            return
        with self._write_lock, self._tx() as conn:
            keys = list(dict.fromkeys((row.type, row.id) for row, _ in entries))
            current = self._by_keys(conn, "resources", "rid, record, version", keys, "+current = 1")
            batch = _PutBatch(
                current={(r[0], r[1]): (int(r[2]), bytes(r[3]), int(r[4])) for r in current},
                present=self._rids_of(conn, [row.record for row, _ in entries]),
                forgotten={(r[0], r[1]) for r in self._by_keys(conn, "forgotten", "1", keys)},
            )
            for row, body in entries:
                self._put(conn, row, body, batch)
            for table, width in (("tokens", 4), ("dates", 5), ("dates_multi", 3), ("refs", 4)):
                conn.executemany(
                    f"INSERT OR IGNORE INTO {table} VALUES ({_marks([0] * width)})",  # noqa: S608
                    [p for params in batch.params.values() for p in getattr(params, table)],
                )

    @staticmethod
    def _by_keys(
        conn: sqlite3.Connection,
        table: str,
        columns: str,
        keys: Sequence[tuple[str, str]],
        where: str = "1",
    ) -> list[Sequence[Any]]:
        """``type, id, <columns>`` of the rows of ``table`` whose (type, id) is one of ``keys``
        and that match ``where`` (fixed SQL text), a few hundred keys per query."""
        out: list[Sequence[Any]] = []
        for at in range(0, len(keys), 400):
            part = keys[at : at + 400]
            out += conn.execute(
                f"WITH k(type, id) AS (VALUES {','.join(['(?, ?)'] * len(part))}) "  # noqa: S608
                f"SELECT t.type, t.id, {columns} FROM k CROSS JOIN {table} t "
                f"ON t.type = k.type AND t.id = k.id WHERE {where}",
                [v for key in part for v in key],
            ).fetchall()
        return out

    @staticmethod
    def _rids_of(conn: sqlite3.Connection, records: Sequence[bytes]) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for at in range(0, len(records), 400):
            part = records[at : at + 400]
            for record, rid in conn.execute(
                f"SELECT record, rid FROM resources WHERE record IN ({_marks(part)})",  # noqa: S608
                part,
            ):
                out[bytes(record)] = int(rid)
        return out

    def _put(
        self, conn: sqlite3.Connection, row: IndexedResource, body: dict[str, Any], batch: _PutBatch
    ) -> None:
        key = (row.type, row.id)
        existing = batch.current.get(key)
        current = existing is None or existing[2] <= row.version
        if existing is not None and current and existing[1] != row.record:
            conn.execute("UPDATE resources SET current = 0 WHERE rid = ?", (existing[0],))
            self._forget_params(conn, existing[0], batch)
        old = batch.present.pop(row.record, None)
        if old is not None:  # the same version again: replaced
            self._forget_params(conn, old, batch)
            conn.execute("DELETE FROM resources WHERE rid = ?", (old,))
        if key in batch.forgotten:
            conn.execute("DELETE FROM forgotten WHERE type = ? AND id = ?", key)
            batch.forgotten.discard(key)
        rid = conn.execute(
            "INSERT INTO resources (record, type, id, version, current, patient, cid, "
            "last_updated, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.record, row.type, row.id, row.version, int(current), row.patient, row.cid,
             row.last_updated, self._seal(row.record, body)),
        ).lastrowid  # fmt: skip
        assert rid is not None
        batch.present[row.record] = rid
        if not current:
            return
        batch.current[key] = (rid, row.record, row.version)
        found = extract(body)
        dates = {(name, r.lo, r.hi) for name, r in found.dates}
        names = [name for name, _, _ in dates]
        batch.params[rid] = _Params(
            tokens=[(row.type, name, self.token_value(v), rid) for name, v in found.tokens],
            dates=[(row.type, name, lo, hi, rid) for name, lo, hi in dates],
            # several values of one date parameter: searches must count rids once
            dates_multi=[(row.type, name, rid) for name in set(names) if names.count(name) > 1],
            refs=[(row.type, name, target, rid) for name, target in found.refs],
        )

    @staticmethod
    def _forget_params(conn: sqlite3.Connection, rid: int, batch: _PutBatch | None = None) -> None:
        if batch is not None and batch.params.pop(rid, None) is not None:
            return  # added by this batch: not written yet
        for table in _PARAM_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE rid = ?", (rid,))  # noqa: S608

    def _delete(self, conn: sqlite3.Connection, record: bytes) -> int:
        found = conn.execute("SELECT rid FROM resources WHERE record = ?", (record,)).fetchone()
        if found is None:
            return 0
        self._forget_params(conn, found[0])
        return conn.execute("DELETE FROM resources WHERE rid = ?", (found[0],)).rowcount

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
                n += self._delete(conn, record)
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
        for table in _TABLES:
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
                "WHERE type = ? AND id = ? AND +current = 1",
                (type_, id_),
            )
            .fetchone()
        )
        return None if row is None else self._row(row)

    def current_many(
        self, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], IndexedResource]:
        """The current version of each ``(type, id)`` of ``keys`` the index holds (absent:
        not in the result), in a few queries whatever their number."""
        columns = ", ".join(f"t.{c}" for c in self._COLUMNS.split(", "))
        rows = self._by_keys(self._conn(), "resources", columns, list(dict.fromkeys(keys)),
                             "+t.current = 1")  # fmt: skip
        return {(r[0], r[1]): self._row(r[2:]) for r in rows}

    def by_record(self, record: bytes) -> IndexedResource | None:
        row = (
            self._conn()
            .execute(f"SELECT {self._COLUMNS} FROM resources WHERE record = ?", (record,))  # noqa: S608
            .fetchone()
        )
        return None if row is None else self._row(row)

    def known_records(self, records: Sequence[bytes]) -> set[bytes]:
        """Which of ``records`` the index holds."""
        return set(self._rids_of(self._conn(), records))

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
        """(one page of current resources matching ``q``, newest first; the total).

        Planned per query, in one read transaction: each condition's matches are counted
        (at most ``tuning.estimate_limit`` index entries, usually-selective conditions first,
        the limit shrinking to the best so far); the smallest drives the search and the others
        are probed per candidate on the ``rid`` indexes. A driver under ``tuning.small``
        matches is joined, filtered and sorted whole. A larger one gives the total by one
        counting pass over its index entries (a lone condition needs no other), and the page
        comes from walking the resources in page order (``resources_page``, in growing
        windows), probing every condition, for about as many rows as the driver has; if that
        finds too few, the driver's matches are sorted instead.
        """
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot for the total and the page
        try:
            conds = self._conditions(conn, q)
            if conds is None:
                return [], 0
            rids, total = self._plan(conn, q, conds)
            return self._page(conn, rids), total
        finally:
            conn.execute("COMMIT")

    def _conditions(self, conn: sqlite3.Connection, q: Query) -> list[_Cond] | None:
        """``q``'s conditions (None: one of them can match nothing). SQL is built from fixed
        text and ``?`` marks only; every value is a parameter."""
        t = q.type
        out: list[_Cond] = []
        if q.ids is not None:
            ids = tuple(dict.fromkeys(q.ids))
            if not ids:
                return None
            m = _marks(ids)
            out.append(_Cond(
                f"SELECT rid FROM resources WHERE type = ? AND id IN ({m}) AND +current = 1",  # noqa: S608
                (t, *ids), test=f"+r.id IN ({m})", test_args=ids, on_row=True, repeats=False,
                rank=0,
            ))  # fmt: skip
        for name, targets in q.refs or []:
            if not targets:
                return None
            out.append(_param("refs", "target", t, name, tuple(dict.fromkeys(targets)), rank=1))
        if q.patients is not None:
            owners = tuple(dict.fromkeys(q.patients))
            if not owners:
                return None
            m = _marks(owners)
            out.append(_Cond(
                f"SELECT rid FROM resources WHERE patient IN ({m}) AND type = ? AND current = 1",  # noqa: S608
                (*owners, t), test=f"+r.patient IN ({m})", test_args=owners, on_row=True,
                repeats=False, rank=2,
            ))  # fmt: skip
        for name, values in q.tokens or []:
            hashed = tuple(dict.fromkeys(self.token_value(v) for v in values))
            if not hashed:
                return None
            out.append(_param("tokens", "value", t, name, hashed, rank=3))
        for prefix, rng in q.updated or []:
            sql, args = _DATE_SQL[prefix], _date_args(prefix, rng)
            out.append(_Cond(  # (no +: in a walk, the test bounds the resources_page range)
                "SELECT rid FROM resources WHERE type = ? AND current = 1 AND "  # noqa: S608
                + _on(sql, "last_updated"),
                (t, *args), test=_on(sql, "r.last_updated"), test_args=args, on_row=True,
                repeats=False, rank=4,
            ))  # fmt: skip
        for name, prefix, rng in q.dates or []:
            sql, args = _DATE_SQL[prefix], _date_args(prefix, rng)
            several = conn.execute(
                "SELECT 1 FROM dates_multi WHERE type = ? AND name = ? LIMIT 1", (t, name)
            ).fetchone()
            out.append(_Cond(
                f"SELECT rid FROM dates WHERE type = ? AND name = ? AND {sql}",  # noqa: S608
                (t, name, *args),
                test=f"EXISTS (SELECT 1 FROM dates WHERE rid = {{rid}} AND name = ? AND {sql})",  # noqa: S608
                test_args=(name, *args), on_row=False, repeats=several is not None, rank=5,
                join=None if several else "dates AS {alias} ON {alias}.rid = {rid} AND "
                "{alias}.name = ? AND " + re.sub(r"\b(lo|hi)\b", r"{alias}.\1", sql),
            ))  # fmt: skip
        return out

    @staticmethod
    def _tests(conds: Sequence[_Cond], rid: str) -> tuple[str, list[Any]]:
        """The AND of ``conds``' tests (``1`` for none), and their arguments."""
        sql = " AND ".join(f"({c.test.format(rid=rid)})" for c in conds) or "1"
        return sql, [a for c in conds for a in c.test_args]

    def _plan(
        self, conn: sqlite3.Connection, q: Query, conds: list[_Cond]
    ) -> tuple[list[int], int]:
        """(the rids of ``q``'s page, in order; the total)."""
        if not conds:  # every current resource of the type
            total = int(
                conn.execute(
                    "SELECT count(*) FROM resources WHERE type = ? AND current = 1", (q.type,)
                ).fetchone()[0]
            )
            wanted = min(total, q.offset + q.count)
            rids = self._walk(conn, q, conds, wanted) if wanted > q.offset else None
            return (rids or [])[q.offset :], total
        drive = conds[0]
        if len(conds) == 1:  # one condition: count it whole (no repeats: that is the total)
            n_drive = self._count(conn, drive)
        else:  # estimate each, most selective kinds first, to pick the driver
            n_drive, limit = -1, self.tuning.estimate_limit
            for c in sorted(conds, key=lambda c: c.rank):
                n = self._count(conn, c, limit)
                if n == 0:
                    return [], 0
                if n_drive < 0 or n < n_drive:
                    drive, n_drive = c, n
                limit = min(limit, n)
        others = [c for c in conds if c is not drive]
        rids_sql = f"SELECT DISTINCT rid FROM ({drive.drive})" if drive.repeats else drive.drive  # noqa: S608
        from_sql = f"({rids_sql}) AS d CROSS JOIN resources r ON r.rid = d.rid"
        tests, test_args = self._tests(others, "d.rid")
        if n_drive < self.tuning.small:  # few candidates: filter and sort them all, here
            rows = conn.execute(
                f"SELECT r.rid, r.last_updated, r.record FROM {from_sql} "  # noqa: S608
                f"WHERE +r.type = ? AND +r.current = 1 AND {tests}",
                [*drive.drive_args, q.type, *test_args],
            ).fetchall()
            rows.sort(key=lambda r: (-r[1], bytes(r[2])))
            return [r[0] for r in rows[q.offset : q.offset + q.count]], len(rows)
        if others or drive.repeats:  # the total: one pass over the driver, probing the others
            joined = [c for c in others if c.join is not None]
            tested = [c for c in others if c.join is None]
            joins = "".join(
                f" CROSS JOIN {c.join.format(alias=f'j{i}', rid='d.rid')}"
                for i, c in enumerate(joined)
                if c.join is not None
            )
            if any(c.on_row for c in tested):
                joins += " CROSS JOIN resources r ON r.rid = d.rid"
            where, where_args = self._tests(tested, "d.rid")
            total = int(
                conn.execute(
                    f"SELECT count({'DISTINCT ' if drive.repeats else ''}d.rid) "  # noqa: S608
                    f"FROM ({drive.drive}) AS d{joins} WHERE {where}",
                    [*drive.drive_args, *(a for c in joined for a in c.test_args), *where_args],
                ).fetchone()[0]
            )
        else:
            total = n_drive
        wanted = min(total, q.offset + q.count)
        if wanted <= q.offset:
            return [], total
        rids = self._walk(conn, q, conds, wanted, budget=n_drive)
        if rids is None:  # the walk gave up: sort the driver's matches
            rids = [
                r[0]
                for r in conn.execute(
                    f"SELECT r.rid FROM {from_sql} WHERE +r.type = ? AND +r.current = 1 "  # noqa: S608
                    f"AND {tests} ORDER BY r.last_updated DESC, r.record LIMIT ? OFFSET ?",
                    [*drive.drive_args, q.type, *test_args, q.count, q.offset],
                )
            ]
            return rids, total
        return rids[q.offset :], total

    @staticmethod
    def _count(conn: sqlite3.Connection, c: _Cond, limit: int | None = None) -> int:
        """How many rows ``c.drive`` selects (at most ``limit``)."""
        sql = f"SELECT count(*) FROM ({c.drive}{'' if limit is None else ' LIMIT ?'})"  # noqa: S608
        args = c.drive_args if limit is None else (*c.drive_args, limit)
        return int(conn.execute(sql, args).fetchone()[0])

    # A walk reads the type's current resources in page order, in windows each _GROWTH times
    # the last: a bounded window (its last row found by OFFSET on resources_page) is what lets
    # SQLite stop without sorting, and small first windows keep the common case cheap.
    _FIRST_WINDOW: Final = 256
    _GROWTH: Final = 4
    _AFTER: Final = " AND r.last_updated <= ? AND (r.last_updated < ? OR r.record > ?)"
    _UPTO: Final = " AND r.last_updated >= ? AND (r.last_updated > ? OR r.record <= ?)"

    def _walk(
        self,
        conn: sqlite3.Connection,
        q: Query,
        conds: Sequence[_Cond],
        wanted: int,
        budget: int | None = None,
    ) -> list[int] | None:
        """The first ``wanted`` matches of ``conds`` in page order, from a walk of the type's
        current resources in that order (``resources_page``, no sort); None if the first
        ``budget`` of them (about) hold fewer."""
        tests, test_args = self._tests(conds, "r.rid")
        found: list[int] = []
        after: Sequence[Any] | None = None  # (last_updated, record) of the last row walked
        window, walked = max(self._FIRST_WINDOW, 16 * wanted), 0
        while budget is None or walked < budget:
            bounds, args = "", []
            if after is not None:
                bounds, args = self._AFTER, [after[0], after[0], after[1]]
            edge = conn.execute(
                f"SELECT r.last_updated, r.record FROM resources r WHERE r.type = ? "  # noqa: S608
                f"AND r.current = 1{bounds} ORDER BY r.last_updated DESC, r.record "
                "LIMIT 1 OFFSET ?",
                [q.type, *args, window - 1],
            ).fetchone()
            if edge is not None:
                bounds, args = bounds + self._UPTO, [*args, edge[0], edge[0], edge[1]]
            found += [
                r[0]
                for r in conn.execute(
                    f"SELECT r.rid FROM resources r WHERE r.type = ? AND r.current = 1{bounds} "  # noqa: S608
                    f"AND {tests} ORDER BY r.last_updated DESC, r.record LIMIT ?",
                    [q.type, *args, *test_args, wanted - len(found)],
                )
            ]
            if len(found) >= wanted or edge is None:  # enough, or walked to the end
                return found
            after, walked, window = edge, walked + window, window * self._GROWTH
        return None

    def _page(
        self, conn: sqlite3.Connection, rids: list[int]
    ) -> list[tuple[IndexedResource, dict[str, Any]]]:
        if not rids:
            return []
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                f"SELECT rid, {self._COLUMNS}, body FROM resources WHERE rid IN ({_marks(rids)})",  # noqa: S608
                rids,
            )
        }
        return [
            (self._row(rows[rid]), self._open(bytes(rows[rid][0]), bytes(rows[rid][8])))
            for rid in rids
        ]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
