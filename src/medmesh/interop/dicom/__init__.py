"""DICOM over medmesh: finding and checking files, de-identification, ImagingStudy resources.

- :mod:`~medmesh.interop.dicom.files` walks a file or folder and reads each instance's header
  only (pixel data is never loaded, truncation is detected), then groups instances into
  :class:`Study` and :class:`Series`;
- :mod:`~medmesh.interop.dicom.deidentify` applies the DICOM PS3.15 Annex E Basic Application
  Level Confidentiality Profile, streaming the pixel data of large files;
- :mod:`~medmesh.interop.dicom.study` turns a :class:`Study` into a FHIR R4 ImagingStudy,
  whose instances link their records by CID (:data:`RECORD_CID_EXTENSION`);
- :mod:`~medmesh.interop.dicom.importer` and :mod:`~medmesh.interop.dicom.export` are
  ``medmesh dicom import`` and ``export`` (records and a gateway's FHIR API and DICOMweb,
  through :mod:`~medmesh.interop.client`);
- :mod:`~medmesh.interop.dicom.web` is the gateway's DICOMweb service (QIDO-RS, WADO-RS,
  STOW-RS), :mod:`~medmesh.interop.dicom.qido` its translation to and from ImagingStudy
  resources, :mod:`~medmesh.interop.dicom.stow` its store (instances become records),
  :mod:`~medmesh.interop.dicom.multipart` the streamed ``multipart/related`` both use.

The names below load on first use, so importing this package does not import pydicom.
``deidentify`` is the submodule, not its function of the same name: an import of the
submodule would rebind the package attribute anyway, so the function is not re-exported; use
``dicom.deidentify.deidentify(ds)`` or :class:`Deidentifier`.

Example::

    from medmesh.interop import dicom

    for study in dicom.group_studies(dicom.scan(folder)).values():
        resource = dicom.imaging_study(study, patient_ref="Patient/p1")

    run = dicom.Deidentifier(uid_salt=secret)  # one per export: consistent UIDs
    for f in dicom.scan(folder):
        run.file(f.path, out / f"{run.uid(f.sop_instance_uid)}.dcm")

Errors are :class:`~medmesh.errors.DicomError` (an ``InvalidInputError``), with PHI-free
messages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medmesh.errors import DicomError as DicomError

if TYPE_CHECKING:
    from medmesh.interop.dicom.deidentify import Deidentifier as Deidentifier
    from medmesh.interop.dicom.deidentify import deidentify_file as deidentify_file
    from medmesh.interop.dicom.files import DicomFailure as DicomFailure
    from medmesh.interop.dicom.files import DicomFile as DicomFile
    from medmesh.interop.dicom.files import DicomSkipped as DicomSkipped
    from medmesh.interop.dicom.files import Series as Series
    from medmesh.interop.dicom.files import Study as Study
    from medmesh.interop.dicom.files import check as check
    from medmesh.interop.dicom.files import group_studies as group_studies
    from medmesh.interop.dicom.files import scan as scan
    from medmesh.interop.dicom.study import RECORD_CID_EXTENSION as RECORD_CID_EXTENSION
    from medmesh.interop.dicom.study import RECORD_KIND as RECORD_KIND
    from medmesh.interop.dicom.study import imaging_study as imaging_study
    from medmesh.interop.dicom.study import record_cids as record_cids
    from medmesh.interop.dicom.study import study_resource_id as study_resource_id

_LAZY = {
    "Deidentifier": "medmesh.interop.dicom.deidentify",
    "DicomFailure": "medmesh.interop.dicom.files",
    "DicomFile": "medmesh.interop.dicom.files",
    "DicomSkipped": "medmesh.interop.dicom.files",
    "RECORD_CID_EXTENSION": "medmesh.interop.dicom.study",
    "RECORD_KIND": "medmesh.interop.dicom.study",
    "Series": "medmesh.interop.dicom.files",
    "Study": "medmesh.interop.dicom.files",
    "check": "medmesh.interop.dicom.files",
    "deidentify_file": "medmesh.interop.dicom.deidentify",
    "group_studies": "medmesh.interop.dicom.files",
    "imaging_study": "medmesh.interop.dicom.study",
    "record_cids": "medmesh.interop.dicom.study",
    "scan": "medmesh.interop.dicom.files",
    "study_resource_id": "medmesh.interop.dicom.study",
}

__all__ = [
    "RECORD_CID_EXTENSION",
    "RECORD_KIND",
    "Deidentifier",
    "DicomError",
    "DicomFailure",
    "DicomFile",
    "DicomSkipped",
    "Series",
    "Study",
    "check",
    "deidentify_file",
    "group_studies",
    "imaging_study",
    "record_cids",
    "scan",
    "study_resource_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medmesh.interop.dicom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
