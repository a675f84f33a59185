"""FHIR resources as people read them: a title, a date, a value with its unit and reference
range, a status, a few details.

:func:`describe` knows vitals and labs (Observation, with components such as blood pressure),
conditions, medications, immunizations, imaging studies, allergies, procedures, encounters,
reports and patients; any other resource is shown generically (its type, the first code or
type it has, its status and date). Pure functions over the resource's JSON: the templates
escape what they print.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RecordView", "codeable", "describe", "quantity"]

_DATE_FIELDS = (
    "effectiveDateTime",
    "effectiveInstant",
    "onsetDateTime",
    "occurrenceDateTime",
    "authoredOn",
    "performedDateTime",
    "recordedDate",
    "started",
    "issued",
    "date",
    "birthDate",
)
_PERIOD_FIELDS = ("effectivePeriod", "performedPeriod", "period", "onsetPeriod")


@dataclass(frozen=True)
class RecordView:
    """What the portal shows of one resource."""

    type: str
    title: str
    when: str = ""  # ISO date or date-time, as the resource gives it
    value: str = ""
    reference_range: str = ""
    status: str = ""
    category: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)


def _first(items: Any) -> Any:
    return items[0] if isinstance(items, list) and items else None


def codeable(concept: Any) -> str:
    """The text of a CodeableConcept (its ``text``, else the first display, else a code)."""
    if not isinstance(concept, dict):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    for c in codings:
        if isinstance(c.get("display"), str) and c["display"]:
            return str(c["display"])
    for c in codings:
        if c.get("code") is not None:
            return str(c["code"])
    return ""


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def quantity(q: Any) -> str:
    """``72 /min``, ``5.4 mmol/L``, ``< 3 mg``."""
    if not isinstance(q, dict) or q.get("value") is None:
        return ""
    unit = q.get("unit") or q.get("code") or ""
    comparator = f"{q['comparator']} " if q.get("comparator") else ""
    return f"{comparator}{_number(q['value'])} {unit}".strip()


def _range(ranges: Any) -> str:
    r = _first(ranges)
    if not isinstance(r, dict):
        return ""
    low, high = quantity(r.get("low")), quantity(r.get("high"))
    if low and high:
        lo_value = _number(r["low"]["value"])
        unit = r["high"].get("unit") or r["high"].get("code") or ""
        if (r["low"].get("unit") or r["low"].get("code") or "") == unit:
            return f"{lo_value}–{quantity(r.get('high'))}"
        return f"{low} – {high}"
    if low:
        return f"≥ {low}"
    if high:
        return f"≤ {high}"
    return str(r.get("text") or "")


def _value(obj: dict[str, Any]) -> str:
    """An Observation's (or a component's) ``value[x]``, readably."""
    if "valueQuantity" in obj:
        return quantity(obj["valueQuantity"])
    if "valueCodeableConcept" in obj:
        return codeable(obj["valueCodeableConcept"])
    for key in ("valueString", "valueInteger", "valueBoolean", "valueDateTime", "valueTime"):
        if key in obj:
            value = obj[key]
            if isinstance(value, bool):
                return "yes" if value else "no"
            return str(value)
    if "valueRange" in obj:
        return _range([obj["valueRange"]])
    if "valueRatio" in obj and isinstance(obj["valueRatio"], dict):
        ratio = obj["valueRatio"]
        return f"{quantity(ratio.get('numerator'))} / {quantity(ratio.get('denominator'))}"
    if isinstance(obj.get("dataAbsentReason"), dict):
        return f"absent: {codeable(obj['dataAbsentReason'])}"
    return ""


def _when(resource: dict[str, Any]) -> str:
    for key in _DATE_FIELDS:
        value = resource.get(key)
        if isinstance(value, str) and value:
            return value
    for key in _PERIOD_FIELDS:
        period = resource.get(key)
        if isinstance(period, dict) and isinstance(period.get("start"), str):
            return str(period["start"])
    return ""


def _status(resource: dict[str, Any]) -> str:
    for key in ("clinicalStatus", "verificationStatus"):
        text = codeable(resource.get(key))
        if text:
            return text
    status = resource.get("status")
    return status if isinstance(status, str) else ""


def _observation(r: dict[str, Any]) -> RecordView:
    category = ", ".join(filter(None, (codeable(c) for c in r.get("category") or [])))
    parts = []
    ranges = []
    for comp in r.get("component") or []:
        if not isinstance(comp, dict):
            continue
        name, value = codeable(comp.get("code")), _value(comp)
        if value:
            parts.append(f"{name}: {value}" if name else value)
        if _range(comp.get("referenceRange")):
            ranges.append(f"{name}: {_range(comp.get('referenceRange'))}")
    value = _value(r) or "; ".join(parts)
    details = []
    interpretation = ", ".join(filter(None, (codeable(i) for i in r.get("interpretation") or [])))
    if interpretation:
        details.append(("Interpretation", interpretation))
    if parts and _value(r):
        details.append(("Components", "; ".join(parts)))
    return RecordView(
        "Observation",
        codeable(r.get("code")) or "Observation",
        _when(r),
        value,
        _range(r.get("referenceRange")) or "; ".join(ranges),
        _status(r),
        category,
        details,
    )


def _condition(r: dict[str, Any]) -> RecordView:
    details = []
    if isinstance(r.get("abatementDateTime"), str):
        details.append(("Resolved", r["abatementDateTime"]))
    verification = codeable(r.get("verificationStatus"))
    if verification:
        details.append(("Verification", verification))
    severity = codeable(r.get("severity"))
    if severity:
        details.append(("Severity", severity))
    category = ", ".join(filter(None, (codeable(c) for c in r.get("category") or [])))
    return RecordView(
        "Condition",
        codeable(r.get("code")) or "Condition",
        _when(r),
        status=codeable(r.get("clinicalStatus")),
        category=category,
        details=details,
    )


def _medication(r: dict[str, Any]) -> RecordView:
    name = codeable(r.get("medicationCodeableConcept"))
    if not name and isinstance(r.get("medicationReference"), dict):
        name = str(r["medicationReference"].get("display") or "")
    details = []
    dosage = _first(r.get("dosageInstruction") or r.get("dosage"))
    if isinstance(dosage, dict) and isinstance(dosage.get("text"), str):
        details.append(("Dosage", dosage["text"]))
    if isinstance(r.get("intent"), str):
        details.append(("Intent", r["intent"]))
    reason = ", ".join(filter(None, (codeable(c) for c in r.get("reasonCode") or [])))
    if reason:
        details.append(("Reason", reason))
    return RecordView(
        str(r.get("resourceType")),
        name or "Medication",
        _when(r),
        status=_status(r),
        details=details,
    )


def _immunization(r: dict[str, Any]) -> RecordView:
    details = []
    if isinstance(r.get("lotNumber"), str):
        details.append(("Lot", r["lotNumber"]))
    dose = _first(r.get("protocolApplied"))
    if isinstance(dose, dict) and dose.get("doseNumberPositiveInt") is not None:
        details.append(("Dose", str(dose["doseNumberPositiveInt"])))
    site = codeable(r.get("site"))
    if site:
        details.append(("Site", site))
    return RecordView(
        "Immunization",
        codeable(r.get("vaccineCode")) or "Immunization",
        _when(r),
        status=_status(r),
        details=details,
    )


def _imaging(r: dict[str, Any]) -> RecordView:
    modalities = []
    for m in r.get("modality") or []:
        if isinstance(m, dict) and m.get("code"):
            modalities.append(str(m.get("display") or m["code"]))
    for s in r.get("series") or []:
        m = s.get("modality") if isinstance(s, dict) else None
        if isinstance(m, dict) and m.get("code"):
            text = str(m.get("display") or m["code"])
            if text not in modalities:
                modalities.append(text)
    details = []
    if r.get("numberOfSeries") is not None:
        details.append(("Series", str(r["numberOfSeries"])))
    if r.get("numberOfInstances") is not None:
        details.append(("Images", str(r["numberOfInstances"])))
    sites = []
    for s in r.get("series") or []:
        site = s.get("bodySite") if isinstance(s, dict) else None
        if isinstance(site, dict):
            text = str(site.get("display") or site.get("code") or "")
            if text and text not in sites:
                sites.append(text)
    if sites:
        details.append(("Body site", ", ".join(sites)))
    title = r.get("description") if isinstance(r.get("description"), str) else ""
    return RecordView(
        "ImagingStudy",
        str(title or "Imaging study"),
        _when(r),
        ", ".join(modalities),
        status=_status(r),
        details=details,
    )


def _allergy(r: dict[str, Any]) -> RecordView:
    details = []
    criticality = r.get("criticality")
    if isinstance(criticality, str):
        details.append(("Criticality", criticality))
    reactions = []
    for reaction in r.get("reaction") or []:
        if isinstance(reaction, dict):
            reactions += [codeable(m) for m in reaction.get("manifestation") or []]
    if any(reactions):
        details.append(("Reaction", ", ".join(filter(None, reactions))))
    return RecordView(
        "AllergyIntolerance",
        codeable(r.get("code")) or "Allergy",
        _when(r),
        status=_status(r),
        details=details,
    )


def _patient(r: dict[str, Any]) -> RecordView:
    name = _first(r.get("name"))
    text = ""
    if isinstance(name, dict):
        given = " ".join(str(g) for g in name.get("given") or [])
        text = str(name.get("text") or f"{given} {name.get('family') or ''}".strip())
    details = []
    if isinstance(r.get("gender"), str):
        details.append(("Gender", r["gender"]))
    return RecordView("Patient", text or "Patient", _when(r), details=details)


def _generic(r: dict[str, Any]) -> RecordView:
    type_ = str(r.get("resourceType") or "Resource")
    title = ""
    for key in ("code", "type", "vaccineCode", "class", "category"):
        value = r.get(key)
        title = codeable(_first(value) if isinstance(value, list) else value)
        if title:
            break
    if not title and isinstance(r.get("description"), str):
        title = r["description"]
    details = []
    conclusion = r.get("conclusion")
    if isinstance(conclusion, str):
        details.append(("Conclusion", conclusion))
    return RecordView(type_, title or type_, _when(r), status=_status(r), details=details)


_BY_TYPE: dict[str, Callable[[dict[str, Any]], RecordView]] = {
    "Observation": _observation,
    "Condition": _condition,
    "MedicationRequest": _medication,
    "MedicationStatement": _medication,
    "Immunization": _immunization,
    "ImagingStudy": _imaging,
    "AllergyIntolerance": _allergy,
    "Patient": _patient,
}


def describe(resource: Any) -> RecordView:
    """How to show ``resource`` (any JSON value: anything not a resource is shown as one)."""
    if not isinstance(resource, dict):
        return RecordView("Resource", "Unreadable resource")
    type_ = resource.get("resourceType")
    handler = _BY_TYPE.get(type_) if isinstance(type_, str) else None
    try:
        return (handler or _generic)(resource)
    except (AttributeError, TypeError, KeyError, ValueError):  # odd shapes: generic view
        return _generic(resource)
