"""FHIR R4 ImagingStudy resources for the studies :func:`~medmesh.interop.dicom.group_studies` finds.

The resource carries what ImagingStudy is for: UIDs, modalities, counts, the start time,
descriptions and body sites, never the patient's name or identifiers from the DICOM header
(the subject is the ``patient_ref`` the caller gives). It validates against the R4B models
of ``fhir.resources`` (R4B reads R4 content).

How a study links to its stored instances (``medmesh dicom import``):

- each ``series[].instance[]`` whose file is stored as a medmesh record (kind
  :data:`RECORD_KIND`) carries the record's CID in the extension :data:`RECORD_CID_EXTENSION`
  (``valueString``); the record belongs to the ImagingStudy's patient, so its on-chain id is
  ``record_id(patient, cid)`` and a study can only point at its own patient's records;
- the resource id is :func:`study_resource_id` of the Study Instance UID: any gateway finds a
  study by UID with one index lookup, and importing the same study again updates it (a new
  version, :func:`merge_imaging_studies`) instead of creating a twin. The id is a SHA-256 of
  the UID, not the UID itself, because ids are stored in clear in the gateway's index while
  UIDs are identifiers that Annex E replaces.

>>> imaging_study(study, patient_ref="Patient/p1", endpoint_ref="Endpoint/wado")  # doctest: +SKIP
{'resourceType': 'ImagingStudy', 'status': 'available', ...}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

from medmesh.errors import InvalidInputError
from medmesh.interop.dicom.files import Series, Study

__all__ = [
    "BODY_PART_CODES",
    "DCM_SYSTEM",
    "RECORD_CID_EXTENSION",
    "RECORD_KIND",
    "SNOMED_SYSTEM",
    "UID_SYSTEM",
    "imaging_study",
    "merge_imaging_studies",
    "record_cids",
    "study_resource_id",
    "study_uid_of",
]

DCM_SYSTEM: Final = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED_SYSTEM: Final = "http://snomed.info/sct"
UID_SYSTEM: Final = "urn:dicom:uid"
_URI_SYSTEM: Final = "urn:ietf:rfc:3986"

#: The record kind of one stored DICOM instance (a Part-10 file, as imported).
RECORD_KIND: Final = "dicom:instance"

#: Extension on ``ImagingStudy.series.instance``: the CID of the medmesh record holding the
#: instance (``valueString``).
RECORD_CID_EXTENSION: Final = "https://medmesh.dev/fhir/StructureDefinition/record-cid"
_STUDY_ID_PREFIX: Final = "dcm-"
_UNKNOWN_MODALITY: Final = "OT"  # "Other": series.modality is 1..1 in R4

#: Body Part Examined (0018,0015) defined terms -> SNOMED CT (code, display): the terms of
#: PS3.16 Annex L Table L-1 with the SCT codes of CID 4031 "Common Anatomic Region"
#: (version 20250709, which replaced the SNOMED-RT codes).
BODY_PART_CODES: Final[Mapping[str, tuple[str, str]]] = {
    "ABDOMEN": ("818981001", "Abdomen"),
    "ABDOMENPELVIS": ("818982008", "Abdomen and Pelvis"),
    "ANKLE": ("70258002", "Ankle joint"),
    "ARM": ("40983000", "Upper arm"),
    "BLADDER": ("89837001", "Bladder"),
    "BREAST": ("76752008", "Breast"),
    "BRONCHUS": ("955009", "Bronchus"),
    "CALCANEUS": ("80144004", "Calcaneus"),
    "CHEST": ("816094009", "Chest"),
    "CHESTABDOMEN": ("416550000", "Chest and Abdomen"),
    "CHESTABDPELVIS": ("416775004", "Chest, Abdomen and Pelvis"),
    "CLAVICLE": ("51299004", "Clavicle"),
    "COCCYX": ("64688005", "Coccyx"),
    "COLON": ("71854001", "Colon"),
    "CSPINE": ("122494005", "Cervical spine"),
    "CTSPINE": ("1217257000", "Cervico-thoracic spine"),
    "DUODENUM": ("38848004", "Duodenum"),
    "ELBOW": ("16953009", "Elbow joint"),
    "ESOPHAGUS": ("32849002", "Esophagus"),
    "EXTREMITY": ("66019005", "Extremity"),
    "EYE": ("81745001", "Eye"),
    "FEMUR": ("71341001", "Femur"),
    "FINGER": ("7569003", "Finger"),
    "FOOT": ("56459004", "Foot"),
    "GALLBLADDER": ("28231008", "Gallbladder"),
    "HAND": ("85562004", "Hand"),
    "HEAD": ("69536005", "Head"),
    "HEADNECK": ("774007", "Head and Neck"),
    "HEART": ("80891009", "Heart"),
    "HIP": ("24136001", "Hip joint"),
    "HUMERUS": ("85050009", "Humerus"),
    "IAC": ("361078006", "Internal Auditory Canal"),
    "ILEUM": ("34516001", "Ileum"),
    "ILIUM": ("22356005", "Ilium"),
    "JAW": ("661005", "Jaw region"),
    "JEJUNUM": ("21306003", "Jejunum"),
    "KNEE": ("72696002", "Knee"),
    "LARYNX": ("4596009", "Larynx"),
    "LEG": ("30021000", "Lower leg"),
    "LSPINE": ("122496007", "Lumbar spine"),
    "LSSPINE": ("1217253001", "Lumbo-sacral spine"),
    "MAXILLA": ("70925003", "Maxilla"),
    "MEDIASTINUM": ("72410000", "Mediastinum"),
    "NECK": ("45048000", "Neck"),
    "NECKCHEST": ("417437006", "Neck and Chest"),
    "NECKCHESTABDOMEN": ("416152001", "Neck, Chest and Abdomen"),
    "NECKCHESTABDPELV": ("416319003", "Neck, Chest, Abdomen and Pelvis"),
    "ORBIT": ("363654007", "Orbital structure"),
    "PAROTID": ("45289007", "Parotid gland"),
    "PATELLA": ("64234005", "Patella"),
    "PELVIS": ("816092008", "Pelvis"),
    "PROSTATE": ("41216001", "Prostate"),
    "RECTUM": ("34402009", "Rectum"),
    "RIB": ("113197003", "Rib"),
    "SCAPULA": ("79601000", "Scapula"),
    "SHOULDER": ("16982005", "Shoulder"),
    "SKULL": ("89546000", "Skull"),
    "SPINE": ("421060004", "Spine"),
    "SSPINE": ("54735007", "Sacrum"),
    "STERNUM": ("56873002", "Sternum"),
    "STOMACH": ("69695003", "Stomach"),
    "SUBMANDIBULAR": ("54019009", "Submandibular gland"),
    "THIGH": ("68367000", "Thigh"),
    "THUMB": ("76505004", "Thumb"),
    "TLSPINE": ("1217256009", "Thoraco-lumbar spine"),
    "TMJ": ("53620006", "Temporomandibular joint"),
    "TOE": ("29707007", "Toe"),
    "TRACHEA": ("44567001", "Trachea"),
    "TSPINE": ("122495006", "Thoracic spine"),
    "URETER": ("87953007", "Ureter"),
    "URETHRA": ("13648007", "Urethra"),
    "WHOLEBODY": ("38266002", "Entire body"),
    "WRIST": ("74670003", "Wrist joint"),
    "ZYGOMA": ("13881006", "Zygoma"),
}

_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DA: Final = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM: Final = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_TZ: Final = re.compile(r"([+-])(\d{2})(\d{2})")


def study_resource_id(study_uid: str) -> str:
    """The ImagingStudy id medmesh gives a study: ``dcm-`` + 128 bits of SHA-256(UID), in hex.

    >>> study_resource_id("1.2.3")
    'dcm-c47f5b18b8a430e698b9fe15e51f6119'
    """
    digest = hashlib.sha256(study_uid.strip().encode("ascii", "replace")).hexdigest()
    return _STUDY_ID_PREFIX + digest[:32]


def imaging_study(
    study: Study,
    *,
    patient_ref: str,
    endpoint_ref: str | None = None,
    study_id: str | None = None,
    tz: dt.tzinfo | None = None,
    record_cids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The FHIR R4 ImagingStudy (JSON dict) for ``study``.

    ``patient_ref`` is the subject reference (``"Patient/123"``), ``endpoint_ref`` an
    Endpoint for retrieving the instances (DICOMweb), ``study_id`` the resource id. FHIR
    needs a time zone with a time: ``started`` uses Timezone Offset From UTC (0008,0201)
    when the files have it, else ``tz``, else only the date. ``record_cids`` maps SOP
    Instance UIDs to the CIDs of the records holding them (:data:`RECORD_CID_EXTENSION`).
    """
    if not patient_ref or not patient_ref.strip():
        raise InvalidInputError("patient_ref is required")
    if study_id is not None and not _FHIR_ID.fullmatch(study_id):
        raise InvalidInputError("study_id is not a valid FHIR id")
    resource: dict[str, Any] = {"resourceType": "ImagingStudy"}
    if study_id is not None:
        resource["id"] = study_id
    resource["identifier"] = [{"system": UID_SYSTEM, "value": f"urn:oid:{study.uid}"}]
    resource["status"] = "available"
    modalities = [s.modality or _UNKNOWN_MODALITY for s in study.series]
    if modalities:
        resource["modality"] = [_dcm(m) for m in dict.fromkeys(modalities)]
    resource["subject"] = {"reference": patient_ref}
    started = fhir_datetime(study.date, study.time, study.timezone_offset, tz)
    if started is not None:
        resource["started"] = started
    if endpoint_ref is not None:
        resource["endpoint"] = [{"reference": endpoint_ref}]
    resource["numberOfSeries"] = study.number_of_series
    resource["numberOfInstances"] = study.number_of_instances
    if study.description:
        resource["description"] = study.description
    if study.series:
        resource["series"] = [_series(s, record_cids or {}) for s in study.series]
    return resource


def study_uid_of(resource: Mapping[str, Any]) -> str | None:
    """The Study Instance UID an ImagingStudy names (identifier ``urn:dicom:uid``), or None."""
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict) or ident.get("system") != UID_SYSTEM:
            continue
        value = ident.get("value")
        if isinstance(value, str) and value.startswith("urn:oid:"):
            return value[len("urn:oid:") :]
    return None


def record_cids(resource: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """(series UID, SOP Instance UID) -> record CID, for every instance of an ImagingStudy
    that carries :data:`RECORD_CID_EXTENSION`."""
    out: dict[tuple[str, str], str] = {}
    for series in _dicts(resource.get("series")):
        for instance in _dicts(series.get("instance")):
            for ext in _dicts(instance.get("extension")):
                value = ext.get("valueString")
                if ext.get("url") == RECORD_CID_EXTENSION and isinstance(value, str):
                    out[(str(series.get("uid")), str(instance.get("uid")))] = value
                    break
    return out


def merge_imaging_studies(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` (made from files just imported) over ``old`` (the stored version).

    Elements of ``new`` replace those of ``old``; elements only ``old`` has (added by
    another FHIR client: an encounter, a note) stay. Series and instances are united by
    UID, ``new``'s version winning for one in both, so importing part of a study again
    keeps the instances imported before. Counts and modalities are recomputed.
    """
    out: dict[str, Any] = {k: v for k, v in old.items() if k != "meta"}
    out.update(new)
    series: dict[str, dict[str, Any]] = {}
    for s in [*_dicts(old.get("series")), *_dicts(new.get("series"))]:
        uid = str(s.get("uid"))
        if uid not in series:
            series[uid] = dict(s)
            continue
        instances = {str(i.get("uid")): i for i in _dicts(series[uid].get("instance"))}
        instances.update((str(i.get("uid")), i) for i in _dicts(s.get("instance")))
        series[uid] = {**series[uid], **s, "instance": list(instances.values())}
    if series:
        merged = list(series.values())
        for s in merged:
            s["numberOfInstances"] = len(_dicts(s.get("instance")))
        out["series"] = merged
        out["numberOfSeries"] = len(merged)
        out["numberOfInstances"] = sum(s["numberOfInstances"] for s in merged)
        codes = [s["modality"] for s in merged if isinstance(s.get("modality"), dict)]
        out["modality"] = list({(c.get("system"), c.get("code")): c for c in codes}.values())
    return out


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dcm(code: str) -> dict[str, str]:
    return {"system": DCM_SYSTEM, "code": code}


def _unsigned(value: int | None) -> int | None:
    return value if value is not None and value >= 0 else None


def _series(series: Series, record_cids: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": series.uid}
    number = _unsigned(series.number)
    if number is not None:
        out["number"] = number
    out["modality"] = _dcm(series.modality or _UNKNOWN_MODALITY)
    if series.description:
        out["description"] = series.description
    out["numberOfInstances"] = len(series.instances)
    body_site = body_site_coding(series.body_part)
    if body_site is not None:
        out["bodySite"] = body_site
    instances = []
    for f in series.instances:
        instance: dict[str, Any] = {
            "uid": f.sop_instance_uid,
            "sopClass": {"system": _URI_SYSTEM, "code": f"urn:oid:{f.sop_class_uid}"},
        }
        number = _unsigned(f.instance_number)
        if number is not None:
            instance["number"] = number
        cid = record_cids.get(f.sop_instance_uid)
        if cid is not None:
            instance["extension"] = [{"url": RECORD_CID_EXTENSION, "valueString": cid}]
        instances.append(instance)
    out["instance"] = instances
    return out


def body_site_coding(body_part: str | None) -> dict[str, str] | None:
    """A Coding for Body Part Examined: SNOMED CT when the term is known, else its text."""
    if not body_part:
        return None
    term = re.sub(r"[\s_]+", "", body_part.upper())
    known = BODY_PART_CODES.get(term)
    if known is None:
        return {"display": body_part.strip()}
    code, display = known
    return {"system": SNOMED_SYSTEM, "code": code, "display": display}


def fhir_datetime(
    date: str | None, time: str | None, offset: str | None = None, tz: dt.tzinfo | None = None
) -> str | None:
    """A FHIR dateTime from DICOM DA, TM and a ``+HHMM`` offset; the date alone without a zone.

    Returns None when the date is missing or not a real calendar date.
    """
    if not date:
        return None
    m = _DA.fullmatch(date.strip())
    if m is None:
        return None
    try:
        day = dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None
    zone = _zone(offset) or tz
    clock = _time(time)
    if clock is None or zone is None:
        return day.isoformat()
    return dt.datetime.combine(day, clock, tzinfo=zone).isoformat()


def _time(value: str | None) -> dt.time | None:
    if not value:
        return None
    m = _TM.fullmatch(value.strip())
    if m is None:
        return None
    try:
        fraction = int((m[4] or "0").ljust(6, "0"))
        return dt.time(int(m[1]), int(m[2] or 0), int(m[3] or 0), fraction)
    except ValueError:
        return None


def _zone(offset: str | None) -> dt.tzinfo | None:
    if not offset:
        return None
    m = _TZ.fullmatch(offset.strip())
    if m is None:
        return None
    minutes = int(m[2]) * 60 + int(m[3])
    if minutes > 14 * 60:
        return None
    sign = -1 if m[1] == "-" else 1
    return dt.timezone(dt.timedelta(minutes=sign * minutes))
