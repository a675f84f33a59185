"""FHIR R4 validation (medmesh.interop.fhir.validation), against HL7's own R4 examples and bad
input of every kind. No diagnostic may repeat a value from the content: each bad value below
carries the marker ``Zebulon-PHI`` and every OperationOutcome is checked for it."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from medmesh.interop.fhir.bindings import RESOURCE_TYPES, VALUE_SETS
from medmesh.interop.fhir.outcome import FhirError
from medmesh.interop.fhir.validation import (
    MAX_BUNDLE_BYTES,
    MAX_DEPTH,
    MAX_ISSUES,
    MAX_JSON_DEPTH,
    MAX_RESOURCE_BYTES,
    SUPPORTED_TYPES,
    parse_json,
    parse_reference,
    references,
    validate_bundle,
    validate_resource,
)

EXAMPLES = Path(__file__).resolve().parents[4] / "node_modules" / "hl7.fhir.r4.examples"
MISSING = f"HL7 R4 examples not installed at {EXAMPLES} (run npm install)"
PHI = "Zebulon-PHI"

# How many official examples each supported type has in hl7.fhir.r4.examples (4.0.1).
EXAMPLE_COUNTS = {
    "Patient": 22,
    "Observation": 64,
    "Condition": 12,
    "AllergyIntolerance": 6,
    "MedicationRequest": 40,
    "Immunization": 5,
    "Procedure": 16,
    "Encounter": 10,
    "DiagnosticReport": 6,
    "DocumentReference": 1,
    "ImagingStudy": 2,
    "Consent": 12,
}

# Official examples that are not valid R4: (status, issue code, expression, diagnostics).
KNOWN_INVALID = {
    # Observation.performer may reference CareTeam, Organization, Patient, Practitioner,
    # PractitionerRole or RelatedPerson; this example points it at an Encounter.
    "Observation-clinical-gender.json": (
        422,
        "invalid",
        "Observation.performer[0].reference",
        "a reference to a Encounter is not allowed here (only CareTeam, Organization, Patient, "
        "Practitioner, PractitionerRole, RelatedPerson)",
    ),
    # MedicationRequest.dispenseRequest.performer may only reference an Organization.
    "MedicationRequest-medrx0301.json": (
        422,
        "invalid",
        "MedicationRequest.dispenseRequest.performer.reference",
        "a reference to a Practitioner is not allowed here (only Organization)",
    ),
}

# Transaction and batch bundles among the examples (with resources of any type).
BUNDLE_EXAMPLES = [
    "Bundle-bundle-request-medsallergies.json",
    "Bundle-bundle-request-simplesummary.json",
    "Bundle-bundle-transaction.json",
    "Bundle-hla-1.json",
    "Bundle-ussg-fht.json",
    "Bundle-xds.json",
]


def _example_names(types: tuple[str, ...]) -> list[Any]:
    if not EXAMPLES.is_dir():
        return [pytest.param("missing", marks=pytest.mark.skip(reason=MISSING))]
    return [p.name for t in types for p in sorted(EXAMPLES.glob(f"{t}-*.json"))]


def _load(name: str) -> dict[str, Any]:
    if not EXAMPLES.is_dir():
        pytest.skip(MISSING)
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_bytes())
    return data


def _fails(
    call: Any,
    status: int,
    code: str,
    expression: str | None,
    diagnostics: str | None = None,
) -> FhirError:
    """Run ``call``; it must raise a FhirError with ``status`` and an issue (``code``,
    ``expression``), and nothing in it may repeat the PHI marker."""
    with pytest.raises(FhirError) as info:
        call()
    err = info.value
    found = [(i.code, i.expression, i.diagnostics) for i in err.issues]
    assert err.status == status, found
    wanted = [expression] if expression is not None else []
    matching = [f for f in found if f[0] == code and f[1] == wanted]
    assert matching, found
    if diagnostics is not None:
        assert matching[0][2] == diagnostics
    outcome = err.to_outcome()
    assert validate_resource(outcome, allow_types=("OperationOutcome",)) is outcome
    assert PHI not in json.dumps(outcome)
    assert PHI not in err.message
    assert "Zebulon" not in err.message  # not even part of it
    return err


def _patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "name": [{"family": PHI}], **extra}


def _observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": PHI},
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


# -- the official examples -----------------------------------------------------------------


def test_every_supported_type_has_its_examples() -> None:
    if not EXAMPLES.is_dir():
        pytest.skip(MISSING)
    counts = {t: len(list(EXAMPLES.glob(f"{t}-*.json"))) for t in SUPPORTED_TYPES}
    assert counts == EXAMPLE_COUNTS
    assert sum(counts.values()) == 196


@pytest.mark.parametrize("name", _example_names(SUPPORTED_TYPES))
def test_official_example(name: str) -> None:
    # Prepare
    body = (EXAMPLES / name).read_bytes()
    data = parse_json(body, limit=MAX_RESOURCE_BYTES)
    before = copy.deepcopy(data)
    type_ = name.split("-", 1)[0]

    # Execute / Assert
    if name in KNOWN_INVALID:
        status, code, expression, diagnostics = KNOWN_INVALID[name]
        err = _fails(lambda: validate_resource(data, expected_type=type_), status, code, expression)
        assert [(i.code, i.expression, i.diagnostics) for i in err.issues] == [
            (code, [expression], diagnostics)
        ]
    else:
        assert validate_resource(data, expected_type=type_) is data
    assert data == before  # never changed


def test_examples_with_contained_resources_pass_the_contained_checks() -> None:
    # Prepare
    if not EXAMPLES.is_dir():
        pytest.skip(MISSING)
    names = [n for n in _example_names(SUPPORTED_TYPES) if n not in KNOWN_INVALID]
    with_local = []
    for name in names:
        data = _load(name)
        if any(ref.startswith("#") for _, ref in references(data)):
            with_local.append(data)

    # Execute / Assert
    assert len(with_local) >= 10
    for data in with_local:
        validate_resource(data)


# Where each type has an element with a required binding, and a wrong value for it.
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_ALLERGY = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
MUTATIONS: dict[str, tuple[str, Any, str]] = {
    "Patient": ("gender", PHI, "Patient.gender"),
    "Condition": (
        "clinicalStatus",
        {"coding": [{"system": _CLINICAL, "code": PHI}]},
        "Condition.clinicalStatus.coding[0].code",
    ),
    "AllergyIntolerance": (
        "clinicalStatus",
        {"coding": [{"system": _ALLERGY, "code": PHI}]},
        "AllergyIntolerance.clinicalStatus.coding[0].code",
    ),
}


@pytest.mark.parametrize("name", _example_names(SUPPORTED_TYPES))
def test_official_example_with_a_wrong_code_fails(name: str) -> None:
    # Prepare
    data = _load(name)
    type_ = data["resourceType"]
    key, value, expression = MUTATIONS.get(type_, ("status", PHI, f"{type_}.status"))
    data[key] = value

    # Execute / Assert
    _fails(lambda: validate_resource(data), 422, "code-invalid", expression)


@pytest.mark.parametrize("name", BUNDLE_EXAMPLES)
def test_official_transaction_and_batch_bundles(name: str) -> None:
    data = _load(name)
    assert validate_bundle(data, allow_types=tuple(RESOURCE_TYPES)) is data


def test_official_bundles_validate_structurally_as_resources() -> None:
    # Prepare: a searchset and a document bundle
    allow = (*SUPPORTED_TYPES, "Bundle")

    # Execute / Assert
    for name in ("Bundle-bundle-example.json", "Bundle-father.json"):
        data = _load(name)
        assert data["type"] not in ("transaction", "batch")
        assert validate_resource(data, allow_types=allow) is data


# -- parsing -------------------------------------------------------------------------------


def test_parse_json_reads_an_object() -> None:
    body = b'\xef\xbb\xbf{"resourceType": "Patient", "name": [{"family": "A"}]}'
    assert parse_json(body, limit=MAX_RESOURCE_BYTES) == {
        "resourceType": "Patient",
        "name": [{"family": "A"}],
    }


def test_truncated_json() -> None:
    body = b'{\n  "resourceType": "Patient",\n  "name": [{"family": "Zebulon-PHI"'
    err = _fails(lambda: parse_json(body, limit=MAX_RESOURCE_BYTES), 400, "structure", None)
    assert err.issues[0].diagnostics.startswith("invalid JSON at line 3 column ")


def test_invalid_utf8() -> None:
    body = b'{"resourceType": "Patient", "name": [{"family": "Zebulon-PHI\xff"}]}'
    _fails(
        lambda: parse_json(body, limit=MAX_RESOURCE_BYTES),
        400,
        "structure",
        None,
        "the body is not valid UTF-8 (byte offset 60)",
    )


def test_a_json_array_is_not_a_resource() -> None:
    body = b'[{"resourceType": "Patient", "name": [{"family": "Zebulon-PHI"}]}]'
    _fails(
        lambda: parse_json(body, limit=MAX_RESOURCE_BYTES),
        400,
        "structure",
        None,
        "the body must be a JSON object (a FHIR resource)",
    )


@pytest.mark.parametrize(
    ("body", "diagnostics"),
    [
        (b'{"gender": "male", "gender": "Zebulon-PHI"}', "duplicate key 'gender' in a JSON object"),
        (b'{"Zebulon-PHI": 1, "Zebulon-PHI": 2}', "duplicate key in a JSON object"),
        (b'{"valueDecimal": NaN}', "NaN is not a JSON number"),
        (b'{"valueDecimal": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"valueInteger": ' + b"9" * 5000 + b"}", "the JSON holds a number that cannot be read"),
    ],
)
def test_json_that_fhir_does_not_take(body: bytes, diagnostics: str) -> None:
    _fails(lambda: parse_json(body, limit=MAX_BUNDLE_BYTES), 400, "structure", None, diagnostics)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1_000_000,
        b"[" * 201 + b"]" * 201,
        b'{"a": ' * 250 + b"1" + b"}" * 250,
        b"[" * 150 + b"{" * 60 + b"]" * 150,  # unbalanced: every bracket counts
    ],
)
def test_json_nested_too_deeply(body: bytes) -> None:
    # Prepare: web3's py_ecc raises the recursion limit this high in the gateway process;
    # json.loads would then overflow the C stack (a crash) instead of raising RecursionError.
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))
    try:
        # Execute / Assert
        _fails(
            lambda: parse_json(body, limit=MAX_BUNDLE_BYTES),
            400,
            "structure",
            None,
            f"the JSON nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        )
    finally:
        sys.setrecursionlimit(limit)


def test_json_nesting_within_the_limit() -> None:
    deep = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    assert parse_json(b'{"a": ' + deep + b"}", limit=MAX_BUNDLE_BYTES) is not None
    brackets_in_strings = json.dumps({"a": ["[{" * 5000, "]}" * 5000, '\\"[']}).encode()
    assert parse_json(brackets_in_strings, limit=MAX_BUNDLE_BYTES)["a"][0] == "[{" * 5000
    truncated = b'{"a": [' + b'{"b": 1}, ' * 500
    err = _fails(lambda: parse_json(truncated, limit=MAX_BUNDLE_BYTES), 400, "structure", None)
    assert err.issues[0].diagnostics.startswith("invalid JSON at line 1 column ")


def test_oversize_body() -> None:
    body = json.dumps(_patient()).encode()
    assert parse_json(body, limit=len(body))
    _fails(
        lambda: parse_json(body, limit=len(body) - 1),
        413,
        "too-costly",
        None,
        f"the body is larger than {len(body) - 1} bytes",
    )
    assert MAX_RESOURCE_BYTES == 4 * 1024 * 1024
    assert MAX_BUNDLE_BYTES == 64 * 1024 * 1024


# -- resourceType --------------------------------------------------------------------------


def test_resource_type_must_match_the_url() -> None:
    _fails(
        lambda: validate_resource(_observation(), expected_type="Patient"),
        400,
        "invalid",
        "Patient.resourceType",
        "resourceType Observation does not match the URL type Patient",
    )


def test_unknown_resource_type() -> None:
    _fails(
        lambda: validate_resource({"resourceType": PHI}, expected_type="Patient"),
        400,
        "invalid",
        "Patient",
        "resourceType is not a FHIR R4 resource type",
    )


def test_missing_resource_type() -> None:
    _fails(lambda: validate_resource({"name": [{"family": PHI}]}), 400, "required", "Resource")


def test_unsupported_resource_type() -> None:
    practitioner = {"resourceType": "Practitioner", "name": [{"family": PHI}]}
    _fails(
        lambda: validate_resource(practitioner),
        400,
        "not-supported",
        "Practitioner",
        "resource type Practitioner is not supported here",
    )
    assert validate_resource(practitioner, allow_types=("Practitioner",)) is practitioner


def test_not_an_object() -> None:
    _fails(lambda: validate_resource([_patient()]), 400, "structure", None)  # type: ignore[arg-type]


# -- structure (400) -----------------------------------------------------------------------


def test_valid_resource_is_returned_unchanged() -> None:
    data = _patient(
        gender="female", _birthDate={"extension": [{"url": "http://x", "valueString": "y"}]}
    )
    before = copy.deepcopy(data)
    assert validate_resource(data, expected_type="Patient") is data
    assert data == before


@pytest.mark.parametrize(
    ("data", "code", "expression", "diagnostics"),
    [
        (_patient(id="bad Zebulon-PHI"), "value", "Patient.id", None),
        (
            _patient(id="a" * 65),
            "value",
            "Patient.id",
            "not a valid id (1 to 64 of A-Z a-z 0-9 - .)",
        ),
        (
            _patient(active="true"),
            "structure",
            "Patient.active",
            "must be a JSON boolean (true or false)",
        ),
        (_patient(multipleBirthInteger="2"), "structure", "Patient.multipleBirthInteger", None),
        (_patient(gender=None), "structure", "Patient.gender", "null is not allowed here"),
        (_patient(gender=1), "structure", "Patient.gender", "must be a JSON string"),
        (_patient(birthDate=PHI), "value", "Patient.birthDate", "not a valid date"),
        (_patient(name=[]), "structure", "Patient.name", "an element cannot be an empty array"),
        (_patient(name=[{"family": ""}]), "value", "Patient.name[0].family", None),
        (_patient(name=PHI), "structure", "Patient.name", "must be a JSON array"),
        (_patient(link=[{"type": "seealso"}]), "required", "Patient.link[0].other", None),
        (
            _patient(deceasedBoolean=True, deceasedDateTime="2020"),
            "structure",
            "Patient.deceased",
            "only one deceased[x] element is allowed",
        ),
        (
            _patient(unknownThing=1),
            "structure",
            "Patient.unknownThing",
            "unknown element for this FHIR type",
        ),
        (_patient(**{PHI: 1}), "structure", "Patient.?", "unknown element for this FHIR type"),
        (_patient(contained=[{"resourceType": PHI}]), "invalid", "Patient.contained[0]", None),
        (_patient(contained=[{"id": "x"}]), "invalid", "Patient.contained[0]", None),
        (
            _patient(text={"status": "generated", "div": f"<p>{PHI}</p>"}),
            "value",
            "Patient.text.div",
            None,
        ),
        (
            _observation(code={}),
            "structure",
            "Observation.code",
            "an element cannot be an empty object",
        ),
        (_observation(code=None), "structure", "Observation.code", "null is not allowed here"),
        (
            {k: v for k, v in _observation().items() if k != "code"},
            "required",
            "Observation.code",
            "a required element is missing",
        ),
        (
            _observation(valueQuantity={"value": "1.0"}),
            "structure",
            "Observation.valueQuantity.value",
            None,
        ),
        (
            _observation(valueQuantity={"value": PHI}),
            "value",
            "Observation.valueQuantity.value",
            None,
        ),
        (_observation(subject=f"Patient/{PHI}"), "structure", "Observation.subject", None),
        (
            _observation(effectiveDateTime="2020-01-01T10:00:00"),
            "value",
            "Observation.effectiveDateTime",
            "not a valid dateTime",
        ),
    ],
)
def test_structure_errors(
    data: dict[str, Any], code: str, expression: str, diagnostics: str | None
) -> None:
    _fails(lambda: validate_resource(data), 400, code, expression, diagnostics)


def test_nesting_too_deep() -> None:
    ext: dict[str, Any] = {"url": "http://x", "valueString": PHI}
    for _ in range(300):
        ext = {"url": "http://x", "extension": [ext]}
    err = _fails(
        lambda: validate_resource(_patient(extension=[ext])),
        400,
        "structure",
        "Patient",
        f"elements are nested deeper than {MAX_DEPTH} levels",
    )
    assert len(err.issues) == 1


def test_primitive_extensions_and_nulls_are_valid() -> None:
    name = {"given": ["A", None], "_given": [None, {"extension": [{"url": "u", "valueCode": "x"}]}]}
    ext = {"url": "http://x", "valueString": "y", "_valueString": {"id": "v"}}
    data = _patient(name=[name], extension=[ext])
    assert validate_resource(data) is data


def test_r4_elements_the_r4b_models_lack_are_valid() -> None:
    data = _patient(extension=[{"url": "http://x", "valueMeta": {"versionId": "1"}}])
    assert validate_resource(data) is data


@pytest.mark.parametrize(
    ("data", "expression"),
    [
        (
            _patient(
                extension=[{"url": "http://x", "valueRatioRange": {"denominator": {"value": 1}}}]
            ),
            "Patient.extension[0].valueRatioRange",
        ),
        (_patient(fhir_comments=PHI), "Patient.fhir_comments"),
        (_patient(_name={"id": "x"}), "Patient._name"),
    ],
)
def test_r4b_only_elements_and_model_extras_are_not_r4(
    data: dict[str, Any], expression: str
) -> None:
    _fails(
        lambda: validate_resource(data),
        400,
        "structure",
        expression,
        "unknown element for this FHIR type",
    )


def test_structure_and_rule_issues_together_are_400() -> None:
    err = _fails(
        lambda: validate_resource(_patient(active=1, gender=PHI)),
        400,
        "structure",
        "Patient.active",
    )
    assert ("code-invalid", ["Patient.gender"]) in [(i.code, i.expression) for i in err.issues]


def test_issues_are_capped() -> None:
    data = _patient(name=[{"family": "A", "use": PHI}] * (MAX_ISSUES + 50))
    err = _fails(lambda: validate_resource(data), 422, "code-invalid", "Patient.name[0].use")
    assert len(err.issues) == MAX_ISSUES + 1
    assert err.issues[-1].code == "too-costly"
    assert err.issues[-1].diagnostics == "50 more issues are not listed"


# -- required bindings (422) ---------------------------------------------------------------


def test_wrong_gender() -> None:
    err = _fails(
        lambda: validate_resource(_patient(gender=PHI)),
        422,
        "code-invalid",
        "Patient.gender",
        "value is not in the required value set administrative-gender",
    )
    assert (
        err.message
        == "Patient.gender: value is not in the required value set administrative-gender"
    )


def test_wrong_observation_status() -> None:
    _fails(
        lambda: validate_resource(_observation(status=PHI)),
        422,
        "code-invalid",
        "Observation.status",
        "value is not in the required value set observation-status",
    )


def test_every_gender_and_observation_status_is_accepted() -> None:
    for gender in ("male", "female", "other", "unknown"):
        validate_resource(_patient(gender=gender))
    statuses = VALUE_SETS["observation-status"]["http://hl7.org/fhir/observation-status"]
    assert statuses == {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown",
    }  # fmt: skip
    for status in statuses:
        validate_resource(_observation(status=status))


def _consent(provision: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"text": "privacy"},
        "category": [{"text": "consent"}],
        "patient": {"reference": "Patient/p1"},
        "policyRule": {"text": "opt-in"},
        "provision": provision,
    }


_RULE = "http://example.org/rules"


@pytest.mark.parametrize(
    ("data", "expression"),
    [
        (_patient(contact=[{"gender": PHI}]), "Patient.contact[0].gender"),
        (
            _patient(link=[{"other": {"reference": "Patient/p2"}, "type": PHI}]),
            "Patient.link[0].type",
        ),
        (_patient(name=[{"family": "A", "use": PHI}]), "Patient.name[0].use"),
        (_patient(telecom=[{"system": PHI, "value": "1"}]), "Patient.telecom[0].system"),
        (_patient(address=[{"city": "A", "use": PHI}]), "Patient.address[0].use"),
        (_patient(address=[{"city": "A", "type": PHI}]), "Patient.address[0].type"),
        (_patient(identifier=[{"value": "1", "use": PHI}]), "Patient.identifier[0].use"),
        (_patient(text={"status": PHI, "div": "<div>A</div>"}), "Patient.text.status"),
        (
            _observation(valueQuantity={"value": 1, "comparator": PHI}),
            "Observation.valueQuantity.comparator",
        ),
        (
            _observation(
                component=[
                    {"code": {"text": "c"}, "valueQuantity": {"value": 1, "comparator": "=="}}
                ]
            ),
            "Observation.component[0].valueQuantity.comparator",
        ),
        (_consent({"type": PHI}), "Consent.provision.type"),
        (
            _consent({"type": "deny", "provision": [{"type": PHI}]}),
            "Consent.provision.provision[0].type",
        ),
        (
            _consent({"provision": [{"provision": [{"type": "permit"}, {"type": PHI}]}]}),
            "Consent.provision.provision[0].provision[1].type",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": PHI,
                "medicationCodeableConcept": {"text": "m"},
                "subject": {"reference": "Patient/p1"},
            },
            "MedicationRequest.intent",
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "m"},
                "subject": {"reference": "Patient/p1"},
                "dosageInstruction": [{"timing": {"repeat": {"period": 1, "periodUnit": PHI}}}],
            },
            "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit",
        ),
        (
            {
                "resourceType": "AllergyIntolerance",
                "patient": {"reference": "Patient/p1"},
                "category": ["food", PHI],
                "reaction": [{"manifestation": [{"text": "rash"}], "severity": "mild"}],
            },
            "AllergyIntolerance.category[1]",
        ),
        (
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"code": "AMB"},
                "statusHistory": [{"status": PHI, "period": {"start": "2020"}}],
            },
            "Encounter.statusHistory[0].status",
        ),
        (
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/p1"},
                "verificationStatus": {
                    "coding": [
                        {"system": "http://example.org/local", "code": "anything"},
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                            "code": PHI,
                        },
                    ]
                },
            },
            "Condition.verificationStatus.coding[1].code",
        ),
        (
            _patient(
                contained=[
                    {"resourceType": "Observation", "id": "o", "status": PHI, "code": {"text": "c"}}
                ],
                extension=[{"url": "http://x", "valueReference": {"reference": "#o"}}],
            ),
            "Patient.contained[0].status",
        ),
    ],
)
def test_required_bindings_anywhere(data: dict[str, Any], expression: str) -> None:
    _fails(lambda: validate_resource(data), 422, "code-invalid", expression)


def test_codings_of_other_systems_are_not_checked() -> None:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://example.org/local", "code": "whatever"}]},
    }
    assert validate_resource(condition) is condition


def test_bundle_type_binding() -> None:
    bundle = {"resourceType": "Bundle", "type": PHI}
    _fails(
        lambda: validate_resource(bundle, allow_types=("Bundle",)),
        422,
        "code-invalid",
        "Bundle.type",
        "value is not in the required value set bundle-type",
    )


# -- references and contained resources (422) ----------------------------------------------


def test_reference_to_a_missing_contained_resource() -> None:
    _fails(
        lambda: validate_resource(_observation(subject={"reference": "#Zebulon-PHI"})),
        422,
        "invalid",
        "Observation.subject.reference",
        "reference to a contained resource that is not there",
    )


def test_contained_reference_resolves() -> None:
    data = _observation(
        contained=[{"resourceType": "Patient", "id": "p", "name": [{"family": PHI}]}],
        subject={"reference": "#p"},
    )
    assert validate_resource(data) is data


def test_duplicate_contained_ids() -> None:
    data = _observation(
        contained=[
            {"resourceType": "Patient", "id": "p", "name": [{"family": PHI}]},
            {"resourceType": "Patient", "id": "p", "name": [{"family": PHI}]},
        ],
        subject={"reference": "#p"},
    )
    _fails(
        lambda: validate_resource(data),
        422,
        "invalid",
        "Observation.contained[1]",
        "contained resources have the same id as Observation.contained[0]",
    )


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/",
        "Patient/ Zebulon-PHI",
        "Patient/Zebulon PHI",
        "Zebulon/PHI",
        "patient/p1",
        "Patient",
        "Patient/p1/_history/",
        "urn:uuid:Zebulon-PHI",
        "urn:oid:1.2.Zebulon",
        "http://example.org/Patient/Zebulon PHI",
    ],
)
def test_malformed_references(ref: str) -> None:
    _fails(
        lambda: validate_resource(_observation(subject={"reference": ref})),
        422,
        "invalid",
        "Observation.subject.reference",
    )


def test_empty_reference_is_a_structure_error() -> None:
    _fails(
        lambda: validate_resource(_observation(subject={"reference": ""})),
        400,
        "value",
        "Observation.subject.reference",
    )


def test_conditional_reference() -> None:
    data = _observation(subject={"reference": "Patient?identifier=Zebulon-PHI"})
    _fails(
        lambda: validate_resource(data),
        422,
        "not-supported",
        "Observation.subject.reference",
        "conditional references are not supported",
    )


@pytest.mark.parametrize(
    "ref",
    ["Organization/o1", "http://example.org/fhir/Organization/o1/_history/2", "#o"],
)
def test_reference_to_a_type_not_allowed(ref: str) -> None:
    contained = [{"resourceType": "Organization", "id": "o", "name": PHI}]
    data = _observation(subject={"reference": ref}, contained=contained)
    if ref != "#o":
        data["performer"] = [{"reference": "#o"}]
    _fails(
        lambda: validate_resource(data),
        422,
        "invalid",
        "Observation.subject.reference",
        "a reference to a Organization is not allowed here (only Device, Group, Location, Patient)",
    )


@pytest.mark.parametrize(
    "ref",
    [
        "Patient/p1",
        "Patient/p-1.x/_history/3",
        "http://example.org/fhir/Patient/p1",
        "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "urn:oid:1.2.36.146.595.217.0.1",
    ],
)
def test_good_references(ref: str) -> None:
    data = _observation(subject={"reference": ref})
    assert validate_resource(data) is data


def test_hash_reference_outside_a_contained_resource() -> None:
    _fails(
        lambda: validate_resource(_observation(subject={"reference": "#"})),
        422,
        "invalid",
        "Observation.subject.reference",
    )


def test_contained_resource_may_refer_to_its_container() -> None:
    contained = [
        {"resourceType": "Provenance", "id": "prov", "target": [{"reference": "#"}],
         "recorded": "2020-01-01T00:00:00Z", "agent": [{"who": {"display": "x"}}]},
    ]  # fmt: skip
    data = _observation(contained=contained)
    assert validate_resource(data) is data


@pytest.mark.parametrize(
    ("contained", "expression", "diagnostics"),
    [
        (
            {
                "resourceType": "Organization",
                "id": "o",
                "contained": [{"resourceType": "Organization", "id": "x"}],
            },
            "Patient.contained[0]",
            "a contained resource cannot contain resources (dom-2)",
        ),
        (
            {"resourceType": "Organization", "id": "o", "meta": {"versionId": "2"}},
            "Patient.contained[0].meta",
            "a contained resource has no meta.versionId or meta.lastUpdated (dom-4)",
        ),
        (
            {"resourceType": "Organization", "id": "o", "meta": {"security": [{"code": "R"}]}},
            "Patient.contained[0].meta.security",
            "a contained resource has no security labels (dom-5)",
        ),
    ],
)
def test_contained_invariants(contained: dict[str, Any], expression: str, diagnostics: str) -> None:
    data = _patient(contained=[contained], managingOrganization={"reference": "#o"})
    _fails(lambda: validate_resource(data), 422, "invariant", expression, diagnostics)


def test_unreferenced_contained_resource() -> None:
    data = _patient(contained=[{"resourceType": "Organization", "id": "o", "name": PHI}])
    _fails(
        lambda: validate_resource(data),
        422,
        "invariant",
        "Patient.contained[0]",
        "a contained resource must be referenced from its container, or refer to it (dom-3)",
    )


def test_extension_with_value_and_extensions() -> None:
    ext = {"url": "http://x", "valueString": PHI, "extension": [{"url": "y", "valueString": PHI}]}
    _fails(
        lambda: validate_resource(_patient(extension=[ext])),
        422,
        "invariant",
        "Patient.extension[0]",
        "an extension has a value[x] or nested extensions, not both (ext-1)",
    )


@pytest.mark.parametrize(
    "div",
    [
        '<div xmlns="http://www.w3.org/1999/xhtml"><script>Zebulon-PHI()</script></div>',
        '<div><img src="x" onerror="Zebulon-PHI()"/></div>',
        '<div><a href="javascript:Zebulon-PHI()">x</a></div>',
        "<div><iframe src='x'></iframe></div>",
    ],
)
def test_narrative_with_active_content(div: str) -> None:
    data = _patient(text={"status": "generated", "div": div})
    _fails(lambda: validate_resource(data), 422, "invariant", "Patient.text.div")


@pytest.mark.parametrize(
    "div",
    [
        "<div>" + "<" * 200_000 + "</div>",
        "<div><" + " " * 400_000 + "</div>",
        "<div><a" + " onx" * 100_000 + "</div>",
        "<div><a" + " javascript" * 50_000 + "</div>",
    ],
)
def test_narrative_checks_take_linear_time(div: str) -> None:
    data = _patient(text={"status": "generated", "div": div})
    started = time.perf_counter()
    validate_resource(data)
    assert time.perf_counter() - started < 2.0


# -- references() and parse_reference() ----------------------------------------------------


def test_references_lists_every_reference_with_its_path() -> None:
    # Prepare
    data = _observation(
        contained=[
            {
                "resourceType": "Organization",
                "id": "o",
                "partOf": {"reference": "Organization/top"},
            },
        ],
        performer=[
            {"reference": "#o"},
            {"display": "no reference"},
            {"reference": "Practitioner/d"},
        ],
        extension=[{"url": "http://x", "valueReference": {"reference": "Encounter/e"}}],
    )

    # Execute
    found = references(data)

    # Assert
    assert found == [
        ("Observation.subject.reference", "Patient/p1"),
        ("Observation.contained[0].partOf.reference", "Organization/top"),
        ("Observation.performer[0].reference", "#o"),
        ("Observation.performer[2].reference", "Practitioner/d"),
        ("Observation.extension[0].valueReference.reference", "Encounter/e"),
    ]


def test_references_of_a_bundle() -> None:
    bundle = _transaction(_observation(subject={"reference": "urn:uuid:" + _UUIDS[0]}))
    assert references(bundle) == [
        ("Bundle.entry[0].resource.subject.reference", "urn:uuid:" + _UUIDS[0])
    ]


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("Patient/p1", ("Patient", "p1", None)),
        ("Observation/o.1-2/_history/7", ("Observation", "o.1-2", "7")),
        ("Practitioner/x", ("Practitioner", "x", None)),
        ("Zebulon/x", None),
        ("Patient/", None),
        ("Patient/a b", None),
        ("Patient/" + "a" * 65, None),
        ("#p", None),
        ("http://example.org/fhir/Patient/p1", None),
        ("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", None),
        ("urn:oid:1.2.3", None),
    ],
)
def test_parse_reference(ref: str, parsed: tuple[str, str, str | None] | None) -> None:
    assert parse_reference(ref) == parsed


# -- bundles -------------------------------------------------------------------------------

_UUIDS = [
    "0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
    "1d3151bd-1cbf-4d64-b04d-cd9187a4c6e1",
    "2e3151bd-1cbf-4d64-b04d-cd9187a4c6e2",
]


def _transaction(*resources: dict[str, Any], type_: str = "transaction") -> dict[str, Any]:
    entries = []
    for n, resource in enumerate(resources):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{_UUIDS[n]}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": type_, "entry": entries}


def test_transaction_with_internal_references() -> None:
    # Prepare
    patient = _patient()
    del patient["id"]
    obs = _observation(subject={"reference": f"urn:uuid:{_UUIDS[0]}"})
    bundle = _transaction(patient, obs)
    before = copy.deepcopy(bundle)

    # Execute / Assert
    assert validate_bundle(bundle) is bundle
    assert bundle == before
    assert validate_bundle(_transaction(patient, type_="batch"))


def test_bundle_reference_to_no_entry() -> None:
    bundle = _transaction(_patient(), _observation(subject={"reference": f"urn:uuid:{_UUIDS[2]}"}))
    _fails(
        lambda: validate_bundle(bundle),
        422,
        "not-found",
        "Bundle.entry[1].resource.subject.reference",
        "the reference names no entry's fullUrl in this bundle",
    )


def test_bundle_entry_issues_are_under_the_entry() -> None:
    bundle = _transaction(_patient(), _observation(status=PHI))
    _fails(lambda: validate_bundle(bundle), 422, "code-invalid", "Bundle.entry[1].resource.status")
    bundle = _transaction(_patient(), _observation())
    del bundle["entry"][1]["resource"]["code"]
    _fails(lambda: validate_bundle(bundle), 400, "required", "Bundle.entry[1].resource.code")


def test_bundle_entry_of_an_unsupported_type() -> None:
    bundle = _transaction({"resourceType": "Practitioner", "name": [{"family": PHI}]})
    _fails(lambda: validate_bundle(bundle), 400, "not-supported", "Bundle.entry[0].resource")


@pytest.mark.parametrize("type_", ["collection", "searchset", "document", PHI])
def test_only_transactions_and_batches(type_: str) -> None:
    _fails(
        lambda: validate_bundle(_transaction(_patient(), type_=type_)),
        400,
        "not-supported",
        "Bundle.type",
    )


def test_bundle_entry_needs_a_request() -> None:
    bundle = _transaction(_patient())
    del bundle["entry"][0]["request"]
    _fails(
        lambda: validate_bundle(bundle),
        400,
        "required",
        "Bundle.entry[0].request",
        "a transaction or batch entry needs a request (bdl-3)",
    )


def test_post_and_put_need_a_resource() -> None:
    bundle = _transaction(_patient())
    del bundle["entry"][0]["resource"]
    _fails(lambda: validate_bundle(bundle), 400, "required", "Bundle.entry[0].resource")
    bundle["entry"][0]["request"] = {"method": "DELETE", "url": "Patient/p1"}
    assert validate_bundle(bundle) is bundle


def test_bundle_request_method_binding() -> None:
    bundle = _transaction(_patient())
    bundle["entry"][0]["request"]["method"] = PHI
    _fails(lambda: validate_bundle(bundle), 422, "code-invalid", "Bundle.entry[0].request.method")


def test_duplicate_full_url() -> None:
    bundle = _transaction(_patient(), _patient(id="p2"))
    bundle["entry"][1]["fullUrl"] = bundle["entry"][0]["fullUrl"]
    _fails(
        lambda: validate_bundle(bundle),
        422,
        "invariant",
        "Bundle.entry[1].fullUrl",
        "fullUrl is the same as that of Bundle.entry[0] (bdl-7)",
    )


def test_versioned_full_url() -> None:
    bundle = _transaction(_patient())
    bundle["entry"][0]["fullUrl"] = "http://example.org/fhir/Patient/p1/_history/1"
    _fails(lambda: validate_bundle(bundle), 422, "invariant", "Bundle.entry[0].fullUrl")


def test_request_url_must_name_the_resource() -> None:
    bundle = _transaction(_patient())
    bundle["entry"][0]["request"]["url"] = "Observation"
    _fails(lambda: validate_bundle(bundle), 422, "invalid", "Bundle.entry[0].request.url")
    bundle["entry"][0]["request"] = {"method": "PUT", "url": "Patient/p2"}
    _fails(lambda: validate_bundle(bundle), 422, "invalid", "Bundle.entry[0].resource.id")
    bundle["entry"][0]["request"] = {"method": "PUT", "url": "Patient/p1"}
    assert validate_bundle(bundle) is bundle


def test_validate_many_in_a_worker_gives_each_result_or_error_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medmesh import workers
    from medmesh.interop.fhir.validation import validate_many

    monkeypatch.setenv("MEDMESH_WORKERS", "1")
    good = {"resourceType": "Patient", "gender": "female"}
    bad = {"resourceType": "Patient", "gender": "f"}  # not in the required value set
    broken = {"resourceType": "Observation"}  # status and code missing
    batch = [good, bad, broken] * (workers.MIN_BATCH // 3 + 1)
    inline = []
    for resource in batch[:3]:
        try:
            inline.append(validate_resource(resource))
        except FhirError as exc:
            inline.append(exc)
    got = validate_many(batch)
    assert len(got) == len(batch)
    for i, result in enumerate(got):
        expected = inline[i % 3]
        if isinstance(expected, FhirError):
            assert isinstance(result, FhirError)
            assert (result.status, result.issues, result.message) == (
                expected.status, expected.issues, expected.message
            )  # fmt: skip
        else:
            assert result == expected
