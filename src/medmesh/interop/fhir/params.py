"""FHIR search parameters: which ones medmesh supports, and their values in a resource.

Each supported resource type has a small table of search parameters, named and typed as in
the FHIR R4 specification (``Observation?patient=…&code=…&date=ge2024``). A parameter is one
of three kinds:

- **token** — a code: ``code``, ``gender``, ``identifier``, ``status``. Indexed per coding as
  ``system|code`` and ``|code`` forms so that ``code=http://loinc.org|8867-4`` and
  ``code=8867-4`` both match;
- **date** — a time range ``[lo, hi)`` in epoch seconds: a ``date`` of ``2024-03`` is the
  whole month, a ``Period`` its start to its end (an open end is "forever"), a ``dateTime``
  without a zone is read as UTC;
- **reference** — ``Type/id`` of another resource: ``patient``, ``subject``, ``encounter``.

Paths are dotted element names; a choice element (``effective[x]``) is written without its
type suffix and matches every typed form (``effectiveDateTime``, ``effectivePeriod``, …).
Common to all types: ``_id``, ``_lastUpdated`` (kept in the resource table, not here) and
``_count`` / ``_offset`` for paging.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

__all__ = [
    "DATE_PREFIXES",
    "FOREVER",
    "SEARCH_PARAMS",
    "DateRange",
    "Param",
    "date_range",
    "extract",
    "ref_key",
]

ParamKind = Literal["token", "date", "reference"]
FOREVER: Final = 253402300800.0  # 10000-01-01T00:00:00Z: the end of an open period
DATE_PREFIXES: Final = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")


@dataclass(frozen=True)
class Param:
    name: str
    kind: ParamKind
    paths: tuple[str, ...]
    target: str | None = None  # reference parameters: the only type they may point to


def _p(name: str, kind: ParamKind, *paths: str, target: str | None = None) -> Param:
    return Param(name, kind, paths, target)


_SUBJECT = (
    _p("subject", "reference", "subject"),
    _p("patient", "reference", "subject", target="Patient"),
)
_ENCOUNTER = _p("encounter", "reference", "encounter")
_STATUS = _p("status", "token", "status")

SEARCH_PARAMS: Final[dict[str, dict[str, Param]]] = {
    t: {p.name: p for p in params}
    for t, params in {
        "Patient": (
            _p("identifier", "token", "identifier"),
            _p("gender", "token", "gender"),
            _p("birthdate", "date", "birthDate"),
        ),
        "Observation": (
            *_SUBJECT, _ENCOUNTER, _STATUS,
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("date", "date", "effective"),
        ),
        "Condition": (
            *_SUBJECT, _ENCOUNTER,
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("onset-date", "date", "onset"),
            _p("recorded-date", "date", "recordedDate"),
        ),
        "AllergyIntolerance": (
            _p("patient", "reference", "patient", target="Patient"),
            _p("code", "token", "code"),
            _p("clinical-status", "token", "clinicalStatus"),
            _p("date", "date", "recordedDate"),
        ),
        "MedicationRequest": (
            *_SUBJECT, _ENCOUNTER, _STATUS,
            _p("code", "token", "medicationCodeableConcept"),
            _p("intent", "token", "intent"),
            _p("authoredon", "date", "authoredOn"),
        ),
        "Immunization": (
            _p("patient", "reference", "patient", target="Patient"), _STATUS,
            _p("vaccine-code", "token", "vaccineCode"),
            _p("date", "date", "occurrence"),
        ),
        "Procedure": (
            *_SUBJECT, _ENCOUNTER, _STATUS,
            _p("code", "token", "code"),
            _p("date", "date", "performed"),
        ),
        "Encounter": (
            *_SUBJECT, _STATUS,
            _p("class", "token", "class"),
            _p("type", "token", "type"),
            _p("date", "date", "period"),
        ),
        "DiagnosticReport": (
            *_SUBJECT, _ENCOUNTER, _STATUS,
            _p("code", "token", "code"),
            _p("category", "token", "category"),
            _p("date", "date", "effective"),
        ),
        "DocumentReference": (
            *_SUBJECT, _STATUS,
            _p("type", "token", "type"),
            _p("category", "token", "category"),
            _p("date", "date", "date"),
        ),
        "ImagingStudy": (
            *_SUBJECT, _ENCOUNTER, _STATUS,
            _p("modality", "token", "modality"),
            _p("started", "date", "started"),
        ),
        "Consent": (
            _p("patient", "reference", "patient", target="Patient"), _STATUS,
            _p("category", "token", "category"),
            _p("date", "date", "dateTime"),
        ),
    }.items()
}  # fmt: skip


# -- values of a path --------------------------------------------------------------------------


def _values(node: Any, parts: list[str]) -> Iterator[tuple[str, Any]]:
    """(element name as found, value) for the dotted path ``parts`` under ``node``."""
    if isinstance(node, list):
        for item in node:
            yield from _values(item, parts)
        return
    if not isinstance(node, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    keys = (
        [head]
        if head in node
        else [k for k in node if k.startswith(head) and k[len(head) : len(head) + 1].isupper()]
    )
    for key in keys:
        value = node[key]
        if rest:
            yield from _values(value, rest)
        elif isinstance(value, list):
            for item in value:
                yield key, item
        else:
            yield key, value


def _tokens(value: Any) -> Iterator[str]:
    """``system|code`` and ``|code`` forms of a code, Coding, CodeableConcept or Identifier."""
    if isinstance(value, str | bool):
        text = str(value).lower() if isinstance(value, bool) else value
        yield f"|{text}"
        return
    if not isinstance(value, dict):
        return
    if "coding" in value:
        for coding in value["coding"] or []:
            yield from _tokens(coding)
        return
    code = value.get("code", value.get("value"))
    if isinstance(code, str):
        system = value.get("system")
        if isinstance(system, str):
            yield f"{system}|{code}"
        yield f"|{code}"


_DATE_RE: Final = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


@dataclass(frozen=True)
class DateRange:
    lo: float  # inclusive, epoch seconds
    hi: float  # exclusive


def date_range(text: str) -> DateRange:
    """The range a FHIR date, dateTime or instant stands for (its precision's whole span).

    Raises ValueError for anything that is not one.
    """
    m = _DATE_RE.match(text)
    if m is None:
        raise ValueError("not a FHIR date or dateTime")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    y = int(year)
    if month is None:
        return DateRange(
            _epoch(datetime(y, 1, 1, tzinfo=UTC)), _epoch(datetime(y + 1, 1, 1, tzinfo=UTC))
        )
    mo = int(month)
    if day is None:
        end = datetime(y + 1, 1, 1, tzinfo=UTC) if mo == 12 else datetime(y, mo + 1, 1, tzinfo=UTC)
        return DateRange(_epoch(datetime(y, mo, 1, tzinfo=UTC)), _epoch(end))
    d = int(day)
    if d > calendar.monthrange(y, mo)[1]:
        raise ValueError("no such day")
    if hour is None:
        start = datetime(y, mo, d, tzinfo=UTC)
        return DateRange(_epoch(start), _epoch(start + timedelta(days=1)))
    offset = timedelta(0)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    start = datetime(y, mo, d, int(hour), int(minute), int(second or 0), tzinfo=UTC) - offset
    lo = _epoch(start) + (float(frac) if frac else 0.0)
    step = 60.0 if second is None else (10.0 ** -(len(frac) - 1) if frac else 1.0)
    return DateRange(lo, lo + step)


def _epoch(moment: datetime) -> float:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()


def _dates(key: str, value: Any) -> Iterator[DateRange]:
    if isinstance(value, str):
        try:
            yield date_range(value)
        except ValueError:
            return
    elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        try:
            lo = date_range(value["start"]).lo if value.get("start") else -FOREVER
            hi = date_range(value["end"]).hi if value.get("end") else FOREVER
        except (ValueError, TypeError):
            return
        yield DateRange(lo, hi)


def ref_key(reference: str) -> str | None:
    """``Type/id`` of a relative or absolute reference (any ``_history`` part dropped);
    None for ``#contained``, ``urn:`` and other references that name no server resource."""
    if reference.startswith(("#", "urn:")):
        return None
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


# -- extraction ----------------------------------------------------------------------------


@dataclass
class Extracted:
    tokens: list[tuple[str, str]]  # (param, "system|code" or "|code")
    dates: list[tuple[str, DateRange]]
    refs: list[tuple[str, str]]  # (param, "Type/id")


def extract(resource: dict[str, Any]) -> Extracted:
    """Every search-parameter value of ``resource`` (of a supported type)."""
    out = Extracted([], [], [])
    params = SEARCH_PARAMS.get(str(resource.get("resourceType")), {})
    for param in params.values():
        for path in param.paths:
            for key, value in _values(resource, path.split(".")):
                if param.kind == "token":
                    out.tokens.extend((param.name, t) for t in _tokens(value))
                elif param.kind == "date":
                    out.dates.extend((param.name, r) for r in _dates(key, value))
                elif isinstance(value, dict) and isinstance(value.get("reference"), str):
                    target = ref_key(value["reference"])
                    if target and (param.target is None or target.startswith(param.target + "/")):
                        out.refs.append((param.name, target))
    return out
