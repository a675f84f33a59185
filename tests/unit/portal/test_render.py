"""Readable FHIR: vitals and labs with value, unit and reference range; conditions,
medications, immunizations, imaging studies; anything else generically."""

from __future__ import annotations

from medmesh.ledger.contracts import Scope, kind_tag
from medmesh.portal.labels import kind_label, kind_name, scope_label, short_address
from medmesh.portal.plot import Series, buckets, line_chart
from medmesh.portal.render import codeable, describe, quantity


def test_lab_observation_shows_value_unit_and_reference_range() -> None:
    view = describe({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2", "display": "Sodium"}]},
        "effectiveDateTime": "2026-01-01T09:00:00Z",
        "valueQuantity": {"value": 138.0, "unit": "mmol/L"},
        "referenceRange": [{"low": {"value": 135, "unit": "mmol/L"}, "high": {"value": 145, "unit": "mmol/L"}}],
        "interpretation": [{"coding": [{"code": "N", "display": "Normal"}]}],
    })  # fmt: skip
    assert (view.type, view.title, view.value) == ("Observation", "Sodium", "138 mmol/L")
    assert view.reference_range == "135–145 mmol/L"
    assert view.when == "2026-01-01T09:00:00Z"
    assert view.category == "Laboratory" and view.status == "final"
    assert ("Interpretation", "Normal") in view.details


def test_blood_pressure_components_are_listed() -> None:
    view = describe({
        "resourceType": "Observation", "status": "final", "code": {"text": "Blood pressure"},
        "component": [
            {"code": {"text": "Systolic"}, "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
            {"code": {"text": "Diastolic"}, "valueQuantity": {"value": 80, "unit": "mm[Hg]"}},
        ],
    })  # fmt: skip
    assert view.value == "Systolic: 120 mm[Hg]; Diastolic: 80 mm[Hg]"


def test_one_sided_ranges_and_comparators() -> None:
    view = describe({"resourceType": "Observation", "code": {"text": "LDL"},
                     "valueQuantity": {"value": 3, "comparator": "<", "unit": "mmol/L"},
                     "referenceRange": [{"high": {"value": 3.0, "unit": "mmol/L"}}]})  # fmt: skip
    assert view.value == "< 3 mmol/L" and view.reference_range == "≤ 3 mmol/L"
    assert quantity({"value": 1.5, "code": "mg"}) == "1.5 mg"
    assert quantity(None) == ""


def test_condition_medication_immunization_imaging() -> None:
    cond = describe({"resourceType": "Condition", "code": {"coding": [{"code": "44054006", "display": "Diabetes"}]},
                     "clinicalStatus": {"coding": [{"code": "active"}]}, "onsetDateTime": "2020-03-01"})  # fmt: skip
    assert (cond.title, cond.status, cond.when) == ("Diabetes", "active", "2020-03-01")
    med = describe({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                    "medicationCodeableConcept": {"text": "Metformin 500 mg"},
                    "dosageInstruction": [{"text": "twice a day"}], "authoredOn": "2021-01-02"})  # fmt: skip
    assert med.title == "Metformin 500 mg" and ("Dosage", "twice a day") in med.details
    imm = describe({"resourceType": "Immunization", "status": "completed",
                    "vaccineCode": {"text": "Influenza"}, "occurrenceDateTime": "2025-10-01",
                    "lotNumber": "A1"})  # fmt: skip
    assert (imm.title, imm.when, imm.status) == ("Influenza", "2025-10-01", "completed")
    study = describe({"resourceType": "ImagingStudy", "status": "available", "description": "Chest X-ray",
                      "numberOfSeries": 1, "numberOfInstances": 2, "started": "2025-05-05T10:00:00Z",
                      "series": [{"modality": {"code": "DX"}, "bodySite": {"display": "Chest"}}]})  # fmt: skip
    assert (study.title, study.value) == ("Chest X-ray", "DX")
    assert ("Images", "2") in study.details and ("Body site", "Chest") in study.details


def test_other_types_and_odd_shapes_are_shown_generically() -> None:
    enc = describe({"resourceType": "Encounter", "status": "finished",
                    "type": [{"text": "Check-up"}], "period": {"start": "2024-02-02"}})  # fmt: skip
    assert (enc.type, enc.title, enc.when, enc.status) == (
        "Encounter",
        "Check-up",
        "2024-02-02",
        "finished",
    )
    odd = describe({"resourceType": "Observation", "code": "not a concept", "component": "x"})
    assert odd.type == "Observation"
    assert describe(["not", "a", "resource"]).title == "Unreadable resource"
    assert codeable({"coding": [{"code": "x"}]}) == "x"


def test_labels_name_kinds_scopes_and_shorten_addresses() -> None:
    assert kind_name(kind_tag("fhir:Observation")) == "fhir:Observation"
    assert kind_label(kind_tag("fhir:Condition")) == "Condition"
    assert kind_name(b"\1\2\3\4") == "kind 0x01020304"
    assert scope_label(Scope.all().word) == "all records"
    assert scope_label(Scope.kind("fhir:Observation").word) == "Observation records"
    assert scope_label(b"\x11" * 32).startswith("one record")
    assert short_address("0x" + "ab" * 20) == "0xabab…abab"


def test_chart_is_escaped_svg_with_title_and_description() -> None:
    points = buckets([0.0, 10.0, 10.0, 90.0], start=0.0, end=100.0, count=4, cumulative=True)
    assert points == [(25.0, 3.0), (50.0, 3.0), (75.0, 3.0), (100.0, 4.0)]
    assert [y for _, y in buckets([0.0, 99.0], start=0.0, end=100.0, count=2)] == [1.0, 1.0]
    svg = line_chart("Stored <and> accessed", [Series("a&b", points, "stored")], chart_id="c")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'role="img"' in svg and '<title id="c-title">Stored &lt;and&gt; accessed</title>' in svg
    assert "a&amp;b" in svg and "<desc" in svg
    assert line_chart("empty", []) == ""
