"""FHIR search requests (``GET /fhir/Observation?patient=…&code=…&date=ge2024-01``) parsed
into a :class:`~medmesh.interop.fhir.index.Query`.

Rules, as in FHIR R4 (3.1.1 Search): repeating a parameter ANDs its conditions
(``date=ge2024&date=lt2025``); commas inside one value OR them (``code=a,b``). Date values take
a prefix (``eq`` by default). References are ``Type/id`` or a bare id (of the parameter's
target type). Unknown parameters, unsupported modifiers and malformed values are refused with
400 rather than ignored, so a client never mistakes a wider result for the one it asked for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from medmesh.interop.fhir.index import Query
from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.params import DATE_PREFIXES, SEARCH_PARAMS, DateRange, date_range, ref_key

__all__ = ["DEFAULT_COUNT", "MAX_COUNT", "parse_search"]

DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 1000
_IGNORED: Final = {"_format", "_pretty", "_summary"}  # presentation only


def _bad(param: str, text: str) -> FhirError:
    return FhirError.invalid(
        [Issue("error", "invalid", f"search parameter {param}: {text}", [param])]
    )


def _split(value: str) -> list[str]:
    out = [v.strip() for v in value.split(",")]
    return [v for v in out if v]


def parse_search(type_: str, items: Iterable[tuple[str, str]]) -> Query:
    """A :class:`Query` for ``type_`` from the request's (name, value) pairs."""
    params = SEARCH_PARAMS.get(type_)
    if params is None:
        raise FhirError.not_found(f"resource type {type_} is not supported here")
    q = Query(type=type_, count=DEFAULT_COUNT)
    for name, value in items:
        if name in _IGNORED:
            continue
        if name == "_count":
            try:
                q.count = int(value)
            except ValueError:
                raise _bad(name, "expected a number") from None
            if not 0 <= q.count <= MAX_COUNT:
                raise _bad(name, f"must be between 0 and {MAX_COUNT}")
            continue
        if name == "_offset":
            try:
                q.offset = int(value)
            except ValueError:
                raise _bad(name, "expected a number") from None
            if q.offset < 0:
                raise _bad(name, "cannot be negative")
            continue
        if name == "_id":
            ids = _split(value)
            q.ids = ids if q.ids is None else [i for i in q.ids if i in ids]
            continue
        if name == "_lastUpdated":
            q.updated = [*(q.updated or []), _date(name, value)]
            continue
        base, _, modifier = name.partition(":")
        param = params.get(base)
        if param is None:
            raise _bad(name, f"not supported for {type_} (see /fhir/metadata)")
        values = _split(value)
        if not values:
            raise _bad(name, "empty value")
        if param.kind == "token":
            if modifier:
                raise _bad(name, f"modifier :{modifier} is not supported")
            q.tokens = [*(q.tokens or []), (base, [_token(v) for v in values])]
        elif param.kind == "reference":
            if modifier and modifier != (param.target or modifier):
                raise _bad(name, f"modifier :{modifier} is not supported")
            target = modifier or param.target
            q.refs = [*(q.refs or []), (base, [_reference(name, v, target) for v in values])]
        else:
            if modifier:
                raise _bad(name, f"modifier :{modifier} is not supported")
            if len(values) != 1:
                raise _bad(name, "give one date per parameter (repeat it to AND)")
            prefix, rng = _date(name, values[0])
            q.dates = [*(q.dates or []), (base, prefix, rng)]
    return q


def _token(value: str) -> str:
    if "|" in value:
        system, _, code = value.partition("|")
        return f"{system}|{code}" if system else f"|{code}"
    return f"|{value}"


def _reference(name: str, value: str, target: str | None) -> str:
    if "/" not in value:
        if target is None:
            raise _bad(name, "give the reference as Type/id")
        return f"{target}/{value}"
    key = ref_key(value)
    if key is None:
        raise _bad(name, "not a reference to a resource (Type/id)")
    return key


def _date(name: str, value: str) -> tuple[str, DateRange]:
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        return prefix, date_range(text)
    except ValueError:
        raise _bad(name, "not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)") from None
