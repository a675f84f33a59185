"""The FHIR resource types medmesh stores (Bundle is validated, never stored).

Kept apart so that light modules (SMART scopes, the bindings generator) can name them
without importing the validators.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SUPPORTED_TYPES"]

SUPPORTED_TYPES: Final[tuple[str, ...]] = (
    "Patient",
    "Observation",
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "Immunization",
    "Procedure",
    "Encounter",
    "DiagnosticReport",
    "DocumentReference",
    "ImagingStudy",
    "Consent",
)
