"""The gateway's FHIR search index: search semantics, versions, forgetting, and what it keeps
in clear (no bodies, no codes)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from medmesh.interop.fhir.index import FhirIndex, IndexedResource, Query
from medmesh.interop.fhir.outcome import FhirError
from medmesh.interop.fhir.params import date_range
from medmesh.interop.fhir.search import parse_search

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20


def _obs(id_: str, patient: str, code: str, when: str, name: str = "Zebulon") -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": id_, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": name},
        "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": when,
    }  # fmt: skip


def _row(
    n: int, id_: str, version: int = 1, owner: str = ALICE, at: float = 0.0
) -> IndexedResource:
    return IndexedResource(
        bytes([n]) * 32,
        "Observation",
        id_,
        version,
        True,
        owner,
        b"cid%d" % n,
        at or 1_700_000_000.0 + n,
    )


@pytest.fixture
def index(tmp_path: Path) -> FhirIndex:
    ix = FhirIndex(tmp_path / "fhir.db", os.urandom(32))
    ix.put(
        [
            (_row(1, "o1"), _obs("o1", "p1", "2339-0", "2025-06-05T09:00:00Z")),
            (_row(2, "o2"), _obs("o2", "p1", "2339-0", "2025-06-07T09:00:00Z")),
            (_row(3, "o3"), _obs("o3", "p1", "8867-4", "2025-06-07")),
            (_row(4, "o4", owner=BOB), _obs("o4", "p2", "2339-0", "2024-12-31T23:00:00-02:00")),
        ]
    )
    return ix


def _ids(index: FhirIndex, query: Query) -> list[str]:
    found, _ = index.search(query)
    return sorted(r.id for r, _ in found)


def _q(pairs: list[tuple[str, str]]) -> Query:
    return parse_search("Observation", pairs)


def test_token_reference_and_date_search(index: FhirIndex) -> None:
    assert _ids(index, _q([("code", "http://loinc.org|2339-0")])) == ["o1", "o2", "o4"]
    assert _ids(index, _q([("code", "2339-0"), ("patient", "p1")])) == ["o1", "o2"]
    assert _ids(index, _q([("code", "2339-0,8867-4"), ("subject", "Patient/p1")])) == [
        "o1",
        "o2",
        "o3",
    ]
    assert _ids(index, _q([("code", "http://snomed.info/sct|2339-0")])) == []
    assert _ids(index, _q([("date", "ge2025-06-06")])) == ["o2", "o3"]
    assert _ids(index, _q([("date", "2025-06-07")])) == ["o2", "o3"]  # eq: within the day
    assert _ids(index, _q([("date", "ge2025-06"), ("date", "lt2025-06-07")])) == ["o1"]
    # 23:00 at -02:00 is 01:00 UTC on New Year's day
    assert _ids(index, _q([("date", "2025-01-01")])) == ["o4"]
    assert _ids(index, _q([("date", "sa2025-06-05")])) == ["o2", "o3"]
    assert _ids(index, _q([("date", "eb2025-06-06")])) == ["o1", "o4"]
    assert _ids(index, _q([("_id", "o2,o3"), ("code", "8867-4")])) == ["o3"]


def test_paging_is_newest_first_with_a_total(index: FhirIndex) -> None:
    found, total = index.search(_q([("_count", "2")]))
    assert total == 4 and [r.id for r, _ in found] == ["o4", "o3"]
    found, _ = index.search(_q([("_count", "2"), ("_offset", "2")]))
    assert [r.id for r, _ in found] == ["o2", "o1"]


def test_a_new_version_replaces_the_old_in_search(index: FhirIndex) -> None:
    index.put([(_row(5, "o1", version=2), _obs("o1", "p1", "1111-1", "2026-01-01"))])
    assert _ids(index, _q([("code", "2339-0"), ("patient", "p1")])) == ["o2"]
    assert _ids(index, _q([("code", "1111-1")])) == ["o1"]
    assert [v.version for v in index.versions("Observation", "o1")] == [2, 1]
    current = index.current("Observation", "o1")
    assert current is not None and current.record == bytes([5]) * 32
    # an older version arriving late does not become current
    index.put([(_row(6, "o2", version=0), _obs("o2", "p1", "0000-0", "2020-01-01"))])
    assert _ids(index, _q([("code", "0000-0")])) == []


def _param_rows(index: FhirIndex) -> dict[str, int]:
    with sqlite3.connect(index.path) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("tokens", "dates", "refs")
        }


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_versions_of_one_resource_in_one_batch(tmp_path: Path, order: tuple[int, ...]) -> None:
    """put takes a batch in one go: whatever order its versions come in, the newest is the
    only current one and the only one with parameter rows, as if put one by one."""
    ix = FhirIndex(tmp_path / "fhir.db", os.urandom(32))
    codes = {1: "1111-1", 2: "2222-2", 3: "3333-3"}
    ix.put(
        [
            (_row(10 + v, "o9", version=v), _obs("o9", "p1", codes[v], f"2026-0{v}-01"))
            for v in order
        ]
    )
    assert [v.version for v in ix.versions("Observation", "o9")] == [3, 2, 1]
    assert [v.current for v in ix.versions("Observation", "o9")] == [True, False, False]
    assert _ids(ix, _q([("code", "3333-3")])) == ["o9"]
    assert _ids(ix, _q([("code", "1111-1,2222-2")])) == []
    assert _ids(ix, _q([("date", "lt2026-03-01")])) == []
    alone = FhirIndex(tmp_path / "alone.db", os.urandom(32))  # the newest version by itself
    alone.put([(_row(13, "o9", version=3), _obs("o9", "p1", codes[3], "2026-03-01"))])
    assert _param_rows(ix) == _param_rows(alone)


def test_the_same_versions_again_change_nothing(index: FhirIndex) -> None:
    before = _param_rows(index)
    again = [
        (_row(1, "o1"), _obs("o1", "p1", "2339-0", "2025-06-05T09:00:00Z")),
        (_row(2, "o2"), _obs("o2", "p1", "2339-0", "2025-06-07T09:00:00Z")),
    ]
    index.put(again + again[:1])  # twice in one batch, and already indexed
    assert index.count() == 4 and _param_rows(index) == before
    assert _ids(index, _q([("code", "2339-0"), ("patient", "p1")])) == ["o1", "o2"]
    assert [v.version for v in index.versions("Observation", "o1")] == [1]


def test_a_forgotten_resource_indexed_again_is_no_longer_forgotten(index: FhirIndex) -> None:
    index.drop([bytes([1]) * 32])
    assert index.forgotten("Observation", "o1") is not None
    index.put([(_row(7, "o1", version=2), _obs("o1", "p1", "2339-0", "2026-01-01"))])
    assert index.forgotten("Observation", "o1") is None
    assert _ids(index, _q([("code", "2339-0"), ("patient", "p1")])) == ["o1", "o2"]


def test_drop_forgets_everything_of_a_record(index: FhirIndex) -> None:
    assert index.drop(index.records_of(BOB)) == 1
    assert _ids(index, _q([("code", "2339-0")])) == ["o1", "o2"]
    assert index.current("Observation", "o4") is None


def test_bodies_and_codes_are_not_kept_in_clear(index: FhirIndex) -> None:
    raw = Path(index.path).read_bytes()
    wal = Path(index.path + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"Zebulon" not in raw and b"2339-0" not in raw and b"loinc" not in raw
    body = index.body(bytes([1]) * 32)
    assert body is not None and body["code"]["text"] == "Zebulon"


def test_another_key_cannot_read_and_starts_over(index: FhirIndex, tmp_path: Path) -> None:
    index.close()
    other = FhirIndex(tmp_path / "fhir.db", os.urandom(32))
    assert other.count() == 0
    with sqlite3.connect(tmp_path / "fhir.db") as conn:
        assert conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 0


def test_date_ranges_follow_precision() -> None:
    assert date_range("2024").hi - date_range("2024").lo == 366 * 86400
    assert date_range("2025-02").hi - date_range("2025-02").lo == 28 * 86400
    assert date_range("2025-06-06T10:00:00.250Z").hi - date_range(
        "2025-06-06T10:00:00.250Z"
    ).lo == pytest.approx(0.001, abs=1e-6)
    for bad in ("2025-13", "2025-02-30", "yesterday", "2025-6-1"):
        with pytest.raises(ValueError):
            date_range(bad)


@pytest.mark.parametrize(
    "pairs",
    [[("color", "red")], [("date", "2025-99")], [("_count", "-1")], [("_count", "x")], [("code:text", "x")],
     [("date", "ge2024,le2025")], [("patient", "")]],
)  # fmt: skip
def test_bad_search_parameters_are_refused(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(FhirError) as err:
        parse_search("Observation", pairs)
    assert err.value.status == 400
    assert err.value.to_outcome()["resourceType"] == "OperationOutcome"
