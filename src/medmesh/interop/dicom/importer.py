"""``medmesh dicom import``: DICOM files to a patient's records, one ImagingStudy per study.

1. :func:`plan_import` scans a file or folder (headers only) and sorts every file into a
   study, a failure (not DICOM, truncated, no UIDs: the reason, and nothing of it is ever
   sent or stored) or a skip (DICOMDIR, ``.txt``…).
2. :meth:`DicomImporter.subject` reads the Patient through the gateway's FHIR API. Its owner
   (the account of its ``did:pkh`` identifier, or the institution on a patient's own
   gateway: the gateway's rule) will own the records. Before anything is sent, the ledger
   must show that patient's CONTRIBUTE consent for ``dicom:instance`` and
   ``fhir:ImagingStudy`` records (what ``Records.anchor_for`` will require).
3. :meth:`DicomImporter.run` sends each study in one STOW-RS request to the gateway's
   DICOMweb (``POST /dicomweb/studies/{uid}?subject=Patient/<id>``), streamed from disk. The
   gateway stores each instance as a record of kind
   :data:`~medmesh.interop.dicom.study.RECORD_KIND` and saves the study's ImagingStudy
   (id :func:`~medmesh.interop.dicom.study.study_resource_id`) whose instances carry their
   records' CIDs (:mod:`medmesh.interop.dicom.stow`).

Instances the study's ImagingStudy already links (an earlier import) are not sent again, so
importing a folder twice stores nothing twice. Why the gateway stores the records, not this
process: both sign as the same institution, and two processes counting one account's nonces
replace each other's transactions; the gateway is the one signer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from eth_utils.address import to_checksum_address

from medmesh.errors import ConsentError, InvalidInputError, MedmeshError, NotFoundError
from medmesh.interop.client import GatewayClient, dicom_value
from medmesh.interop.dicom.files import DicomFailure, DicomFile, DicomSkipped, Study, scan
from medmesh.interop.dicom.files import group_studies as _group
from medmesh.interop.dicom.stow import REASON_TAG
from medmesh.interop.dicom.study import RECORD_KIND, record_cids, study_resource_id
from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose, Role

__all__ = [
    "IMPORT_SCOPE",
    "DicomImporter",
    "Failure",
    "ImportPlan",
    "ImportResult",
    "patient_owner",
    "plan_import",
]

#: SMART scopes an import asks for: read the Patient, read and write ImagingStudy.
IMPORT_SCOPE: Final = "system/Patient.rs system/ImagingStudy.cruds"
_STUDY: Final = "ImagingStudy"
_STUDY_KIND: Final = "fhir:ImagingStudy"
_FAILED: Final = "00081198"
_REFERENCED: Final = "00081199"
_SOP_UID: Final = "00081155"


@dataclass(frozen=True)
class ImportPlan:
    """What a folder holds: studies to import, files refused and files passed over."""

    studies: dict[str, Study]
    failures: tuple[DicomFailure, ...]
    skipped: tuple[DicomSkipped, ...]

    @property
    def instances(self) -> int:
        return sum(s.number_of_instances for s in self.studies.values())

    @property
    def size(self) -> int:
        return sum(s.size for s in self.studies.values())


def plan_import(path: Path | str) -> ImportPlan:
    """Scan ``path`` (a file or a folder, recursively), reading headers only."""
    files: list[DicomFile] = []
    failures: list[DicomFailure] = []
    skipped: list[DicomSkipped] = []
    for item in scan(path, errors="collect"):
        if isinstance(item, DicomFile):
            files.append(item)
        elif isinstance(item, DicomFailure):
            failures.append(item)
        else:
            skipped.append(item)
    return ImportPlan(_group(files), tuple(failures), tuple(skipped))


@dataclass(frozen=True)
class Failure:
    """A file (or a study, named by its first file) that was not imported, and why."""

    path: Path
    reason: str


@dataclass
class ImportResult:
    """What an import did."""

    studies: list[str] = field(default_factory=list)  # ImagingStudy ids saved or up to date
    series: int = 0
    instances: int = 0  # stored by this import
    already: int = 0  # linked by an earlier import of the same study: not sent again
    bytes: int = 0  # bytes of the instances stored now
    duplicates: list[Path] = field(default_factory=list)  # same SOP Instance UID twice
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "studies": len(self.studies),
            "imaging_studies": [f"ImagingStudy/{s}" for s in self.studies],
            "series": self.series,
            "instances": self.instances,
            "already_stored": self.already,
            "bytes": self.bytes,
            "duplicates": [str(p) for p in self.duplicates],
            "failures": [{"path": str(f.path), "reason": f.reason} for f in self.failures],
        }


def patient_owner(patient: dict[str, Any], *, chain_id: int, me: str, me_is_patient: bool) -> str:
    """The account owning a Patient's records, by the gateway's rule: its identifier
    ``{system: urn:ietf:rfc:3986, value: did:pkh:eip155:<chain>:<address>}``, else ``me``
    on a patient's own gateway."""
    prefix = f"did:pkh:eip155:{chain_id}:"
    for ident in patient.get("identifier") or []:
        value = ident.get("value") if isinstance(ident, dict) else None
        if (
            isinstance(ident, dict)
            and ident.get("system") == ACCOUNT_SYSTEM
            and isinstance(value, str)
            and value.startswith("did:pkh:")
        ):
            if not value.startswith(prefix):
                raise InvalidInputError(
                    f"the Patient's account is on another chain than this wallet's ({chain_id})"
                )
            try:
                return to_checksum_address(value[len(prefix) :])
            except ValueError:
                raise InvalidInputError("the Patient's did:pkh identifier is malformed") from None
    if me_is_patient:
        return to_checksum_address(me)
    raise InvalidInputError(
        "the Patient names no account (identifier urn:ietf:rfc:3986 = did:pkh:…): "
        "its records would have no owner"
    )


def _subject_of(resource: dict[str, Any]) -> str | None:
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, dict) else None
    return ref if isinstance(ref, str) else None


def _items(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = answer.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


class DicomImporter:
    """Imports for ``me`` through its gateway (``gateway``, authenticated with
    :data:`IMPORT_SCOPE`); ``ledger`` is only read (owner role, consents)."""

    def __init__(self, gateway: GatewayClient, ledger: Ledger, me: str) -> None:
        self.gateway = gateway
        self.ledger = ledger
        self.me = to_checksum_address(me)

    def subject(self, reference: str) -> tuple[str, str]:
        """(``Patient/<id>``, the account owning that Patient's records), and the check that
        this wallet may write ``dicom:instance`` and ImagingStudy records for it."""
        type_, _, id_ = reference.strip().partition("/")
        if type_ != "Patient" or not id_ or "/" in id_:
            raise InvalidInputError("give the subject as Patient/<id>")
        patient = self.gateway.read("Patient", id_)
        if patient is None:
            raise NotFoundError(f"the gateway knows no Patient/{id_}")
        owner = patient_owner(
            patient,
            chain_id=int(self.ledger.chain_id),
            me=self.me,
            me_is_patient=bool(self.ledger.registry.roles(self.me) & Role.PATIENT),
        )
        if owner != self.me:
            for kind in (RECORD_KIND, _STUDY_KIND):
                if not self.ledger.consent.has_kind_access(
                    owner, self.me, kind, Purpose.CONTRIBUTE
                ):
                    raise ConsentError(
                        f"the patient has not given this wallet CONTRIBUTE consent for {kind} "
                        "records: nothing was stored"
                    )
        return f"Patient/{id_}", owner

    def run(
        self, plan: ImportPlan, subject: str, *, progress: Callable[[int], None] | None = None
    ) -> ImportResult:
        """Send every study of ``plan`` for ``subject``; ``progress`` gets bytes sent (and
        the sizes of instances not sent because they are stored already)."""
        result = ImportResult()
        result.failures.extend(Failure(f.path, f.reason) for f in plan.failures)
        for study in plan.studies.values():
            self._study(study, subject, result, progress)
        return result

    def _study(
        self,
        study: Study,
        subject: str,
        result: ImportResult,
        progress: Callable[[int], None] | None,
    ) -> None:
        first = study.series[0].instances[0].path
        result.duplicates.extend(study.duplicates)
        sid = study_resource_id(study.uid)
        try:
            existing = self.gateway.read(_STUDY, sid)
        except MedmeshError as exc:
            result.failures.append(Failure(first, f"study not imported: {exc.message}"))
            return
        if existing is not None and _subject_of(existing) != subject:
            result.failures.append(
                Failure(first, "study not imported: it is stored for another patient")
            )
            return
        known = record_cids(existing) if existing is not None else {}
        files = {f.sop_instance_uid: (s.uid, f) for s in study.series for f in s.instances}
        todo = [f for series, f in files.values() if (series, f.sop_instance_uid) not in known]
        linked = {sop for sop, (series, _) in files.items() if (series, sop) in known}
        result.already += len(linked)
        if progress is not None:
            progress(sum(files[sop][1].size for sop in linked))
        if todo:
            try:
                answer = self.gateway.store(
                    [f.path for f in todo], subject=subject, study_uid=study.uid, progress=progress
                )
            except MedmeshError as exc:
                result.failures.append(Failure(first, f"study not imported: {exc.message}"))
                return
            stored = {dicom_value(i, _SOP_UID) for i in _items(answer, _REFERENCED)}
            for item in _items(answer, _FAILED):
                sop = dicom_value(item, _SOP_UID)
                reason = dicom_value(item, REASON_TAG) or "refused by the gateway"
                where = files[sop][1].path if sop in files else first
                result.failures.append(Failure(where, str(reason)))
            new = [f for f in todo if f.sop_instance_uid in stored]
            result.instances += len(new)
            result.bytes += sum(f.size for f in new)
            linked |= {f.sop_instance_uid for f in new}
        if linked:
            result.studies.append(sid)
            result.series += len({files[sop][0] for sop in linked})
