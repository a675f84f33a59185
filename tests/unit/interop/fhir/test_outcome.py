"""FhirError and OperationOutcome (medmesh.interop.fhir.outcome)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fhir.resources.R4B import get_fhir_model_class

from medmesh.errors import MedmeshError
from medmesh.interop.fhir.outcome import ISSUE_TYPES, FhirError, Issue, operation_outcome


def _valid_outcome(resource: dict[str, object]) -> None:
    get_fhir_model_class("OperationOutcome").model_validate(resource)


def test_issue_to_json_leaves_out_an_empty_expression() -> None:
    # Prepare
    with_path = Issue(
        "error", "required", "a required element is missing", ["Patient.link[0].other"]
    )
    without = Issue("warning", "informational", "note")

    # Execute / Assert
    assert with_path.to_json() == {
        "severity": "error",
        "code": "required",
        "diagnostics": "a required element is missing",
        "expression": ["Patient.link[0].other"],
    }
    assert "expression" not in without.to_json()
    assert with_path.describe() == "Patient.link[0].other: a required element is missing"
    assert without.describe() == "note"


@pytest.mark.parametrize(
    ("severity", "code"), [("error", "bogus-code"), ("fatal-ish", "invalid"), ("error", "")]
)
def test_issue_refuses_unknown_severity_or_code(severity: str, code: str) -> None:
    with pytest.raises(ValueError):
        Issue(severity, code, "text")  # type: ignore[arg-type]


def test_issue_types_are_the_r4_issue_type_codes() -> None:
    assert len(ISSUE_TYPES) == 31
    assert {"invalid", "structure", "code-invalid", "too-costly", "business-rule"} <= ISSUE_TYPES


def test_operation_outcome_is_a_valid_resource() -> None:
    # Prepare
    issues = [
        Issue(
            "error", "code-invalid", "value is not in the required value set x", ["Patient.gender"]
        ),
        Issue("information", "too-costly", "3 more issues are not listed"),
    ]

    # Execute
    outcome = operation_outcome(issues)

    # Assert
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["code"] for i in outcome["issue"]] == ["code-invalid", "too-costly"]
    _valid_outcome(outcome)


def test_operation_outcome_without_issues_still_has_one() -> None:
    outcome = operation_outcome([])
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "no issues"}
    ]
    _valid_outcome(outcome)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: FhirError.not_found("Patient/p1 is not known"), 404, "not-found"),
        (lambda: FhirError.forbidden("no consent"), 403, "forbidden"),
        (lambda: FhirError.conflict("already there"), 409, "conflict"),
        (lambda: FhirError.precondition_failed("version 2 is not current"), 412, "conflict"),
        (lambda: FhirError.not_supported("no such type"), 404, "not-supported"),
        (
            lambda: FhirError.not_supported("DELETE is not supported", status=405),
            405,
            "not-supported",
        ),
        (lambda: FhirError.too_large("the body is larger than 4 bytes"), 413, "too-costly"),
    ],
)
def test_constructors(make: Callable[[], FhirError], status: int, code: str) -> None:
    # Execute
    err = make()

    # Assert
    assert isinstance(err, MedmeshError)
    assert err.code == "fhir"
    assert err.status == status
    assert [i.code for i in err.issues] == [code]
    assert err.issues[0].severity == "error"
    assert err.message == err.issues[0].diagnostics
    outcome = err.to_outcome()
    assert outcome["issue"][0]["code"] == code
    _valid_outcome(outcome)


def test_constructor_with_expression() -> None:
    err = FhirError.not_found("no such version", expression=["Patient.meta.versionId"])
    assert err.issues[0].expression == ["Patient.meta.versionId"]


def test_invalid_message_lists_the_first_issues() -> None:
    # Prepare
    issues = [Issue("error", "value", f"bad {n}", [f"Patient.name[{n}]"]) for n in range(5)]

    # Execute
    err = FhirError.invalid(issues, status=422)

    # Assert
    assert err.status == 422
    assert len(err.issues) == 5
    assert err.message == (
        "Patient.name[0]: bad 0; Patient.name[1]: bad 1; Patient.name[2]: bad 2 (and 2 more issues)"
    )
    assert str(err) == err.message


def test_invalid_defaults_to_400_and_has_a_message_without_issues() -> None:
    err = FhirError.invalid([])
    assert err.status == 400
    assert err.message == "FHIR request failed with status 400"
    assert err.to_outcome()["issue"][0]["code"] == "informational"
