"""STOW-RS on a FHIR gateway: DICOM instances in, records and ImagingStudy resources out.

``POST /dicomweb/studies[/{study}]?subject=Patient/<id>`` (multipart/related;
type="application/dicom", one Part-10 file per part) is how ``medmesh dicom import`` and any
DICOMweb client store studies for a patient. For each part, spooled to a file in the
gateway's home (mode 0700) and deleted once handled:

1. :func:`~medmesh.interop.dicom.files.check` reads its header (not DICOM, truncated or
   without its UIDs: refused, nothing stored);
2. unless its ImagingStudy already links a record for the instance, it is stored as one
   record of kind :data:`~medmesh.interop.dicom.study.RECORD_KIND` for the Patient's owner
   (sealed for the patient, current grantees and the institution, streamed, erasure-coded,
   anchored with ``anchor_for``: :meth:`RecordKeeper.put`);
3. when the body has ended, each study's ImagingStudy (id
   :func:`~medmesh.interop.dicom.study.study_resource_id`) is created or updated through the
   repository, merged with the stored version, every instance carrying its record's CID.

Why the gateway stores the records rather than the command line: both act for the same
institution account, and two processes sending transactions for one account, each counting
its nonces, replace or block each other's transactions (the gateway's access log sends some
every second). The gateway is the one signer; the command line streams the files to it.

The answer is the PS3.18 store response (DICOM JSON): Referenced SOP Sequence (0008,1199)
for each instance now linked (stored now or before), Failed SOP Sequence (0008,1198) with a
Failure Reason (0008,1197) and medmesh's PHI-free reason text in the private element
(0009,1001) of creator ``MEDMESH``; status 200 when all were stored, 202 when some failed,
409 when none was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

from starlette.requests import ClientDisconnect

from medmesh.consent.sharing import PutRecord
from medmesh.errors import ConsentError, DicomError, InvalidInputError, MedmeshError
from medmesh.interop.dicom.files import DicomFile, check, group_studies
from medmesh.interop.dicom.multipart import PartParser
from medmesh.interop.dicom.study import (
    RECORD_KIND,
    imaging_study,
    merge_imaging_studies,
    record_cids,
    study_resource_id,
)
from medmesh.interop.fhir.index import IndexedResource
from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.repository import FhirRepository
from medmesh.interop.fhir.validation import validate_resource
from medmesh.ledger.contracts import Purpose

__all__ = [
    "FAILURE_CANNOT_UNDERSTAND",
    "FAILURE_PROCESSING",
    "PRIVATE_CREATOR",
    "REASON_TAG",
    "SPOOL_FOLDER",
    "StowSession",
    "clean_spool",
    "resolve_subject",
]

log = logging.getLogger(__name__)

FAILURE_PROCESSING: Final = 0x0110  # Processing failure
FAILURE_CANNOT_UNDERSTAND: Final = 0xC000  # Cannot understand
PRIVATE_CREATOR: Final = "MEDMESH"
CREATOR_TAG: Final = "00090010"
REASON_TAG: Final = "00091001"
_STUDY: Final = "ImagingStudy"
_STUDY_KIND: Final = "fhir:ImagingStudy"
_DICOM_MEDIA: Final = "application/dicom"
SPOOL_FOLDER: Final = "dicom-spool"  # in the gateway's home: parts being received
_PLACEHOLDER_CID: Final = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def clean_spool(spool: Path) -> None:
    """Delete parts a previous run left behind (plaintext: a crash mid-request)."""
    if spool.is_dir():
        for stale in spool.glob(".*.part"):
            stale.unlink(missing_ok=True)


async def resolve_subject(repo: FhirRepository, text: str) -> tuple[str, str]:
    """(``Patient/<id>``, the account owning its records) for ``?subject=``, after checking
    that the owner lets this institution contribute instances and ImagingStudy resources.

    Raises 400 (malformed), 422 (no such Patient here) or 403 (no consent)."""
    type_, _, id_ = text.strip().partition("/")
    if type_ != "Patient" or not id_ or "/" in id_:
        raise InvalidInputError("name the patient: ?subject=Patient/<id>")
    row = repo.index.current("Patient", id_)
    if row is None:
        await repo.sync()
        row = repo.index.current("Patient", id_)
    if row is None:
        raise FhirError.invalid(
            [Issue("error", "not-found", "the subject names no Patient here", ["subject"])],
            status=422,
        )
    owner = row.patient
    if owner != repo.me:
        for kind in (RECORD_KIND, _STUDY_KIND):
            allowed = await asyncio.to_thread(
                repo.ledger.consent.has_kind_access, owner, repo.me, kind, Purpose.CONTRIBUTE
            )
            if not allowed:
                raise ConsentError(
                    f"the patient has not given this institution CONTRIBUTE consent for {kind} "
                    "records"
                )
    return f"Patient/{id_}", owner


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


@dataclass
class _StudyState:
    uid: str
    row: IndexedResource | None
    body: dict[str, Any] | None
    refused: str | None = None  # why no instance of this study is taken
    known: dict[tuple[str, str], str] = field(default_factory=dict)
    files: list[DicomFile] = field(default_factory=list)
    cids: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> record CID


class StowSession:
    """One STOW-RS request for ``subject`` (``Patient/<id>``, owned by ``owner``).

    ``writes`` serialises the keeper's writes with the repository's own (they share its
    storage client, which serves one event loop at a time).
    """

    def __init__(
        self,
        repo: FhirRepository,
        *,
        subject: str,
        owner: str,
        study_uid: str | None,
        base: str,
        spool: Path,
        writes: contextlib.AbstractContextManager[object],
    ) -> None:
        self.repo = repo
        self.subject = subject
        self.owner = owner
        self.study_uid = study_uid
        self.base = base
        self.spool = spool
        self._writes = writes
        self._studies: dict[str, _StudyState] = {}
        self._failed: list[dict[str, Any]] = []
        self._referenced: list[dict[str, Any]] = []
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)

    def spool_path(self) -> Path:
        return self.spool / f".{secrets.token_hex(12)}.part"

    def fail(
        self, reason: str, code: int = FAILURE_PROCESSING, info: DicomFile | None = None
    ) -> None:
        self._failed.append(
            {
                "00081150": _ui(info.sop_class_uid if info else None),
                "00081155": _ui(info.sop_instance_uid if info else None),
                "00081197": {"vr": "US", "Value": [code]},
                CREATOR_TAG: {"vr": "LO", "Value": [PRIVATE_CREATOR]},
                REASON_TAG: {"vr": "LT", "Value": [reason]},
            }
        )

    def _state(self, uid: str) -> _StudyState:
        state = self._studies.get(uid)
        if state is not None:
            return state
        sid = study_resource_id(uid)
        row = self.repo.index.current(_STUDY, sid)
        body = self.repo.index.body(row.record) if row is not None else None
        state = _StudyState(uid, row, body)
        if row is not None and body is None:
            state.refused = "the study's ImagingStudy cannot be read here"
        elif body is not None:
            subject = (body.get("subject") or {}).get("reference")
            if subject != self.subject:
                state.refused = "this study is stored for another patient"
            state.known = record_cids(body)
        self._studies[uid] = state
        return state

    async def read(self, chunks: AsyncIterator[bytes], boundary: str) -> None:
        """Read a multipart body, handling each part as soon as it is complete (one part on
        disk at a time; the sender waits meanwhile). A body cut short is reported as a
        failure; the parts complete by then are still linked by :meth:`finish`."""
        parser = PartParser(boundary)
        path: Path | None = None
        sink: BinaryIO | None = None
        parts = 0
        try:
            async for chunk in chunks:
                for kind, value in parser.feed(chunk):
                    if kind == "part":
                        assert isinstance(value, dict)
                        parts += 1
                        media = value.get("content-type", _DICOM_MEDIA).split(";")[0].strip()
                        if media.lower() == _DICOM_MEDIA:
                            path = self.spool_path()
                            sink = path.open("wb")
                        else:
                            self.fail("a part is not application/dicom")
                    elif kind == "data":
                        if sink is not None:
                            assert isinstance(value, bytes)
                            sink.write(value)
                    elif sink is not None and path is not None:
                        sink.close()
                        sink = None
                        await self.instance(path)
                        path = None
            parser.close()
        except (MedmeshError, ClientDisconnect) as exc:
            text = exc.message if isinstance(exc, MedmeshError) else "the client went away"
            self.fail(f"the request ended in the middle of a part: {text}")
        finally:
            if sink is not None:
                sink.close()
            if path is not None:
                path.unlink(missing_ok=True)
        if parts == 0:
            self.fail("the request holds no part")

    async def instance(self, path: Path) -> None:
        """Handle one complete part, spooled at ``path`` (deleted here)."""
        try:
            await self._instance(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _instance(self, path: Path) -> None:
        try:
            info = await asyncio.to_thread(check, path)
        except DicomError as exc:
            self.fail(exc.message, FAILURE_CANNOT_UNDERSTAND)
            return
        if self.study_uid is not None and info.study_uid != self.study_uid:
            self.fail("the instance belongs to another study than the URL names", info=info)
            return
        state = self._state(info.study_uid)
        if state.refused is None and not state.files and state.body is None:
            state.refused = self._check_draft(info)
        if state.refused is not None:
            self.fail(state.refused, info=info)
            return
        sop = info.sop_instance_uid
        if sop in state.cids:  # the same instance twice in one request
            return
        cid = state.known.get((info.series_uid, sop))
        if cid is None:
            try:
                put = await asyncio.to_thread(self._put, path)
            except MedmeshError as exc:
                self.fail(f"not stored: {exc.message}", info=info)
                return
            cid = str(put.cid)
        state.files.append(info)
        state.cids[sop] = cid

    def _check_draft(self, info: DicomFile) -> str | None:
        """Why an ImagingStudy of this instance would not be valid (checked before the first
        instance of a new study is stored), or None."""
        (study,) = group_studies([info]).values()
        draft = imaging_study(
            study,
            patient_ref=self.subject,
            study_id=study_resource_id(info.study_uid),
            record_cids={info.sop_instance_uid: _PLACEHOLDER_CID},
        )
        try:
            validate_resource(draft)
        except FhirError as exc:
            return f"its ImagingStudy would not be valid FHIR: {exc.message}"
        return None

    def _put(self, path: Path) -> PutRecord:
        keeper = self.repo.keeper
        with self._writes:
            return keeper.put(
                path,
                RECORD_KIND,
                patient=None if self.owner == keeper.wallet.address else self.owner,
            )

    async def finish(self) -> tuple[int, dict[str, Any]]:
        """Save each study's ImagingStudy; (HTTP status, the store response)."""
        for state in self._studies.values():
            if state.files:
                await self._link(state)
        answer: dict[str, Any] = {}
        linked = [s for s in self._studies.values() if s.files]
        if len(linked) == 1:
            answer["00081190"] = {"vr": "UR", "Value": [f"{self.base}/studies/{linked[0].uid}"]}
        if self._failed:
            answer["00081198"] = {"vr": "SQ", "Value": self._failed}
        if self._referenced:
            answer["00081199"] = {"vr": "SQ", "Value": self._referenced}
        if not self._failed:
            return 200, answer
        return (202 if self._referenced else 409), answer

    async def _link(self, state: _StudyState) -> None:
        sid = study_resource_id(state.uid)
        (study,) = group_studies(state.files).values()
        fresh = imaging_study(study, patient_ref=self.subject, study_id=sid, record_cids=state.cids)
        error: FhirError | None = None
        for _ in range(2):  # once more if another request saved a version meanwhile
            row = self.repo.index.current(_STUDY, sid)
            body = self.repo.index.body(row.record) if row is not None else None
            resource = merge_imaging_studies(body, fresh) if body is not None else fresh
            if body is not None and resource == {k: v for k, v in body.items() if k != "meta"}:
                error = None  # nothing new: no new version
                break
            if_match = f'W/"{row.version}"' if row is not None else None
            try:
                await asyncio.to_thread(self.repo.update, _STUDY, sid, resource, if_match=if_match)
            except FhirError as exc:
                error = exc
                if exc.status == 412:
                    continue
                break
            except MedmeshError as exc:
                error = FhirError(500, [], exc.message)
                break
            error = None
            break
        for info in state.files:
            if error is None:
                self._referenced.append(self._reference(info, state.uid))
            elif (info.series_uid, info.sop_instance_uid) in state.known:
                self._referenced.append(self._reference(info, state.uid))  # linked before
            else:
                log.warning("an instance was stored but its ImagingStudy not saved")
                self.fail(f"stored, but its ImagingStudy was not saved: {error.message}", info=info)

    def _reference(self, info: DicomFile, study_uid: str) -> dict[str, Any]:
        url = (
            f"{self.base}/studies/{study_uid}/series/{info.series_uid}"
            f"/instances/{info.sop_instance_uid}"
        )
        return {
            "00081150": _ui(info.sop_class_uid),
            "00081155": _ui(info.sop_instance_uid),
            "00081190": {"vr": "UR", "Value": [url]},
        }
