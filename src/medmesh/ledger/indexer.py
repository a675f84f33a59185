"""The indexer: contract events followed into SQL tables, for fast answers to
"who can see my records?" and "who accessed what, when?".

It reads the logs of the four medmesh contracts block range by block range, waits
``confirmations`` blocks before trusting one, and applies each range in one database
transaction together with its cursor (the last block indexed and that block's hash), so the
tables never hold half of a range: kill it at any moment and it resumes where it stopped.
Reverted transactions leave no logs, so nothing of them ever reaches the tables.

If the block at the cursor is no longer on the chain (a reorganisation deeper than
``confirmations``, or a local chain restarted from an older snapshot), the indexer rebuilds
everything from the deployment block: the chain is the truth, the index only a cache of it.

SQLite (the default, ``index.db`` in the home folder, WAL mode) or PostgreSQL by URL
(``postgresql+psycopg://user@host/db``), through SQLAlchemy Core: the same statements on both.

Times and expiries are uint64 on the chain (a grant may last "until 2**64 - 1"), beyond the
signed 64-bit integers of both databases: :class:`UInt64` keeps them as ``NUMERIC(20, 0)`` on
PostgreSQL and as 20-digit zero-padded text on SQLite, exact and in order either way, so
comparisons such as "expiry > now" run in SQL (the bound value is converted the same way).

The tables' layout has a version (:data:`SCHEMA_VERSION`, in table ``schema_version``). A
database of an older layout (or of none: the first indexers had no such table) is dropped
and indexed again from the chain when opened; one from a newer medmesh is refused.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa

from medmesh.errors import ConfigError
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import BREAK_GLASS_SCOPE, Contract, Purpose, Role
from medmesh.ledger.events import checksum

__all__ = ["SCHEMA_VERSION", "AccessRow", "GrantRow", "Indexer", "RecordRow", "UInt64"]

MAX_RANGE: Final = 2_000  # blocks per eth_getLogs query
SCHEMA_VERSION: Final = 3  # 3: consent_log.capsule; 2: uint64 columns as UInt64 (1: BIGINT)
UINT64_MAX: Final = 2**64 - 1

log = logging.getLogger(__name__)


class UInt64(sa.types.TypeDecorator[int]):
    """An unsigned 64-bit integer column: ``NUMERIC(20, 0)`` on PostgreSQL, and on SQLite
    (whose integers stop at 2**63 - 1 and whose NUMERIC turns larger ones into floats) text
    of 20 zero-padded digits, which sorts as the numbers do.

    Values bound against the column (``expiry > now``) are converted the same way, so they
    must be in range too; an out-of-range value raises ValueError.
    """

    impl = sa.BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(20))
        return dialect.type_descriptor(sa.Numeric(20, 0, asdecimal=True))

    def process_bind_param(self, value: int | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        number = int(value)
        if not 0 <= number <= UINT64_MAX:
            raise ValueError(f"{value} is not a uint64")
        if dialect.name == "sqlite":
            return f"{number:020d}"
        return Decimal(number)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> int | None:
        return None if value is None else int(value)


metadata = sa.MetaData()

schema_t = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

cursor_t = sa.Table(
    "cursor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("chain_id", sa.BigInteger, nullable=False),
    sa.Column("registry", sa.String(42), nullable=False),
    sa.Column("block", sa.BigInteger, nullable=False),
    sa.Column("block_hash", sa.String(66), nullable=False),
)

participants_t = sa.Table(
    "participants",
    metadata,
    sa.Column("account", sa.String(42), primary_key=True),
    sa.Column("roles", sa.Integer, nullable=False),
    sa.Column("encryption_key", sa.String(66)),
    sa.Column("metadata_uri", sa.Text),
    sa.Column("block", sa.BigInteger, nullable=False),
)

records_t = sa.Table(
    "records",
    metadata,
    sa.Column("record", sa.String(66), primary_key=True),
    sa.Column("patient", sa.String(42), nullable=False, index=True),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("supersedes", sa.String(66)),
    sa.Column("author", sa.String(42), nullable=False),
    sa.Column("cid", sa.LargeBinary, nullable=False),
    sa.Column("anchored_at", UInt64, nullable=False),
    sa.Column("block", sa.BigInteger, nullable=False),
    sa.Column("tx", sa.String(66), nullable=False),
    sa.Column("superseded", sa.Boolean, nullable=False, default=False),
    sa.Column("erased", sa.Boolean, nullable=False, default=False),
)

batches_t = sa.Table(
    "batches",
    metadata,
    sa.Column("root", sa.String(66), primary_key=True),
    sa.Column("author", sa.String(42), nullable=False, index=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("block", sa.BigInteger, nullable=False),
)

grants_t = sa.Table(  # the current grant per (patient, grantee, scope)
    "grants",
    metadata,
    sa.Column("patient", sa.String(42), primary_key=True),
    sa.Column("grantee", sa.String(42), primary_key=True),
    sa.Column("scope", sa.String(66), primary_key=True),
    sa.Column("purposes", sa.Integer, nullable=False),
    sa.Column("expiry", UInt64, nullable=False),
    sa.Column("capsule", sa.String(66)),
    sa.Column("break_glass", sa.Boolean, nullable=False, default=False),
    sa.Column("reason", sa.String(66)),
    sa.Column("block", sa.BigInteger, nullable=False),
    sa.Index("grants_by_grantee", "grantee"),
)

consent_log_t = sa.Table(  # every Granted / Revoked / BreakGlass, in chain order
    "consent_log",
    metadata,
    sa.Column("block", sa.BigInteger, primary_key=True),
    sa.Column("log_index", sa.Integer, primary_key=True),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("patient", sa.String(42), nullable=False, index=True),
    sa.Column("grantee", sa.String(42), nullable=False),
    sa.Column("scope", sa.String(66), nullable=False),
    sa.Column("purposes", sa.Integer),
    sa.Column("expiry", UInt64),
    sa.Column("capsule", sa.String(66)),  # Granted: the capsule block's digest, if any
    sa.Column("at", UInt64, nullable=False),
    sa.Column("tx", sa.String(66), nullable=False),
)

access_t = sa.Table(
    "access_log",
    metadata,
    sa.Column("block", sa.BigInteger, primary_key=True),
    sa.Column("log_index", sa.Integer, primary_key=True),
    sa.Column("patient", sa.String(42), nullable=False, index=True),
    sa.Column("accessor", sa.String(42), nullable=False, index=True),
    sa.Column("record", sa.String(66), nullable=False),
    sa.Column("purpose", sa.Integer, nullable=False),
    sa.Column("at", UInt64, nullable=False),
    sa.Column("gateway", sa.String(42), nullable=False),
    sa.Column("tx", sa.String(66), nullable=False),
)

_STATE_TABLES: Final = (participants_t, records_t, batches_t, grants_t, consent_log_t, access_t)
_FIRST_TABLES: Final = frozenset({"cursor", *(t.name for t in _STATE_TABLES)})  # schema 1


@dataclass(frozen=True)
class GrantRow:
    patient: str
    grantee: str
    scope: bytes
    purposes: Purpose
    expiry: int
    capsule: bytes | None
    break_glass: bool

    def active(self, now: float) -> bool:
        return self.expiry > now


@dataclass(frozen=True)
class AccessRow:
    patient: str
    accessor: str
    record: bytes
    purpose: Purpose
    at: int
    gateway: str
    tx: str


@dataclass(frozen=True)
class RecordRow:
    record: bytes
    patient: str
    kind: bytes
    supersedes: bytes | None
    author: str
    cid: bytes
    anchored_at: int
    superseded: bool
    erased: bool


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _unhex(s: str | None) -> bytes | None:
    return bytes.fromhex(s[2:]) if s else None


def _record_row(r: Any) -> RecordRow:
    return RecordRow(
        _unhex(r["record"]) or b"",
        r["patient"],
        _unhex(r["kind"]) or b"",
        _unhex(r["supersedes"]),
        r["author"],
        bytes(r["cid"]),
        int(r["anchored_at"]),
        bool(r["superseded"]),
        bool(r["erased"]),
    )


def engine_for(url: str) -> sa.Engine:
    """An engine for a SQLAlchemy URL; SQLite gets WAL and a busy timeout."""
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use indexer database URL ({type(exc).__name__})") from exc
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    return engine


def ensure_schema(engine: sa.Engine) -> None:
    """Create the tables, or drop and create them if an older medmesh wrote them.

    The index is a cache of the chain: after a layout change it is simply built again (the
    cursor goes with the tables, so the next sync starts at the deployment block).
    """
    for attempt in range(2):  # another process may be doing the same at the same moment
        try:
            with engine.begin() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                version = None
                if schema_t.name in tables:
                    version = conn.execute(sa.select(sa.func.max(schema_t.c.version))).scalar()
                if version == SCHEMA_VERSION:
                    return
                if version is not None and version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"the indexer database has schema {version}, newer than this medmesh "
                        f"({SCHEMA_VERSION}); upgrade medmesh or give it another database"
                    )
                if tables & (_FIRST_TABLES | {schema_t.name}):
                    log.warning(
                        "indexer database schema %s is out of date (now %d): rebuilding the "
                        "index from the chain", version or 1, SCHEMA_VERSION,
                    )  # fmt: skip
                    metadata.drop_all(conn)
                metadata.create_all(conn)
                conn.execute(schema_t.delete())
                conn.execute(sa.insert(schema_t).values(version=SCHEMA_VERSION))
                return
        except sa.exc.DBAPIError:
            if attempt:
                raise


@dataclass
class _Bulk:
    """Rows of the commonest events of a range, written with a few statements instead of
    one each: ``AccessLogged`` rows, and ``Anchored`` ones with the versions they supersede.
    Flushed before any other event is applied, so events still apply in chain order."""

    accesses: list[dict[str, Any]] = field(default_factory=list)
    anchors: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: sa.Connection) -> None:
        if self.anchors:
            conn.execute(sa.insert(records_t), self.anchors)
            replaced = [{"old": a["supersedes"]} for a in self.anchors if a["supersedes"]]
            if replaced:
                conn.execute(
                    sa.update(records_t)
                    .where(records_t.c.record == sa.bindparam("old"))
                    .values(superseded=True),
                    replaced,
                )
            self.anchors = []
        if self.accesses:
            conn.execute(sa.insert(access_t), self.accesses)
            self.accesses = []


class Indexer:
    """Follows the medmesh contracts of ``ledger`` into the database at ``url``."""

    def __init__(self, ledger: Ledger, url: str, *, confirmations: int = 0) -> None:
        if confirmations < 0:
            raise ConfigError("confirmations cannot be negative")
        self.ledger = ledger
        self.confirmations = confirmations
        self.engine = engine_for(url)
        try:
            ensure_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self._contracts: dict[str, Contract] = {
            c.address: c for c in (ledger.registry, ledger.records, ledger.consent, ledger.token)
        }
        self._lock = threading.Lock()

    # -- following -------------------------------------------------------------------------

    def _cursor(self, conn: sa.Connection) -> tuple[int, str] | None:
        row = conn.execute(sa.select(cursor_t).where(cursor_t.c.id == 1)).mappings().first()
        if row is None:
            return None
        book = self.ledger.book
        if row["chain_id"] != book.chain_id or row["registry"] != book.contracts["Registry"]:
            return None  # another chain or deployment: start over
        return int(row["block"]), str(row["block_hash"])

    def head(self) -> int:
        """The newest block the indexer may trust (head − confirmations)."""
        return self.ledger.block_number() - self.confirmations

    def indexed_block(self) -> int | None:
        with self.engine.connect() as conn:
            cursor = self._cursor(conn)
        return cursor[0] if cursor else None

    def sync(self, *, until: int | None = None) -> int:
        """Index every confirmed block not yet indexed; returns how many events were applied."""
        with self._lock:
            return self._sync(until)

    def _sync(self, until: int | None) -> int:
        target = self.head() if until is None else min(until, self.head())
        with self.engine.connect() as conn:
            cursor = self._cursor(conn)
        if cursor is not None:
            block, block_hash = cursor
            on_chain = self.ledger.rpc.call("eth_getBlockByNumber", hex(block), False)
            if on_chain is None or on_chain["hash"] != block_hash:
                self._reset()
                cursor = None
        start = cursor[0] + 1 if cursor else self.ledger.book.block
        applied = 0
        while start <= target:
            end = min(start + MAX_RANGE - 1, target)
            applied += self._index_range(start, end)
            start = end + 1
        return applied

    def _reset(self) -> None:
        with self.engine.begin() as conn:
            for table in (*_STATE_TABLES, cursor_t):
                conn.execute(table.delete())

    def rebuild(self) -> int:
        """Drop everything and index again from the deployment block."""
        with self._lock:
            self._reset()
            return self._sync(None)

    def _index_range(self, start: int, end: int) -> int:
        rpc = self.ledger.rpc
        logs = rpc.call(
            "eth_getLogs",
            {"fromBlock": hex(start), "toBlock": hex(end), "address": list(self._contracts)},
        )
        blocks = sorted({int(log["blockNumber"], 16) for log in logs} | {end})
        headers = rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in blocks])
        times = {
            b: int(h["timestamp"], 16)
            for b, h in zip(blocks, headers, strict=True)
            if isinstance(h, dict)
        }
        end_header = headers[-1]
        if not isinstance(end_header, dict):
            return 0  # the chain moved under us; the next sync retries
        with self.engine.begin() as conn:
            bulk = _Bulk()  # the bulk of the events (accesses, anchors): a few statements
            for log in logs:
                if log.get("removed"):
                    continue
                self._apply(conn, log, times[int(log["blockNumber"], 16)], bulk)
            bulk.flush(conn)
            values = {
                "chain_id": self.ledger.book.chain_id,
                "registry": self.ledger.book.contracts["Registry"],
                "block": end,
                "block_hash": end_header["hash"],
            }
            if (
                conn.execute(
                    sa.update(cursor_t).where(cursor_t.c.id == 1).values(**values)
                ).rowcount
                == 0
            ):
                conn.execute(sa.insert(cursor_t).values(id=1, **values))
        return len(logs)

    def _apply(self, conn: sa.Connection, log: dict[str, Any], at: int, bulk: _Bulk) -> None:
        contract = self._contracts.get(checksum(log["address"]))
        decoded = contract.codec.decode(log) if contract is not None else None
        if decoded is None:
            return
        name, args = decoded
        block = int(log["blockNumber"], 16)
        index = int(log["logIndex"], 16)
        tx = log["transactionHash"]
        if name == "AccessLogged":
            bulk.accesses.append(
                {"block": block, "log_index": index, "patient": args["patient"],
                 "accessor": args["accessor"], "record": _hex(args["record"]),
                 "purpose": int(args["purpose"]), "at": int(args["at"]),
                 "gateway": args["gateway"], "tx": tx}
            )  # fmt: skip
            return
        if name == "Anchored":
            supersedes = bytes(args["supersedes"])
            bulk.anchors.append(
                {"record": _hex(args["record"]), "patient": checksum(args["patient"]),
                 "kind": _hex(args["kind"]), "supersedes": _hex(supersedes) if any(supersedes) else None,
                 "author": checksum(args["author"]), "cid": bytes(args["cid"]), "anchored_at": at,
                 "block": block, "tx": tx, "superseded": False, "erased": False}
            )  # fmt: skip
            return
        handler = getattr(self, f"_on_{name}", None)
        if handler is not None:  # Transfer, Approval, RoleGranted, ... are not indexed
            bulk.flush(conn)  # what came before it first (an Erased may name a new record)
            handler(conn, args, block=block, index=index, tx=tx, at=at)

    # Registry

    def _upsert_participant(
        self, conn: sa.Connection, account: str, block: int, **values: Any
    ) -> None:
        account = checksum(account)
        updated = conn.execute(
            sa.update(participants_t)
            .where(participants_t.c.account == account)
            .values(block=block, **values)
        ).rowcount
        if not updated:
            conn.execute(
                sa.insert(participants_t).values(
                    account=account, block=block, **{"roles": 0, **values}
                )
            )

    def _on_Registered(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        self._upsert_participant(
            conn, a["account"], m["block"], roles=int(a["roles"]),
            encryption_key=_hex(a["encryption_key"]), metadata_uri=a["metadata_uri"],
        )  # fmt: skip

    def _on_RolesChanged(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        self._upsert_participant(conn, a["account"], m["block"], roles=int(a["roles"]))

    def _on_EncryptionKeyRotated(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        self._upsert_participant(
            conn, a["account"], m["block"], encryption_key=_hex(a["encryption_key"])
        )

    def _on_MetadataChanged(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        self._upsert_participant(conn, a["account"], m["block"], metadata_uri=a["metadata_uri"])

    # Records

    def _on_Erased(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        conn.execute(
            sa.update(records_t).where(records_t.c.record == _hex(a["record"])).values(erased=True)
        )

    def _on_BatchAnchored(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        conn.execute(
            sa.insert(batches_t).values(
                root=_hex(a["root"]),
                author=checksum(a["author"]),
                count=int(a["count"]),
                block=m["block"],
            )
        )

    # Consent

    def _set_grant(self, conn: sa.Connection, key: dict[str, str], values: dict[str, Any]) -> None:
        where = sa.and_(*(grants_t.c[k] == v for k, v in key.items()))
        if not conn.execute(sa.update(grants_t).where(where).values(**values)).rowcount:
            conn.execute(sa.insert(grants_t).values(**key, **values))

    def _log_consent(
        self, conn: sa.Connection, event: str, key: dict[str, str], m: dict[str, Any], **extra: Any
    ) -> None:
        conn.execute(
            sa.insert(consent_log_t).values(
                block=m["block"],
                log_index=m["index"],
                event=event,
                at=m["at"],
                tx=m["tx"],
                **key,
                **extra,
            )
        )

    def _on_Granted(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        key = {
            "patient": checksum(a["patient"]),
            "grantee": checksum(a["grantee"]),
            "scope": _hex(a["scope"]),
        }
        capsule = bytes(a["capsule"])
        values = {
            "purposes": int(a["purposes"]), "expiry": int(a["expiry"]),
            "capsule": _hex(capsule) if any(capsule) else None, "break_glass": False, "reason": None,
            "block": m["block"],
        }  # fmt: skip
        self._set_grant(conn, key, values)
        self._log_consent(
            conn, "granted", key, m,
            purposes=values["purposes"], expiry=values["expiry"], capsule=values["capsule"],
        )  # fmt: skip

    def _on_Revoked(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        key = {
            "patient": checksum(a["patient"]),
            "grantee": checksum(a["grantee"]),
            "scope": _hex(a["scope"]),
        }
        conn.execute(
            sa.delete(grants_t).where(sa.and_(*(grants_t.c[k] == v for k, v in key.items())))
        )
        self._log_consent(conn, "revoked", key, m)

    def _on_BreakGlass(self, conn: sa.Connection, a: dict[str, Any], **m: Any) -> None:
        key = {
            "patient": checksum(a["patient"]),
            "grantee": checksum(a["provider"]),
            "scope": _hex(BREAK_GLASS_SCOPE),
        }
        values = {
            "purposes": int(Purpose.EMERGENCY), "expiry": int(a["expiry"]), "capsule": None,
            "break_glass": True, "reason": _hex(a["reason"]), "block": m["block"],
        }  # fmt: skip
        self._set_grant(conn, key, values)
        self._log_consent(
            conn, "break_glass", key, m, purposes=values["purposes"], expiry=values["expiry"]
        )

    def follow(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """Sync every ``interval`` seconds until ``stop`` is set (errors are retried)."""
        while not stop.is_set():
            try:
                self.sync()
            except Exception:
                stop.wait(min(interval * 4, 5.0))
                continue
            stop.wait(interval)

    # -- questions ------------------------------------------------------------------------------

    def grants(
        self,
        *,
        patient: str | None = None,
        grantee: str | None = None,
        active_at: float | None = None,
        patients: Sequence[str] | None = None,
    ) -> list[GrantRow]:
        """Current grants (optionally only those not expired at ``active_at``), of
        ``patient`` or of any of ``patients`` (one query for many)."""
        query = sa.select(grants_t)
        if patient:
            query = query.where(grants_t.c.patient == checksum(patient))
        if patients is not None:
            query = query.where(grants_t.c.patient.in_({checksum(p) for p in patients}))
        if grantee:
            query = query.where(grants_t.c.grantee == checksum(grantee))
        if active_at is not None and active_at >= 0:  # (every uint64 is > a negative time)
            if active_at >= UINT64_MAX:
                return []
            query = query.where(grants_t.c.expiry > int(active_at))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(grants_t.c.block)).mappings().all()
        return [
            GrantRow(
                r["patient"],
                r["grantee"],
                _unhex(r["scope"]) or b"",
                Purpose(r["purposes"]),
                int(r["expiry"]),
                _unhex(r["capsule"]),
                bool(r["break_glass"]),
            )
            for r in rows
        ]

    def consent_changed(self, grantee: str, since_block: int) -> set[str]:
        """Patients whose grants to ``grantee`` changed after ``since_block`` (granted,
        revoked, broken glass), for caches of what a grantee may read (a FHIR gateway's
        search index)."""
        grantee = checksum(grantee)
        with self.engine.connect() as conn:
            return {
                r[0]
                for r in conn.execute(
                    sa.select(consent_log_t.c.patient).where(
                        consent_log_t.c.grantee == grantee, consent_log_t.c.block > since_block
                    )
                )
            }

    def records_anchored(self, grantee: str, since_block: int) -> list[RecordRow]:
        """Records anchored after ``since_block`` by ``grantee`` itself or by patients who
        grant it something, by block (what a cache of what ``grantee`` may read has
        to look at, besides :meth:`consent_changed`)."""
        grantee = checksum(grantee)
        granting = sa.select(grants_t.c.patient).where(grants_t.c.grantee == grantee)
        query = (
            sa.select(records_t)
            .where(
                records_t.c.block > since_block,
                sa.or_(records_t.c.patient.in_(granting), records_t.c.patient == grantee),
            )
            .order_by(records_t.c.block)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [_record_row(r) for r in rows]

    def patients_expiring(self, grantee: str, after: float, until: float) -> set[str]:
        """Patients with a current grant to ``grantee`` that expires in ``(after, until]``
        (seconds since the epoch): the expiries a cache of what ``grantee`` may read must
        follow, since an expiry emits no event."""
        if until <= after:
            return set()
        grantee = checksum(grantee)
        with self.engine.connect() as conn:
            return {
                r[0]
                for r in conn.execute(
                    sa.select(grants_t.c.patient).where(
                        grants_t.c.grantee == grantee,
                        grants_t.c.expiry > int(after),
                        grants_t.c.expiry <= int(until),
                    )
                )
            }

    def capsule_ref(self, patient: str, grantee: str, scope: bytes) -> bytes | None:
        """The capsule digest referenced by the current grant, if any."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(grants_t.c.capsule).where(
                    grants_t.c.patient == checksum(patient),
                    grants_t.c.grantee == checksum(grantee),
                    grants_t.c.scope == _hex(scope),
                )
            ).scalar()
        return _unhex(value)

    def accesses(
        self,
        *,
        patient: str | None = None,
        accessor: str | None = None,
        record: bytes | None = None,
        since: int | None = None,
        limit: int = 1000,
    ) -> list[AccessRow]:
        """Logged accesses, newest first."""
        query = sa.select(access_t)
        if patient:
            query = query.where(access_t.c.patient == checksum(patient))
        if accessor:
            query = query.where(access_t.c.accessor == checksum(accessor))
        if record:
            query = query.where(access_t.c.record == _hex(record))
        if since is not None and since > 0:  # (every uint64 is >= 0)
            if since > UINT64_MAX:
                return []
            query = query.where(access_t.c.at >= since)
        query = query.order_by(access_t.c.block.desc(), access_t.c.log_index.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            AccessRow(
                r["patient"],
                r["accessor"],
                _unhex(r["record"]) or b"",
                Purpose(r["purpose"]),
                int(r["at"]),
                r["gateway"],
                r["tx"],
            )
            for r in rows
        ]

    def consent_history(self, patient: str) -> list[dict[str, Any]]:
        """Every grant, revocation and break-glass for ``patient``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(consent_log_t)
                .where(consent_log_t.c.patient == checksum(patient))
                .order_by(consent_log_t.c.block, consent_log_t.c.log_index)
            ).mappings()
            return [dict(r) for r in rows]

    def capsule_refs(self, patient: str) -> list[bytes]:
        """Every capsule block digest ``patient``'s grants ever referenced (current, replaced,
        revoked or expired), oldest first: what erasing a record must look through."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(consent_log_t.c.capsule)
                .where(
                    consent_log_t.c.patient == checksum(patient),
                    consent_log_t.c.capsule.is_not(None),
                )
                .order_by(consent_log_t.c.block, consent_log_t.c.log_index)
            ).scalars()
            seen: dict[bytes, None] = {}
            for value in rows:
                seen.setdefault(bytes.fromhex(value[2:]), None)
        return list(seen)

    def records(self, patient: str, *, include_history: bool = False) -> list[RecordRow]:
        """A patient's anchored records (current versions unless ``include_history``)."""
        query = sa.select(records_t).where(records_t.c.patient == checksum(patient))
        if not include_history:
            query = query.where(records_t.c.superseded.is_(False))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(records_t.c.block)).mappings().all()
        return [_record_row(r) for r in rows]

    def record(self, record: bytes) -> RecordRow | None:
        with self.engine.connect() as conn:
            r = (
                conn.execute(sa.select(records_t).where(records_t.c.record == _hex(record)))
                .mappings()
                .first()
            )
        if r is None:
            return None
        return _record_row(r)

    def participant(self, account: str) -> tuple[Role, bytes | None, str] | None:
        with self.engine.connect() as conn:
            r = (
                conn.execute(
                    sa.select(participants_t).where(participants_t.c.account == checksum(account))
                )
                .mappings()
                .first()
            )
        if r is None:
            return None
        return Role(r["roles"]), _unhex(r["encryption_key"]), r["metadata_uri"] or ""

    def close(self) -> None:
        self.engine.dispose()

    def counts(self) -> dict[str, int]:
        """Rows per table (for status and tests)."""
        with self.engine.connect() as conn:
            return {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar() or 0)
                for t in _STATE_TABLES
            }
