"""FHIR errors, and their wire form: the OperationOutcome resource.

    MedmeshError (medmesh.errors)
    └── FhirError          an HTTP status and a list of :class:`Issue` (code "fhir")

Every FHIR endpoint turns a :class:`FhirError` into its status and ``to_outcome()`` body.
Issues carry fixed texts, element paths (FHIRPath) and codes only: never a value taken from
a resource, which may be protected health information (PHI). A validator says
``Patient.gender: value is not in the required value set administrative-gender``, not which
value it got. Callers that build issues or messages themselves keep to the same rule.

    >>> err = FhirError.invalid([Issue("error", "required", "element is required", ["Patient.link.other"])])
    >>> err.status, err.to_outcome()["issue"][0]["code"]
    (400, 'required')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from medmesh.errors import MedmeshError

__all__ = ["ISSUE_TYPES", "FhirError", "Issue", "Severity", "operation_outcome"]

Severity = Literal["fatal", "error", "warning", "information"]
_SEVERITIES: Final = frozenset({"fatal", "error", "warning", "information"})

ISSUE_TYPES: Final[frozenset[str]] = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)
"""The FHIR R4 IssueType codes (http://hl7.org/fhir/issue-type), the only accepted ``code``."""

_MESSAGE_ISSUES: Final = 3  # issues spelled out in FhirError.message


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue.

    ``code`` is a FHIR IssueType code (see :data:`ISSUE_TYPES`), ``diagnostics`` a fixed,
    PHI-free text and ``expression`` the FHIRPath(s) of the element concerned, such as
    ``Observation.code.coding[0].system``.

        >>> Issue("error", "value", "not a valid date", ["Patient.birthDate"]).to_json()["code"]
        'value'
    """

    severity: Severity
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in _SEVERITIES:
            raise ValueError(f"unknown issue severity {self.severity!r}")
        if self.code not in ISSUE_TYPES:
            raise ValueError(f"unknown FHIR issue type {self.code!r}")

    def to_json(self) -> dict[str, Any]:
        """The issue as an ``OperationOutcome.issue`` JSON object."""
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out

    def describe(self) -> str:
        """``expression: diagnostics``, for logs and exception messages."""
        return f"{self.expression[0]}: {self.diagnostics}" if self.expression else self.diagnostics


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource (JSON) listing ``issues``.

    An OperationOutcome needs at least one issue: without any, it says so in one
    ``information`` issue.
    """
    listed = [issue.to_json() for issue in issues]
    if not listed:
        listed = [{"severity": "information", "code": "informational", "diagnostics": "no issues"}]
    return {"resourceType": "OperationOutcome", "issue": listed}


class FhirError(MedmeshError):
    """A FHIR request failed: ``status`` is its HTTP status, ``issues`` say why.

    ``message`` is built from the issues (paths and fixed texts), so it is as PHI-free as
    they are. Use the constructors: :meth:`invalid` (400, or 422 for business rules),
    :meth:`not_found` (404), :meth:`forbidden` (403), :meth:`conflict` (409),
    :meth:`precondition_failed` (412), :meth:`too_large` (413) and :meth:`not_supported`.

        >>> FhirError.not_found("Patient/p1 is not known").status
        404
    """

    code = "fhir"

    def __init__(self, status: int, issues: Sequence[Issue], message: str | None = None) -> None:
        self.status = status
        self.issues: list[Issue] = list(issues)
        if message is None:
            shown = [issue.describe() for issue in self.issues[:_MESSAGE_ISSUES]]
            more = len(self.issues) - len(shown)
            message = "; ".join(shown) or f"FHIR request failed with status {status}"
            if more > 0:
                message += f" (and {more} more issues)"
        super().__init__(message)

    def to_outcome(self) -> dict[str, Any]:
        """The OperationOutcome resource to send with :attr:`status`."""
        return operation_outcome(self.issues)

    @classmethod
    def _one(cls, status: int, code: str, message: str, expression: Sequence[str]) -> FhirError:
        return cls(status, [Issue("error", code, message, list(expression))], message)

    @classmethod
    def invalid(cls, issues: Sequence[Issue], status: int = 400) -> FhirError:
        """Content that is not valid: 400 for structure, 422 for business rules."""
        return cls(status, issues)

    @classmethod
    def not_found(cls, message: str, expression: Sequence[str] = ()) -> FhirError:
        """404 ``not-found``: an unknown resource, version or type."""
        return cls._one(404, "not-found", message, expression)

    @classmethod
    def forbidden(cls, message: str, expression: Sequence[str] = ()) -> FhirError:
        """403 ``forbidden``: the caller may not do this (no consent, no scope)."""
        return cls._one(403, "forbidden", message, expression)

    @classmethod
    def conflict(cls, message: str, expression: Sequence[str] = ()) -> FhirError:
        """409 ``conflict``: the request conflicts with the current state."""
        return cls._one(409, "conflict", message, expression)

    @classmethod
    def precondition_failed(cls, message: str, expression: Sequence[str] = ()) -> FhirError:
        """412 ``conflict``: an ``If-Match`` (version) precondition failed."""
        return cls._one(412, "conflict", message, expression)

    @classmethod
    def not_supported(
        cls, message: str, *, status: int = 404, expression: Sequence[str] = ()
    ) -> FhirError:
        """``not-supported``: 404 by default (an unknown or unserved resource type), 405 for
        an interaction, 400 for content this server does not take."""
        return cls._one(status, "not-supported", message, expression)

    @classmethod
    def too_large(cls, message: str, expression: Sequence[str] = ()) -> FhirError:
        """413 ``too-costly``: the body is larger than the server accepts."""
        return cls._one(413, "too-costly", message, expression)
