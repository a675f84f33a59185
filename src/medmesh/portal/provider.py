"""The provider's pages (hospitals, labs): the patients who granted them access, each patient's
records, and adding a record for a patient.

Every read goes through the gateway's decision, exactly like the FHIR API's reads:
``Consent.has_access`` at the latest block for each record (:meth:`Gateway.authorize_each`,
one JSON-RPC batch), each outcome logged (allowed ones on chain, refusals locally); only
then is the record opened, with the provider's own keys. A patient page with no current grant
for the purpose is refused (and that refusal logged) without reading anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from medmesh.consent.gateway import Access
from medmesh.consent.sharing import NewRecord
from medmesh.errors import ConsentError, MedmeshError, NotFoundError
from medmesh.ledger.contracts import ALL_SCOPE, Purpose
from medmesh.ledger.events import checksum
from medmesh.ledger.indexer import RecordRow
from medmesh.portal.auth import PortalSession
from medmesh.portal.labels import scope_label, when
from medmesh.portal.patient import RecordItem, _fill, _item, parse_upload
from medmesh.portal.service import Portal

__all__ = [
    "PatientLink",
    "add_record",
    "patient_records",
    "patients",
    "provider_record",
    "read_purposes",
]

_OPEN_AT_ONCE: Final = 16


@dataclass
class PatientLink:
    """A patient who granted this provider something now."""

    address: str
    label: str
    scopes: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=list)
    until: int = 0

    @property
    def until_text(self) -> str:
        return "no end" if self.until >= 2**63 else when(self.until)


def patients(portal: Portal, address: str) -> list[PatientLink]:
    """The patients with a current grant to ``address``."""
    out: dict[str, PatientLink] = {}
    for g in portal.indexer.grants(grantee=address, active_at=portal.clock()):
        link = out.setdefault(
            g.patient, PatientLink(g.patient, portal.name_of(g.patient) or g.patient)
        )
        link.scopes.append(scope_label(g.scope))
        for name in g.purposes.names().split(","):
            if name and name not in link.purposes:
                link.purposes.append(name)
        link.until = max(link.until, g.expiry)
    return sorted(out.values(), key=lambda p: p.label)


def read_purposes(link: PatientLink) -> list[str]:
    """The purposes a provider may read for (contribute only writes)."""
    return [p for p in link.purposes if p != "contribute"]


def _covered(portal: Portal, me: str, patient: str, purpose: Purpose) -> list[RecordRow]:
    """The patient's current records that this provider's grants (per the index) cover for
    ``purpose``: what the page asks the chain about."""
    rows = [r for r in portal.indexer.records(patient) if not r.erased]
    scopes = {
        g.scope
        for g in portal.indexer.grants(patient=patient, grantee=me, active_at=portal.clock())
        if purpose in g.purposes
    }
    if ALL_SCOPE in scopes:
        return rows
    return [r for r in rows if r.record in scopes or b"\0" * 28 + r.kind in scopes]


async def _open(portal: Portal, session: PortalSession, access: Access, item: RecordItem) -> None:
    plain = session.opened.get(access.record)
    if plain is None:
        if session.wallet is None:
            item.error = "sign in with your keystore to open records"
            return
        try:
            plain = await portal.open_record(access, session.wallet)
        except MedmeshError as exc:
            item.error = f"could not be opened ({exc.code})"
            return
        session.opened[access.record] = plain
    _fill(item, plain)


async def patient_records(
    portal: Portal, session: PortalSession, patient: str, purpose: Purpose
) -> list[RecordItem]:
    """The patient's records this provider may read for ``purpose`` now, each read allowed
    by the chain and logged; :class:`ConsentError` (logged) when none is."""
    me = session.address
    rows = await asyncio.to_thread(_covered, portal, me, patient, purpose)
    if not rows:
        portal.gateway.log.refused(me, None, int(purpose), "no_consent", patient=patient)
        raise ConsentError("no current consent of this patient's lets you read their records")
    decided = await asyncio.to_thread(
        portal.gateway.authorize_each, [(me, r.record, purpose) for r in rows]
    )
    allowed = [
        (row, access)
        for row, access in zip(rows, decided, strict=True)
        if not isinstance(access, MedmeshError)
    ]
    if not allowed:
        raise ConsentError("no current consent of this patient's lets you read their records")
    items = [_item(portal, row) for row, _ in allowed]
    gate = asyncio.Semaphore(_OPEN_AT_ONCE)

    async def one(access: Access, item: RecordItem) -> None:
        async with gate:
            await _open(portal, session, access, item)

    await asyncio.gather(*(one(a, i) for (_, a), i in zip(allowed, items, strict=True)))
    return sorted(items, key=lambda i: i.sort_key, reverse=True)


async def provider_record(
    portal: Portal, session: PortalSession, patient: str, record: bytes, purpose: Purpose
) -> RecordItem:
    """One record of the patient's, if the chain allows it now (the decision is logged)."""
    row = await asyncio.to_thread(portal.indexer.record, record)
    if row is None or row.patient.lower() != patient.lower():
        raise NotFoundError("no such record of this patient's")
    access = await portal.gateway.authorize_async(session.address, record, purpose)
    item = _item(portal, row)
    await _open(portal, session, access, item)
    return item


def add_record(
    portal: Portal, session: PortalSession, patient: str, data: bytes, filename: str = ""
) -> int:
    """Store a record for ``patient`` (validated like an upload; sealed for the patient,
    their current grantees and this provider; anchored with the patient's CONTRIBUTE
    consent, which is checked first)."""
    patient = checksum(patient)
    items = parse_upload(data, filename)
    tools = portal.tools(session)
    consent = tools.ledger.consent
    for kind in {kind for _, kind in items}:
        if not consent.has_kind_access(patient, session.address, kind, Purpose.CONTRIBUTE):
            raise ConsentError(
                f"this patient has not let you add {kind_name_label(kind)} records (contribute)"
            )
    with session.lock:
        puts = tools.keeper.put_many(
            [NewRecord(body, kind, patient=patient) for body, kind in items]
        )
    portal.indexer.sync()
    return len(puts)


def kind_name_label(kind: str) -> str:
    return kind.removeprefix("fhir:")
