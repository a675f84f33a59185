"""QIDO-RS over ImagingStudy resources: query parameters in, DICOM JSON out.

A gateway's DICOMweb service (:mod:`medmesh.interop.dicom.web`) answers from the
ImagingStudy resources in its FHIR index, so this module is the translation, with no I/O:

- :func:`parse_qido` reads a study query (PS3.18 10.6) into a :class:`QidoQuery`, refusing
  (:class:`~medmesh.errors.InvalidInputError`) what it cannot match exactly, as the FHIR
  search does: a client must never mistake a wider result for the one it asked for;
- :func:`study_attributes`, :func:`series_attributes` and :func:`instance_attributes` build
  the DICOM JSON model (PS3.18 F.2) of one result.

Matching keys (by keyword or tag): ``PatientID`` (0010,0020), ``StudyDate`` (0008,0020),
``ModalitiesInStudy`` (0008,0061) and ``StudyInstanceUID`` (0020,000D); ``limit`` and
``offset`` page; ``includefield`` is accepted (the answer always has the attributes below)
and ``fuzzymatching`` only as ``false``. ``PatientID`` is the **FHIR Patient id** of the
study's subject: the gateway keeps no DICOM Patient ID (an identifier Annex E removes), and a
FHIR client finds the same studies with ``ImagingStudy?patient=<id>``. ``StudyDate`` is one
date (``YYYYMMDD``) or a range (``A-B``, ``A-``, ``-B``), matched like the FHIR ``started``
search (a date is a UTC day). Wildcards are not supported.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from medmesh.errors import InvalidInputError
from medmesh.interop.dicom.study import study_uid_of

__all__ = [
    "DEFAULT_LIMIT",
    "DICOM_JSON",
    "MAX_LIMIT",
    "QidoQuery",
    "dicomweb_base",
    "instance_attributes",
    "parse_qido",
    "series_attributes",
    "study_attributes",
]

DICOM_JSON: Final = "application/dicom+json"
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000

_KEYS: Final = {
    "PatientID": "PatientID",
    "00100020": "PatientID",
    "StudyDate": "StudyDate",
    "00080020": "StudyDate",
    "ModalitiesInStudy": "ModalitiesInStudy",
    "00080061": "ModalitiesInStudy",
    "StudyInstanceUID": "StudyInstanceUID",
    "0020000D": "StudyInstanceUID",
}
_UID: Final = re.compile(r"[0-9]+(\.[0-9]+)*")
_CS: Final = re.compile(r"[A-Z0-9_ ]{1,16}")
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DA: Final = re.compile(r"\d{8}")
_FHIR_DATE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?")


@dataclass(frozen=True)
class QidoQuery:
    """A parsed QIDO-RS study query; ``None`` means "not constrained"."""

    patient_id: str | None = None
    date_from: dt.date | None = None  # inclusive
    date_to: dt.date | None = None  # inclusive
    modalities: tuple[str, ...] | None = None  # any of them
    study_uids: tuple[str, ...] | None = None  # any of them
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _bad(name: str, text: str) -> InvalidInputError:
    return InvalidInputError(f"QIDO parameter {name}: {text}")


def _list(value: str) -> list[str]:
    """A value list: ``,`` (QIDO) or ``\\`` (DICOM multi-value) separated."""
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _date(name: str, text: str) -> dt.date:
    if not _DA.fullmatch(text):
        raise _bad(name, "give a date as YYYYMMDD, or a range A-B")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise _bad(name, "not a calendar date") from None


def _int(name: str, text: str, top: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _bad(name, "expected a number") from None
    if not 0 <= value <= top:
        raise _bad(name, f"must be between 0 and {top}")
    return value


def parse_qido(items: Iterable[tuple[str, str]]) -> QidoQuery:
    """The :class:`QidoQuery` for a request's (name, value) pairs (``?PatientID=p1&...``)."""
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for raw_name, raw_value in items:
        value = raw_value.strip()
        if raw_name == "includefield":
            continue
        if raw_name == "fuzzymatching":
            if value.lower() != "false":
                raise _bad(raw_name, "fuzzy matching is not supported")
            continue
        if raw_name in ("limit", "offset"):
            values[raw_name] = _int(raw_name, value, MAX_LIMIT if raw_name == "limit" else 2**31)
            continue
        name = _KEYS.get(raw_name) or _KEYS.get(raw_name.upper())
        if name is None:
            raise _bad(raw_name, "not a supported matching key")
        if name in seen:
            raise _bad(raw_name, "given twice")
        seen.add(name)
        if not value:
            continue  # universal matching: an empty value constrains nothing
        if "*" in value or "?" in value:
            raise _bad(raw_name, "wildcards are not supported")
        if name == "PatientID":
            if not _FHIR_ID.fullmatch(value):
                raise _bad(raw_name, "the Patient ID here is a FHIR Patient id")
            values["patient_id"] = value
        elif name == "StudyDate":
            low, dash, high = value.partition("-")
            if not dash:
                values["date_from"] = values["date_to"] = _date(raw_name, value)
            elif not low and not high:
                raise _bad(raw_name, "a range needs at least one end")
            else:
                values["date_from"] = _date(raw_name, low) if low else None
                values["date_to"] = _date(raw_name, high) if high else None
                if (
                    values["date_from"] is not None
                    and values["date_to"] is not None
                    and values["date_from"] > values["date_to"]
                ):
                    raise _bad(raw_name, "the range ends before it starts")
        elif name == "ModalitiesInStudy":
            codes = _list(value)
            if not codes or not all(_CS.fullmatch(c) for c in codes):
                raise _bad(raw_name, "not a modality code (CS)")
            values["modalities"] = tuple(codes)
        else:
            uids = _list(value)
            if not uids or not all(_UID.fullmatch(u) and len(u) <= 64 for u in uids):
                raise _bad(raw_name, "not a UID list")
            values["study_uids"] = tuple(uids)
    return QidoQuery(**values)


def dicomweb_base(fhir_base: str) -> str:
    """The DICOMweb base URL of the gateway serving FHIR at ``fhir_base`` (``…/fhir``)."""
    base = fhir_base.rstrip("/")
    if not base.endswith("/fhir"):
        raise InvalidInputError("the FHIR base URL of a medmesh gateway ends in /fhir")
    return base[: -len("/fhir")] + "/dicomweb"


# -- DICOM JSON ---------------------------------------------------------------------------------


def _attr(vr: str, *values: Any) -> dict[str, Any]:
    kept = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _oid(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith("urn:oid:"):
        return value[len("urn:oid:") :]
    return None


def _da_tm(started: Any) -> tuple[str | None, str | None]:
    """DICOM DA and TM from a FHIR ``started`` (its local date and time, as written)."""
    if not isinstance(started, str):
        return None, None
    m = _FHIR_DATE.match(started)
    if m is None:
        return None, None
    date = f"{m[1]}{m[2]}{m[3]}"
    if m[4] is None:
        return date, None
    return date, f"{m[4]}{m[5]}{m[6] or '00'}{m[7] or ''}"


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _code(value: Any) -> str | None:
    if isinstance(value, Mapping) and isinstance(value.get("code"), str):
        return str(value["code"])
    return None


def _patient_id(resource: Mapping[str, Any]) -> str | None:
    subject = resource.get("subject")
    ref = subject.get("reference") if isinstance(subject, Mapping) else None
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return ref[len("Patient/") :]
    return None


def study_attributes(resource: Mapping[str, Any], base: str) -> dict[str, Any]:
    """The QIDO-RS study result for an ImagingStudy (``base``: the DICOMweb base URL)."""
    uid = study_uid_of(resource)
    date, time = _da_tm(resource.get("started"))
    series = _dicts(resource.get("series"))
    modalities = [_code(m) for m in _dicts(resource.get("modality"))]
    if not any(modalities):
        modalities = [_code(s.get("modality")) for s in series]
    return {
        "00080005": _attr("CS", "ISO_IR 192"),
        "00080020": _attr("DA", date),
        "00080030": _attr("TM", time),
        "00080061": _attr("CS", *dict.fromkeys(m for m in modalities if m)),
        "00081030": _attr("LO", resource.get("description")),
        "00081190": _attr("UR", f"{base}/studies/{uid}" if uid else None),
        "00100020": _attr("LO", _patient_id(resource)),
        "0020000D": _attr("UI", uid),
        "00201206": _attr("IS", resource.get("numberOfSeries", len(series))),
        "00201208": _attr(
            "IS",
            resource.get("numberOfInstances", sum(len(_dicts(s.get("instance"))) for s in series)),
        ),
    }


def series_attributes(
    resource: Mapping[str, Any], series: Mapping[str, Any], base: str
) -> dict[str, Any]:
    """The QIDO-RS series result for one ``series`` element of an ImagingStudy."""
    study_uid = study_uid_of(resource)
    uid = series.get("uid")
    return {
        "00080005": _attr("CS", "ISO_IR 192"),
        "00080060": _attr("CS", _code(series.get("modality"))),
        "0008103E": _attr("LO", series.get("description")),
        "00081190": _attr("UR", f"{base}/studies/{study_uid}/series/{uid}"),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", uid),
        "00200011": _attr("IS", series.get("number")),
        "00201209": _attr(
            "IS", series.get("numberOfInstances", len(_dicts(series.get("instance"))))
        ),
    }


def instance_attributes(
    resource: Mapping[str, Any],
    series: Mapping[str, Any],
    instance: Mapping[str, Any],
    base: str,
) -> dict[str, Any]:
    """The QIDO-RS instance result for one ``series.instance`` element."""
    study_uid = study_uid_of(resource)
    series_uid = series.get("uid")
    uid = instance.get("uid")
    sop_class = instance.get("sopClass")
    return {
        "00080016": _attr(
            "UI", _oid(sop_class.get("code")) if isinstance(sop_class, Mapping) else None
        ),
        "00080018": _attr("UI", uid),
        "00081190": _attr("UR", f"{base}/studies/{study_uid}/series/{series_uid}/instances/{uid}"),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series_uid),
        "00200013": _attr("IS", instance.get("number")),
    }
