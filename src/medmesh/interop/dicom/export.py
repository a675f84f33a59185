"""``medmesh dicom export``: a study's instances from a gateway's DICOMweb into a folder.

The study's series and instances come from QIDO-RS, each instance from WADO-RS, streamed
to a hidden ``.partial`` file in the output folder and renamed into place only when the
whole multipart answer arrived. Each instance is consent-checked at the gateway: one
refused (403) is reported and the others are still exported.

With a :class:`~medmesh.interop.dicom.deidentify.Deidentifier` (``--deidentify``) every
instance is de-identified to PS3.15 Annex E before it is written under its **new** SOP
Instance UID (the original UID and any name would leak through a file name); the retrieved
original is deleted at once, also on failure. One Deidentifier per export keeps the
replaced UIDs consistent across the study. Without it, files are named by SOP Instance UID.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeGuard

from medmesh.errors import InvalidInputError, MedmeshError
from medmesh.interop.client import GatewayClient, dicom_value
from medmesh.interop.dicom.deidentify import Deidentifier

__all__ = ["EXPORT_SCOPE", "ExportResult", "export_study", "study_instances"]

#: SMART scopes an export asks for.
EXPORT_SCOPE: Final = "system/ImagingStudy.rs"
_SERIES_UID: Final = "0020000E"
_SOP_UID: Final = "00080018"
_UID: Final = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass
class ExportResult:
    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "instances": len(self.files),
            "files": [str(f) for f in self.files],
            "bytes": self.bytes,
            "failures": [{"instance": i, "reason": r} for i, r in self.failures],
        }


def _is_uid(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _UID.fullmatch(value) is not None


def study_instances(gateway: GatewayClient, study_uid: str) -> list[tuple[str, str]]:
    """(series UID, SOP Instance UID) of every instance of a study (QIDO-RS)."""
    out = []
    for series in gateway.series(study_uid):
        series_uid = dicom_value(series, _SERIES_UID)
        if not _is_uid(series_uid):
            continue
        for instance in gateway.instances(study_uid, series_uid):
            sop = dicom_value(instance, _SOP_UID)
            if _is_uid(sop):  # (it becomes a file name)
                out.append((series_uid, sop))
    return out


def export_study(
    gateway: GatewayClient,
    study_uid: str,
    out: Path,
    *,
    deidentifier: Deidentifier | None = None,
    progress: Callable[[int], None] | None = None,
    instances: list[tuple[str, str]] | None = None,
) -> ExportResult:
    """Retrieve every instance of ``study_uid`` the gateway lets this wallet read into
    ``out`` (created if needed). ``instances``: as listed by :func:`study_instances`."""
    if not _is_uid(study_uid):
        raise InvalidInputError("a Study Instance UID is digits and dots")
    result = ExportResult()
    listed = instances if instances is not None else study_instances(gateway, study_uid)
    if not listed:
        raise InvalidInputError("the study has no instances to export")
    out.mkdir(parents=True, exist_ok=True)
    for n, (series_uid, sop) in enumerate(listed, start=1):
        label = f"instance {n} of {len(listed)}" if deidentifier is not None else sop
        tmp = out / f".{secrets.token_hex(8)}.partial"
        try:
            with tmp.open("wb") as sink:
                size = gateway.retrieve(study_uid, series_uid, sop, sink, progress=progress)
            if deidentifier is None:
                target = out / f"{sop}.dcm"
                os.replace(tmp, target)
            else:
                target = out / f"{deidentifier.uid(sop)}.dcm"
                deidentifier.file(tmp, target)
        except MedmeshError as exc:
            result.failures.append((label, exc.message))
            continue
        except OSError as exc:
            result.failures.append((label, f"cannot write the file ({type(exc).__name__})"))
            continue
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        result.files.append(target)
        result.bytes += size
    return result
