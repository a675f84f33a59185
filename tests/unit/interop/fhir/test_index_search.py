"""The FHIR index's search against a brute-force model: a few thousand synthetic
Observations (some updated, some dropped, some with two effective dates or codings, ties in
lastUpdated) and hundreds of random searches combining patient, code, date (every prefix and
precision), status, _id and _lastUpdated, with paging; every page and total must equal a
plain Python filter and sort of the current resources.

Each search runs with the default planner and with one tuned so small that every plan
(driver joined whole, counted and walked in page order, walk giving up) is taken."""

from __future__ import annotations

import functools
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from medmesh.interop.fhir.index import (
    SCHEMA_VERSION,
    FhirIndex,
    IndexedResource,
    Query,
    SearchTuning,
)
from medmesh.interop.fhir.params import FOREVER, DateRange, date_range
from medmesh.interop.fhir.search import parse_search

START = datetime(2023, 1, 1, tzinfo=UTC).timestamp()
DAYS = 730
PATIENTS = [f"p{i}" for i in range(30)]
CODES = ["2339-0", "8867-4", "8480-6", "718-7", "4548-4", "2160-0"]
STATUSES = ["final", "amended", "preliminary"]
TUNINGS = {"default": SearchTuning(), "tiny": SearchTuning(small=15, estimate_limit=400)}


@dataclass(eq=False)
class Model:
    """What the index should hold as current: id -> (record, last_updated, body)."""

    current: dict[str, tuple[bytes, float, dict[str, Any]]]

    @functools.cache  # noqa: B019 (built once per module)
    def facts(self) -> list[Fact]:
        return [_fact(id_, *v) for id_, v in self.current.items()]


def _iso(at: float, precision: str) -> str:
    moment = datetime.fromtimestamp(at, UTC)
    return {
        "year": moment.strftime("%Y"),
        "month": moment.strftime("%Y-%m"),
        "day": moment.strftime("%Y-%m-%d"),
        "second": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }[precision]


def _observation(rng: random.Random, id_: str, at: float) -> dict[str, Any]:
    """An Observation effective around ``at``, of a patient (the first ones have more)."""
    patient = PATIENTS[min(int(len(PATIENTS) * rng.random() ** 2), len(PATIENTS) - 1)]
    codings = [{"system": "http://loinc.org", "code": rng.choice(CODES)}]
    if rng.random() < 0.1:  # a second coding: searches for both codes must count it once
        codings.append({"system": "http://loinc.org", "code": rng.choice(CODES)})
    body: dict[str, Any] = {
        "resourceType": "Observation", "id": id_, "status": rng.choice(STATUSES),
        "code": {"coding": codings}, "subject": {"reference": f"Patient/{patient}"},
    }  # fmt: skip
    kind = rng.random()
    if kind < 0.7:
        body["effectiveDateTime"] = _iso(at, rng.choice(["second", "second", "day", "month"]))
    elif kind < 0.85:
        body["effectivePeriod"] = {"start": _iso(at, "second")}  # open end: forever
        if rng.random() < 0.5:
            body["effectivePeriod"]["end"] = _iso(at + rng.randrange(90 * 86400), "day")
    elif kind < 0.95:  # two values of one date parameter (both forms of effective[x])
        body["effectiveDateTime"] = _iso(at, "second")
        body["effectivePeriod"] = {"start": _iso(at - rng.randrange(30 * 86400), "day")}
    return body  # else: no date at all


def _owner(body: dict[str, Any]) -> str:
    """The account that owns a resource (here: one per patient)."""
    return "0x" + body["subject"]["reference"].split("/")[1]


def _build(tmp_path: Path, rng: random.Random, n: int = 3000) -> tuple[FhirIndex, Model]:
    secret = os.urandom(32)
    index = FhirIndex(tmp_path / "fhir.db", secret)
    model = Model({})
    rows: list[tuple[IndexedResource, dict[str, Any]]] = []
    for i in range(n):
        id_ = f"o{i}"
        at = START + rng.randrange(DAYS * 86400)
        body = _observation(rng, id_, at)
        # lastUpdated follows the effective date (as when data are recorded as they come),
        # whole days: many ties, ordered by record
        last = (at + rng.randrange(86400)) // 86400 * 86400
        record = os.urandom(32)
        rows.append(
            (IndexedResource(record, "Observation", id_, 1, True, _owner(body), b"c", last), body)
        )
        model.current[id_] = (record, last, body)
    index.put(rows)
    # updates: a new version replaces the old in search; a late older version does not
    updates, stale = [], []
    for i in rng.sample(range(n), n // 10):
        id_ = f"o{i}"
        record, at = os.urandom(32), model.current[id_][1] + 86400 * rng.randrange(1, 30)
        body = _observation(rng, id_, at)
        updates.append(
            (IndexedResource(record, "Observation", id_, 2, True, _owner(body), b"c", at), body)
        )
        model.current[id_] = (record, at, body)
    for i in rng.sample(range(n), n // 50):
        stale.append((IndexedResource(os.urandom(32), "Observation", f"o{i}", 0, True, "0xowner", b"c", START), _observation(rng, f"o{i}", START)))  # fmt: skip
    index.put(updates + stale)
    # other types with the same parameter names are never found
    index.put(
        [
            (IndexedResource(os.urandom(32), "Procedure", f"x{i}", 1, True, "0xowner", b"c", START),
             {"resourceType": "Procedure", "id": f"x{i}", "status": "final",
              "code": {"coding": [{"system": "http://loinc.org", "code": CODES[0]}]},
              "subject": {"reference": f"Patient/{PATIENTS[0]}"}, "performedDateTime": "2024-01-01"})
            for i in range(50)
        ]
    )  # fmt: skip
    dropped = rng.sample(sorted(model.current), n // 20)
    assert index.drop([model.current[i][0] for i in dropped]) == len(dropped)
    for id_ in dropped:
        del model.current[id_]
    return index, model


# -- the brute force --------------------------------------------------------------------------


@functools.cache
def _ranges_of(
    effective: str | None, start: str | None, end: str | None
) -> list[tuple[float, float]]:
    out = []
    if effective is not None:
        r = date_range(effective)
        out.append((r.lo, r.hi))
    if start is not None or end is not None:
        lo = date_range(start).lo if start is not None else -FOREVER
        hi = date_range(end).hi if end is not None else FOREVER
        out.append((lo, hi))
    return out


def _ranges(body: dict[str, Any]) -> list[tuple[float, float]]:
    period = body.get("effectivePeriod") or {}
    return _ranges_of(body.get("effectiveDateTime"), period.get("start"), period.get("end"))


def _date_test(prefix: str, p: DateRange) -> Callable[[float, float], bool]:
    """FHIR R4 date prefixes: the resource's range [lo, hi) against the value's [p.lo, p.hi)."""
    span = max(p.hi - p.lo, 1.0)
    return {
        "eq": lambda lo, hi: lo >= p.lo and hi <= p.hi,
        "ne": lambda lo, hi: not (lo >= p.lo and hi <= p.hi),
        "gt": lambda lo, hi: hi > p.hi,
        "lt": lambda lo, hi: lo < p.lo,
        "ge": lambda lo, hi: hi > p.lo,
        "le": lambda lo, hi: lo < p.hi,
        "sa": lambda lo, hi: lo >= p.hi,
        "eb": lambda lo, hi: hi <= p.lo,
        "ap": lambda lo, hi: lo < p.hi + span * 0.1 and hi > p.lo - span * 0.1,
    }[prefix]


@dataclass(frozen=True)
class Fact:
    """What a search can see of one current resource."""

    id: str
    record: bytes
    at: float  # lastUpdated
    patient: str
    codes: frozenset[str]
    status: str
    ranges: tuple[tuple[float, float], ...]


def _fact(id_: str, record: bytes, at: float, body: dict[str, Any]) -> Fact:
    return Fact(
        id_, record, at, body["subject"]["reference"].split("/")[1],
        frozenset(c["code"] for c in body["code"]["coding"]), body["status"], tuple(_ranges(body)),
    )  # fmt: skip


def _test(name: str, value: str) -> Callable[[Fact], bool]:
    """One search parameter as a predicate (values split on commas are ORed)."""
    values = value.split(",")
    if name == "patient":
        return lambda f: f.patient in values
    if name == "owners":  # Query.patients, the owners a search is restricted to
        return lambda f: "0x" + f.patient in values
    if name == "code":
        codes = {v.split("|")[-1] for v in values}
        return lambda f: bool(f.codes & codes)
    if name == "status":
        return lambda f: f.status in values
    if name == "_id":
        return lambda f: f.id in values
    within = _date_test(value[:2], date_range(value[2:]))
    if name == "date":
        return lambda f: any(within(lo, hi) for lo, hi in f.ranges)
    assert name == "_lastUpdated"
    return lambda f: within(f.at, f.at)


def _expected(model: Model, pairs: list[tuple[str, str]]) -> tuple[list[str], int]:
    tests = [_test(n, v) for n, v in pairs if n not in ("_count", "_offset")]
    found = [f for f in model.facts() if all(t(f) for t in tests)]
    found.sort(key=lambda f: (-f.at, f.record))  # newest first, then by record
    count = int(dict(pairs).get("_count", 20))
    offset = int(dict(pairs).get("_offset", 0))
    return [f.id for f in found[offset : offset + count]], len(found)


# -- random searches ----------------------------------------------------------------------------


def _date_value(rng: random.Random) -> str:
    prefix = rng.choice(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
    at = START + rng.randrange(-30, DAYS + 30) * 86400 + rng.randrange(86400)
    return prefix + _iso(at, rng.choice(["year", "month", "day", "day", "second"]))


def _search(rng: random.Random, ids: list[str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        pairs.append(("patient", ",".join(rng.sample(PATIENTS, rng.choice([1, 1, 2])))))
    if rng.random() < 0.6:
        codes = rng.sample(CODES, rng.choice([1, 1, 2]))
        pairs.append(("code", ",".join(rng.choice(["", "http://loinc.org|"]) + c for c in codes)))
    for _ in range(rng.choice([0, 1, 1, 2])):
        pairs.append(("date", _date_value(rng)))
    if rng.random() < 0.2:
        pairs.append(("status", ",".join(rng.sample(STATUSES, rng.choice([1, 2])))))
    if rng.random() < 0.1:
        pairs.append(("_id", ",".join(rng.sample(ids, 5))))
    if rng.random() < 0.15:
        pairs.append(("_lastUpdated", _date_value(rng)))
    if rng.random() < 0.1:
        pairs.append(("owners", ",".join("0x" + p for p in rng.sample(PATIENTS, 3))))
    pairs.append(("_count", str(rng.choice([0, 1, 7, 20, 20, 100]))))
    if rng.random() < 0.4:
        pairs.append(("_offset", str(rng.choice([1, 20, 55, 300, 5000]))))
    return pairs


def _query(pairs: list[tuple[str, str]]) -> Query:
    query = parse_search("Observation", [(n, v) for n, v in pairs if n != "owners"])
    for name, value in pairs:
        if name == "owners":
            query.patients = value.split(",")
    return query


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[FhirIndex, Model]:
    return _build(tmp_path_factory.mktemp("index"), random.Random(20250601))


@pytest.mark.parametrize("tuning", sorted(TUNINGS))
def test_random_searches_match_a_brute_force_filter(
    built: tuple[FhirIndex, Model], tuning: str
) -> None:
    # Prepare
    index, model = built
    index.tuning = TUNINGS[tuning]
    rng = random.Random(7)
    ids = sorted({f"o{i}" for i in range(3000)})
    fixed = [
        [("patient", "p3"), ("code", "http://loinc.org|2339-0"), ("date", "ge2024-03-01")],
        [("patient", "p0"), ("code", "8867-4"), ("date", "le2023-09"), ("_count", "5")],
        [("patient", "p0"), ("date", "gt2024-02-29T12:00:00Z"), ("date", "lt2024-06")],
        [("code", "2339-0,8867-4"), ("date", "eq2024-05"), ("_offset", "3")],
        [("status", "final"), ("_count", "50"), ("_offset", "900")],
        [("date", "le2023-03-01"), ("status", "final,amended")],  # old ones: the walk gives up
        [("_lastUpdated", "ge2024-10"), ("_count", "100")],
        [("_count", "3"), ("_offset", "2997")],
        [("_id", ",".join(f"o{i}" for i in range(0, 3000, 3))), ("patient", "p29")],
        [("owners", "0xp0,0xp29"), ("code", "2339-0"), ("_count", "100")],
        [("owners", "0xp29"), ("_id", "o1,o2,o3,o4,o5,o6,o7,o8,o9")],
        [],
    ]
    # Execute / Assert
    for pairs in fixed + [_search(rng, ids) for _ in range(400)]:
        found, total = index.search(_query(pairs))
        want, want_total = _expected(model, pairs)
        assert ([r.id for r, _ in found], total) == (want, want_total), pairs
        assert all(body["id"] == r.id and r.current for r, body in found)


@pytest.mark.parametrize(
    ("pairs", "plan"),
    [
        ([("_id", "o1,o2,o3,o4"), ("code", "2339-0,8867-4"), ("date", "ge2023-02")], "joined"),
        ([("patient", "p3"), ("code", "2339-0"), ("date", "ge2024-03-01")], "sorted"),
        ([("status", "final")], "walked"),
        ([("date", "le2023-03-01"), ("status", "final,amended")], "sorted"),
        ([], "walked"),
    ],
)
def test_the_brute_force_reaches_every_plan(
    built: tuple[FhirIndex, Model], pairs: list[tuple[str, str]], plan: str
) -> None:
    """The tiny tuning does take each plan (else the comparison above proves less)."""
    # Prepare
    index, model = built
    index.tuning = TUNINGS["tiny"]
    statements: list[str] = []
    index._conn().set_trace_callback(statements.append)
    # Execute
    try:
        found, total = index.search(_query(pairs))
    finally:
        index._conn().set_trace_callback(None)
    # Assert
    assert ([r.id for r, _ in found], total) == _expected(model, pairs)
    taken = {
        kind
        for sql in statements
        for kind, start in [
            ("joined", "SELECT r.rid, r.last_updated, r.record FROM ("),
            ("walked", "SELECT r.rid FROM resources r WHERE r.type"),
            ("sorted", "SELECT r.rid FROM ("),
        ]
        if sql.startswith(start)
    }
    assert (
        taken == {"joined": {"joined"}, "walked": {"walked"}, "sorted": {"walked", "sorted"}}[plan]
    ), statements


def test_an_index_of_another_schema_is_rebuilt(tmp_path: Path) -> None:
    # Prepare: a file as schema 1 left it
    path = tmp_path / "fhir.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE resources (record BLOB PRIMARY KEY, type TEXT NOT NULL, id TEXT NOT NULL,
                version INTEGER NOT NULL, current INTEGER NOT NULL, patient TEXT NOT NULL,
                cid BLOB NOT NULL, last_updated REAL NOT NULL, body BLOB NOT NULL);
            CREATE TABLE tokens (record BLOB NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL);
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO resources VALUES (x'01', 'Observation', 'o1', 1, 1, '0xa', x'02', 1.0, x'03');
            INSERT INTO meta VALUES ('schema', '1'), ('ledger_block', '1234');
            """
        )
    conn.close()
    # Execute
    secret = os.urandom(32)
    index = FhirIndex(path, secret)
    # Assert: empty, and the next sync is a full one
    assert index.count() == 0 and index.get_meta("ledger_block") is None
    assert index.get_meta("schema") == str(SCHEMA_VERSION)
    body = {"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"code": "x"}]}, "subject": {"reference": "Patient/p"}}  # fmt: skip
    index.put([(IndexedResource(b"\1" * 32, "Observation", "o1", 1, True, "0xa", b"c", 5.0), body)])
    found, total = index.search(parse_search("Observation", [("code", "x")]))
    assert total == 1 and found[0][1] == body
    index.close()
    # a file of the current schema is kept as it is
    again = FhirIndex(path, secret)
    assert again.count() == 1 and again.search(parse_search("Observation", [("code", "x")]))[1] == 1
    again.close()
