"""Clinical interoperability: the standards providers already speak, over medmesh.

- :mod:`medmesh.interop.fhir` — a FHIR R4 REST API whose every resource is a sealed record,
  anchored on the ledger and owned by its patient; every read is checked against on-chain
  consent;
- :mod:`medmesh.interop.dicom` — DICOM studies of any size stored as records, with their
  ImagingStudy resources, de-identification to DICOM PS3.15 Annex E, and a minimal DICOMweb;
- :mod:`medmesh.interop.smart` — SMART-style authorization for backend services.
"""
