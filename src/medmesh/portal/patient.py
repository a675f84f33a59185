"""The patient's pages: their records (newest first, readable), who can see what and until
when, grants and revocations, the audit trail, uploads and a download of everything.

Only the signed-in owner's own records are opened here (with the wallet unlocked at sign-in);
plaintext is kept in the session (dropped at sign-out) so that the pages stay fast.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from medmesh.consent.sharing import GrantResult, NewRecord
from medmesh.errors import InvalidInputError, MedmeshError, NotFoundError
from medmesh.interop.dicom.study import RECORD_KIND as DICOM_KIND
from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.types import SUPPORTED_TYPES
from medmesh.interop.fhir.validation import (
    MAX_BUNDLE_BYTES,
    in_entry,
    parse_json,
    validate_resource,
)
from medmesh.ledger.contracts import Purpose, Scope
from medmesh.ledger.indexer import RecordRow
from medmesh.portal.auth import PortalSession
from medmesh.portal.labels import DURATIONS, kind_label, kind_name, scope_label, short_address, when
from medmesh.portal.render import RecordView, describe
from medmesh.portal.service import Portal
from medmesh.storage.cid import Cid

__all__ = [
    "AuditItem",
    "ConsentItem",
    "RecordItem",
    "UploadRefused",
    "audit",
    "consents",
    "export_bundle",
    "grant",
    "parse_upload",
    "revoke",
    "timeline",
]

MAX_UPLOAD: Final = MAX_BUNDLE_BYTES
_OPEN_AT_ONCE: Final = 16


@dataclass
class RecordItem:
    """One record in a timeline."""

    record: str  # 0x + 64 hex digits
    cid: str
    kind: str  # for people: Observation, Document…
    kind_name: str  # fhir:Observation, document…
    anchored_at: int
    author: str
    view: RecordView | None = None
    resource: dict[str, Any] | None = None
    size: int = 0
    error: str = ""

    @property
    def anchored(self) -> str:
        return when(self.anchored_at)

    @property
    def sort_key(self) -> tuple[str, int]:
        return ((self.view.when if self.view else "") or "", self.anchored_at)


@dataclass(frozen=True)
class ConsentItem:
    grantee: str
    grantee_label: str
    scope: str  # 0x + the scope word
    scope_label: str
    purposes: str
    expiry: int
    break_glass: bool

    @property
    def until(self) -> str:
        return "no end" if self.expiry >= 2**63 else when(self.expiry)


@dataclass(frozen=True)
class AuditItem:
    at: float
    who: str
    record: str
    record_label: str
    purpose: str
    outcome: str  # allowed | refused
    reason: str = ""

    @property
    def moment(self) -> str:
        return when(self.at)


@dataclass
class UploadRefused(Exception):
    """An upload that is not valid FHIR: every issue found (nothing was stored)."""

    issues: list[Issue] = field(default_factory=list)


def _item(portal: Portal, row: RecordRow) -> RecordItem:
    return RecordItem(
        "0x" + row.record.hex(),
        str(Cid.from_bytes(row.cid)),
        kind_label(row.kind),
        kind_name(row.kind),
        row.anchored_at,
        portal.name_of(row.author) or short_address(row.author),
    )


def _fill(item: RecordItem, plain: bytes) -> None:
    item.size = len(plain)
    if item.kind_name.startswith("fhir:"):
        try:
            resource = json.loads(plain)
        except ValueError:
            item.error = "this record is not readable JSON"
            return
        item.resource = resource if isinstance(resource, dict) else None
        item.view = describe(resource)
    else:
        item.view = RecordView(item.kind, "File", value=f"{len(plain):,} bytes")


async def timeline(portal: Portal, session: PortalSession) -> list[RecordItem]:
    """The user's current records, opened, newest first (by clinical date, else anchoring)."""
    rows = [
        r for r in await asyncio.to_thread(portal.indexer.records, session.address) if not r.erased
    ]
    items = [_item(portal, r) for r in rows]
    wallet = session.wallet
    if wallet is None:
        for item in items:
            item.error = "sign in with your keystore to open this record"
        return sorted(items, key=lambda i: i.anchored_at, reverse=True)
    todo = [(r, i) for r, i in zip(rows, items, strict=True) if r.record not in session.opened]
    gate = asyncio.Semaphore(_OPEN_AT_ONCE)

    async def open_one(row: RecordRow) -> bytes:
        async with gate:
            return await portal.open_record(portal.own_access(row), wallet)

    results = await asyncio.gather(*(open_one(r) for r, _ in todo), return_exceptions=True)
    for (row, item), result in zip(todo, results, strict=True):
        if isinstance(result, bytes):
            session.opened[row.record] = result
        elif isinstance(result, MedmeshError):
            item.error = f"could not be opened ({result.code})"
        elif isinstance(result, BaseException):
            item.error = "could not be opened"
    for row, item in zip(rows, items, strict=True):
        plain = session.opened.get(row.record)
        if plain is not None:
            _fill(item, plain)
    return sorted(items, key=lambda i: i.sort_key, reverse=True)


async def one_record(portal: Portal, session: PortalSession, record: bytes) -> RecordItem:
    row = await asyncio.to_thread(portal.indexer.record, record)
    if row is None or row.patient.lower() != session.address.lower() or row.erased:
        raise NotFoundError("you have no such record")
    item = _item(portal, row)
    plain = session.opened.get(record)
    if plain is None and session.wallet is not None:
        plain = await portal.open_record(portal.own_access(row), session.wallet)
        session.opened[record] = plain
    if plain is None:
        item.error = "sign in with your keystore to open this record"
    else:
        _fill(item, plain)
    return item


def consents(portal: Portal, address: str) -> list[ConsentItem]:
    """Who can see the user's records now, and until when (from the index)."""
    records = {
        r.record: f"{kind_label(r.kind)} of {when(r.anchored_at)}"
        for r in portal.indexer.records(address, include_history=True)
    }
    out = []
    for g in portal.indexer.grants(patient=address, active_at=portal.clock()):
        out.append(
            ConsentItem(
                g.grantee,
                portal.name_of(g.grantee) or g.grantee,
                "0x" + g.scope.hex(),
                scope_label(g.scope, records),
                g.purposes.names().replace(",", ", "),
                g.expiry,
                g.break_glass,
            )
        )
    return sorted(out, key=lambda c: (c.grantee_label, c.scope_label))


def audit(portal: Portal, address: str, *, limit: int = 200) -> list[AuditItem]:
    """Who accessed which of the user's records, when, allowed (the chain's access log) or
    refused (this gateway's refusals), newest first."""
    records = {
        "0x" + r.record.hex(): f"{kind_label(r.kind)} of {when(r.anchored_at)}"
        for r in portal.indexer.records(address, include_history=True)
    }
    out = [
        AuditItem(
            a.at,
            portal.name_of(a.accessor) or a.accessor,
            "0x" + a.record.hex(),
            records.get("0x" + a.record.hex(), "a record"),
            a.purpose.names(),
            "allowed",
        )
        for a in portal.indexer.accesses(patient=address, limit=limit)
    ]
    mine = address.lower()
    for r in portal.gateway.log.refusals(limit=5000):
        record = r.get("record")
        whose = r.get("patient")
        if isinstance(record, str) and record in records:
            what = records[record]
        elif record is None and isinstance(whose, str) and whose.lower() == mine:
            record, what = "", "your records (the list)"
        else:
            continue
        requester = str(r.get("requester") or "unknown")
        purpose = r.get("purpose")
        out.append(
            AuditItem(
                float(r["at"]),  # type: ignore[arg-type]
                portal.name_of(requester) or requester,
                record,
                what,
                Purpose(int(purpose)).names() if isinstance(purpose, int) and purpose else "",
                "refused",
                str(r.get("reason") or ""),
            )
        )
    out.sort(key=lambda a: a.at, reverse=True)
    return out[:limit]


def parse_scope(text: str, patient: str) -> Scope:
    """``all``, ``kind:<kind>`` or ``record:<cid>`` (one of ``patient``'s records)."""
    if text == "all":
        return Scope.all()
    if text.startswith("kind:"):
        return Scope.kind(text[5:])
    if text.startswith("record:"):
        return Scope.record(patient, Cid.parse(text[7:]))
    raise InvalidInputError("choose all records, one kind of record, or one record")


def grant(
    portal: Portal,
    session: PortalSession,
    *,
    grantee: str,
    scope: str,
    purpose: str,
    duration: str,
) -> GrantResult:
    """Grant ``grantee`` access (the user's wallet signs; capsules for records in scope)."""
    seconds = next((s for key, _, s in DURATIONS if key == duration), None)
    if seconds is None:
        raise InvalidInputError("choose how long the access lasts")
    if grantee not in {p.address for p in portal.institutions()}:
        raise InvalidInputError("choose a registered provider or lab")
    tools = portal.tools(session)
    with session.lock:
        result = tools.keeper.grant(
            grantee,
            parse_scope(scope, session.address),
            Purpose.parse(purpose),
            int(portal.clock()) + seconds,
        )
    portal.indexer.sync()
    return result


def revoke(portal: Portal, session: PortalSession, *, grantee: str, scope: str) -> str:
    """End the grant of ``grantee`` at ``scope`` (hex word) now."""
    try:
        word = bytes.fromhex(scope.removeprefix("0x"))
    except ValueError:
        raise InvalidInputError("unknown consent") from None
    current = {
        (g.grantee, "0x" + g.scope.hex())
        for g in portal.indexer.grants(patient=session.address, active_at=portal.clock())
    }
    if (grantee, "0x" + word.hex()) not in current:
        raise NotFoundError("no such current consent of yours")
    tools = portal.tools(session)
    with session.lock:
        tx = tools.keeper.revoke(grantee, Scope.from_word(word))
    portal.indexer.sync()
    return tx


def _checked_dicom(data: bytes) -> bytes:
    """``data`` if it is a whole DICOM instance (the checks of ``medmesh dicom import``:
    readable header, the UIDs an instance needs, no truncated element), else
    :class:`InvalidInputError` with a fixed message (nothing of the file is echoed)."""
    import tempfile

    from medmesh.interop.dicom.files import check

    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            check(tmp.name)
        except MedmeshError:
            raise InvalidInputError(
                "This file is named or marked as DICOM but is not a whole, valid DICOM "
                "instance (unreadable, missing its identifiers, or truncated). Nothing was stored."
            ) from None
    return data


def parse_upload(data: bytes, filename: str = "") -> list[tuple[bytes, str]]:
    """What an upload becomes: ``(record bytes, kind)`` pairs. JSON with a ``resourceType``
    is FHIR and must be valid (a Bundle: every entry's resource), anything else a file.
    Raises :class:`UploadRefused` listing every issue, or :class:`InvalidInputError`."""
    if not data:
        raise InvalidInputError("choose a file to upload")
    if len(data) > MAX_UPLOAD:
        raise InvalidInputError(f"the file is larger than {MAX_UPLOAD // (1024 * 1024)} MB")
    if filename.lower().endswith((".dcm", ".dicom")) or data[128:132] == b"DICM":
        return [(_checked_dicom(data), DICOM_KIND)]
    looks_json = filename.lower().endswith(".json") or data.lstrip()[:1] in (b"{", b"[")
    if not looks_json:
        return [(data, "document")]
    try:
        doc = parse_json(data, limit=MAX_UPLOAD)
    except FhirError as exc:
        raise UploadRefused(list(exc.issues)) from None
    if "resourceType" not in doc:
        raise UploadRefused([Issue("error", "structure", "JSON without a resourceType", [])])
    if doc.get("resourceType") == "Bundle":
        resources, paths = [], []
        for i, entry in enumerate(doc.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is not None:
                resources.append(resource)
                paths.append(f"Bundle.entry[{i}].resource")
        if not resources:
            raise UploadRefused([Issue("error", "required", "the Bundle has no resources", ["Bundle.entry"])])  # fmt: skip
    else:
        resources, paths = [doc], [""]
    issues: list[Issue] = []
    out = []
    for resource, path in zip(resources, paths, strict=True):
        try:
            validate_resource(resource, allow_types=SUPPORTED_TYPES)
        except FhirError as exc:
            issues += [in_entry(i, path) if path else i for i in exc.issues]
            continue
        body = dict(resource)
        body.setdefault("id", str(uuid.uuid4()))
        out.append(
            (
                json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
                f"fhir:{body['resourceType']}",
            )
        )
    if issues:
        raise UploadRefused(issues)
    return out


def store_upload(portal: Portal, session: PortalSession, items: list[tuple[bytes, str]]) -> int:
    """Seal (for the user and their current grantees), store and anchor; returns how many."""
    tools = portal.tools(session)
    with session.lock:
        puts = tools.keeper.put_many([NewRecord(data, kind) for data, kind in items])
    portal.indexer.sync()
    for put, (data, _) in zip(puts, items, strict=True):
        session.opened[put.record] = data
    return len(puts)


async def export_bundle(portal: Portal, session: PortalSession) -> dict[str, Any]:
    """A FHIR ``collection`` Bundle of every FHIR resource of the user's (decrypted)."""
    items = await timeline(portal, session)
    entries = [
        {"fullUrl": f"urn:medmesh:record:{i.record}", "resource": i.resource}
        for i in reversed(items)
        if i.resource is not None
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": when_iso(portal.clock()),
        "entry": entries,
    }


def when_iso(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def scope_choices(items: list[RecordItem]) -> list[tuple[str, str]]:
    """The scopes a grant form offers: all records, each kind the user has."""
    kinds = sorted({(i.kind_name, i.kind) for i in items if not i.kind_name.startswith("kind ")})
    return [("all", "All records")] + [(f"kind:{k}", f"{label} records") for k, label in kinds]
