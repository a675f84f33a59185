"""De-identification to the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Which attribute gets which action comes from ``dicomanonymizer``'s tables of PS3.15 Table
E.1-1 (edition :data:`TABLE_EDITION`, 655 entries). The engine applying them is ours, because
``dicomanonymizer.anonymize_dataset`` (2.1.0) does not meet the profile on its own:

* it applies single-tag rules to the top-level data set only, so a Referenced SOP Instance
  UID or a Person Name inside a sequence is left as it was; here every rule applies at
  every depth, and sequences without a rule (K) are cleaned item by item;
* its X on a DA attribute keeps the attribute with the date ``00010101`` instead of removing it;
* its UIDs come from a module-global dictionary of random UIDs: never reproducible, shared
  by every export in the process, growing without bound. Here a UID is
  ``2.25.<HMAC-SHA256(key, uid) as a 128-bit UUIDv8>``: the same input UID gives the same
  output UID within one :class:`Deidentifier` (one export run), and across runs when the
  key (``uid_salt``) is the same. A new random key is drawn otherwise;
* X/Z/U* blanks the UIDs inside Referenced/Source Image Sequence; here they are replaced
  (U), so references between de-identified instances still resolve;
* unsupported VRs (OW, OF, AT, SV...) raise ``NotImplementedError``.

Compound actions are resolved without knowledge of the IOD, so always to the option that keeps
any IOD valid: Z/D, X/D and X/Z/D give a dummy (D), X/Z gives an empty value (Z), X/Z/U*
keeps the sequence with its UIDs replaced. D fills every leaf of a sequence with a dummy. Z
gives a zero-length value (an empty sequence for SQ). Where two editions of Table E.1-1
disagree, the action both accept is used (:data:`EDITION_OVERRIDES`).

Beyond the table, as Annex E requires: every private element is removed (no Retain Safe
Private option), Patient Identity Removed (0012,0062) is set to ``YES``, De-identification
Method (0012,0063) names the profile and De-identification Method Code Sequence (0012,0064)
gets (113100, DCM, "Basic Application Confidentiality Profile"). And as a precaution: group
lengths are dropped, the 128-byte preamble (which may hold another format's header, such as
TIFF) is zeroed, and the file meta AE titles and private information are removed.

Pixel data is not cleaned (that is the Clean Pixel Data option): an instance marked Burned In
Annotation or Recognizable Visual Features ``YES`` is refused unless
``allow_identifiable_pixels=True``.

>>> run = Deidentifier(uid_salt=secret)                              # doctest: +SKIP
>>> for f in scan(folder):                                             # doctest: +SKIP
...     run.file(f.path, out / f"{run.uid(f.sop_instance_uid)}.dcm")
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import pydicom
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from medmesh.errors import DicomError, InvalidInputError
from medmesh.interop.dicom.files import (
    _DEFLATED,
    _Malformed,
    _quiet_pydicom,
    _Truncated,
    _walk_elements,
    check,
)

__all__ = [
    "BASIC_PROFILE_CODE",
    "DEIDENTIFICATION_METHOD",
    "EDITION_OVERRIDES",
    "TABLE_EDITION",
    "Action",
    "Deidentifier",
    "deidentify",
    "deidentify_file",
    "profile_actions",
]

#: The ``dicomanonymizer`` table of PS3.15 Table E.1-1 in use.
TABLE_EDITION: Final = "dicomfields_2026c"

#: CID 7050 code for this profile: (code value, coding scheme designator, code meaning).
BASIC_PROFILE_CODE: Final = ("113100", "DCM", "Basic Application Confidentiality Profile")

#: The De-identification Method (0012,0063) value written (LO: at most 64 characters).
DEIDENTIFICATION_METHOD: Final = "PS3.15 Annex E Basic Profile (medmesh, tables 2026c)"

#: How this engine applies a rule: remove, zero-length, dummy, new UID, or a sequence whose
#: contained instance UIDs are replaced (X/Z/U*).
Action = Literal["X", "Z", "D", "U", "U*"]

# The package's categories, in the order its initialize_actions applies them (later wins).
_CATEGORY_ACTIONS: Final[tuple[tuple[str, Action], ...]] = (
    ("D_TAGS", "D"),
    ("Z_TAGS", "Z"),
    ("X_TAGS", "X"),
    ("U_TAGS", "U"),
    ("Z_D_TAGS", "D"),
    ("X_Z_TAGS", "Z"),
    ("X_D_TAGS", "D"),
    ("X_Z_D_TAGS", "D"),
    ("X_Z_U_STAR_TAGS", "U*"),
)

#: Where editions of Table E.1-1 disagree, the action that satisfies both.
EDITION_OVERRIDES: Final[Mapping[int, Action]] = {
    # Treatment Machine Name: X/Z in 2026c, X in earlier editions: remove.
    0x300A00B2: "X",
    # Structure Set Time: Z in 2026c, X/D in earlier editions: a dummy is both Z and D.
    0x30060009: "D",
}

_PIXEL_RISK: Final = ("BurnedInAnnotation", "RecognizableVisualFeatures")
# File meta elements outside Table E.1-1 that name stations or carry private data: the
# Source/Sending/Receiving Application Entity Titles (like Station AE Title, X) and Private
# Information (Creator UID). All Type 3.
_META_REMOVED: Final = frozenset({0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102})
_DICOM_ROOT: Final = "1.2.840.10008."  # standard UIDs (SOP classes, syntaxes): not identifying

# D values by VR: dicomanonymizer's dummies where it has one, zeros for the VRs it lacks.
_DUMMIES: Final[Mapping[str, object]] = {
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"), "ANONYMIZED"),
    "AS": "000Y",
    "UR": "http://anonymized.invalid",
    "DS": "0",
    "IS": "0",
    "DA": "00010101",
    "DT": "00010101010101.000000+0000",
    "TM": "000000.00",
    **dict.fromkeys(("SS", "US", "SL", "UL", "SV", "UV", "AT"), 0),
    **dict.fromkeys(("FL", "FD"), 0.0),
    **dict.fromkeys(("OB", "UN"), b"Anonymized"),
    "OW": b"\x00" * 2,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OD": b"\x00" * 8,
    "OV": b"\x00" * 8,
}


def profile_actions() -> tuple[dict[int, Action], list[tuple[int, int, int, int, Action]]]:
    """The rules in force: ``({tag: action}, [(group, element, gmask, emask, action)])``.

    The second list holds the repeating groups (curves 50xx, overlays 60xx).
    """
    tables = dicom_anonymization_database_selector(TABLE_EDITION)
    single: dict[int, Action] = {}
    masked: list[tuple[int, int, int, int, Action]] = []
    for category, action in _CATEGORY_ACTIONS:
        for tag in tables[category]:
            if len(tag) == 2:
                single[tag[0] << 16 | tag[1]] = action
            else:
                masked.append((tag[0], tag[1], tag[2], tag[3], action))
    single.update(EDITION_OVERRIDES)
    return single, masked


_RULES, _MASKED_RULES = profile_actions()


def _action_for(tag: BaseTag) -> Action | None:
    action = _RULES.get(int(tag))
    if action is not None:
        return action
    for group, element, gmask, emask, masked_action in _MASKED_RULES:
        if tag.group & gmask == group & gmask and tag.element & emask == element & emask:
            return masked_action
    return None


def _uid_hash(key: bytes, uid: str) -> str:
    """``2.25.`` + a UUIDv8 (RFC 9562) from HMAC-SHA256: a valid UID of at most 44 characters."""
    digest = hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
    n = int.from_bytes(digest[:16], "big")
    n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8
    n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return f"2.25.{n}"


class Deidentifier:
    """One export run: every dataset it touches gets the same replacement for the same UID.

    ``uid_salt`` (at least 16 secret bytes) makes the UIDs reproducible across runs; keep it
    as secret as the mapping it stands for. Without it a random key is drawn, so UIDs are
    consistent within this object only: use one Deidentifier per export.
    """

    def __init__(
        self, *, uid_salt: bytes | None = None, allow_identifiable_pixels: bool = False
    ) -> None:
        if uid_salt is not None and len(uid_salt) < 16:
            raise InvalidInputError("uid_salt must be at least 16 bytes")
        self._key = uid_salt if uid_salt is not None else secrets.token_bytes(32)
        self._allow_identifiable_pixels = allow_identifiable_pixels

    def uid(self, uid: str) -> str:
        """The replacement for ``uid`` in this run."""
        return _uid_hash(self._key, uid.strip().rstrip("\x00"))

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified deep copy of ``ds``; ``ds`` itself is left untouched."""
        self._check_pixels(ds)
        result = copy.deepcopy(ds)
        self.apply(result)
        return result

    def apply(self, ds: Dataset) -> None:
        """De-identify ``ds`` (and its ``file_meta``) in place."""
        self._check_pixels(ds)
        with _quiet_pydicom():
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                self._clean(meta, meta=True)
            self._clean(ds)
            self._mark(ds)
        if isinstance(ds, FileDataset) and ds.preamble is not None:
            ds.preamble = b"\x00" * 128

    def file(self, src: Path | str, dst: Path | str) -> None:
        """De-identify the file ``src`` into ``dst``, streaming the pixel data.

        The header is read and rewritten; the pixel data element is copied byte for byte,
        so a multi-gigabyte instance costs a few megabytes of memory. ``src`` is checked
        first (see :func:`~medmesh.interop.dicom.files.check`); a broken file raises
        :class:`~medmesh.errors.DicomError`. ``dst`` is written to a temporary name in its
        folder and renamed into place. The output keeps the input's transfer syntax, and a
        data set without the Part-10 header stays without one. Deflated files, files without
        the header and files with elements after the pixel data that the profile keeps are
        loaded whole instead of streamed.
        """
        src, dst = Path(src), Path(dst)
        if dst.exists() and dst.resolve() == src.resolve():
            raise InvalidInputError("the destination is the source file")
        info = check(src)
        tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.partial")
        try:
            with src.open("rb") as fp, tmp.open("wb") as out:
                self._write(fp, out, info.size, deflated=info.transfer_syntax in _DEFLATED)
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # -- internals ---------------------------------------------------------------------------

    def _check_pixels(self, ds: Dataset) -> None:
        if self._allow_identifiable_pixels:
            return
        with _quiet_pydicom():
            risky = [k for k in _PIXEL_RISK if str(ds.get(k, "")).strip().upper() == "YES"]
        if risky:
            raise DicomError(
                f"{risky[0]} is YES: the pixel data may identify the patient "
                "(pass allow_identifiable_pixels=True to accept it)"
            )

    def _write(self, fp: BinaryIO, out: BinaryIO, size: int, *, deflated: bool) -> None:
        fp.seek(128)
        part10 = fp.read(4) == b"DICM"
        fp.seek(0)
        with _quiet_pydicom():
            header = pydicom.dcmread(fp, stop_before_pixels=True, force=not part10)
        pixels_start = fp.tell()
        tail = None if deflated or not part10 else self._pixel_tail(fp, header, pixels_start, size)
        if tail is None:  # cannot stream: load the whole instance once
            fp.seek(0)
            with _quiet_pydicom():
                header = pydicom.dcmread(fp, force=not part10)
            tail = (0, 0)
        self.apply(header)
        header.save_as(out, enforce_file_format=False)
        fp.seek(tail[0])
        _copy(fp, out, tail[1] - tail[0])

    def _pixel_tail(
        self, fp: BinaryIO, header: Dataset, start: int, size: int
    ) -> tuple[int, int] | None:
        """The byte range to copy after the rewritten header, or None to load everything.

        That is the run of group 7FE0 elements where pydicom stopped. Whatever follows must
        be removed by the profile anyway (trailing padding, digital signatures, private
        elements); anything else means the tail cannot simply be copied.
        """
        implicit, little = header.original_encoding
        if implicit is None or little is None:
            return None
        try:
            elements = list(_walk_elements(fp, start, size, implicit=implicit, little=little))
        except (_Malformed, _Truncated):
            return None
        end = start
        for element in elements:
            if element.tag >> 16 == 0x7FE0 and element.start == end:
                end = element.end
            elif not (Tag(element.tag).is_private or _action_for(Tag(element.tag)) == "X"):
                return None
        return start, end

    def _clean(self, ds: Dataset, *, meta: bool = False) -> None:
        for key in list(ds.keys()):
            tag = Tag(key)
            if (
                tag.is_private
                or (tag.element == 0 and not meta)  # group length, stale once we are done
                or (meta and int(tag) in _META_REMOVED)
            ):
                del ds[tag]
                continue
            action = _action_for(tag)
            elem = ds[tag]
            if action is None or action == "U*":
                if elem.VR == "SQ":  # K cleans sequences; X/Z/U* keeps them, UIDs replaced
                    for item in elem.value:
                        self._clean(item)
                elif action == "U*" and elem.VR == "UI":
                    self._replace_uids(elem, keep_standard=False)
                elif action == "U*":
                    elem.value = elem.empty_value
            elif action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = elem.empty_value  # '' or None as the VR wants; [] for SQ
            elif action == "D":
                self._dummy(elem)
            else:  # U
                self._replace_uids(elem, keep_standard=False)

    def _dummy(self, elem: DataElement) -> None:
        vr = elem.VR.split(" or ")[0]
        if vr == "SQ":
            for item in elem.value:
                for key in list(item.keys()):
                    if Tag(key).is_private:
                        del item[key]
                    else:
                        self._dummy(item[key])
        elif vr == "UI":
            if elem.is_empty:
                elem.value = self.uid("")  # D needs a value: any valid UID
            else:
                self._replace_uids(elem, keep_standard=True)
        else:
            elem.value = _DUMMIES.get(vr, b"Anonymized")

    def _replace_uids(self, elem: DataElement, *, keep_standard: bool) -> None:
        def new(uid: Any) -> Any:
            text = (uid.decode("ascii", "replace") if isinstance(uid, bytes) else str(uid)).strip()
            text = text.rstrip("\x00")
            if not text or (keep_standard and text.startswith(_DICOM_ROOT)):
                return uid
            return self.uid(text)

        value = elem.value
        if value is None:
            return
        if isinstance(value, MultiValue | list | tuple):
            elem.value = [new(v) for v in value]
        elif isinstance(value, bytes):  # UN: unknown VR, the UID kept as bytes
            replaced = new(value)
            if isinstance(replaced, str):
                encoded = replaced.encode("ascii")
                elem.value = encoded + b"\x00" * (len(encoded) % 2)
        else:
            elem.value = new(value)

    @staticmethod
    def _mark(ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        methods = _values(ds.get("DeidentificationMethod"))
        if DEIDENTIFICATION_METHOD not in methods:
            methods.append(DEIDENTIFICATION_METHOD)
        ds.DeidentificationMethod = methods[0] if len(methods) == 1 else methods
        codes = ds.get("DeidentificationMethodCodeSequence")
        if codes is None:
            codes = Sequence()
            ds.DeidentificationMethodCodeSequence = codes
        value, scheme, meaning = BASIC_PROFILE_CODE
        if not any(
            item.get("CodeValue") == value and item.get("CodingSchemeDesignator") == scheme
            for item in codes
        ):
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = scheme
            item.CodeMeaning = meaning
            codes.append(item)


def _values(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if str(v)]
    return [str(value)]


def _copy(src: BinaryIO, dst: BinaryIO, length: int, chunk: int = 1 << 20) -> None:
    if length > 0:
        shutil.copyfileobj(_Limited(src, length), dst, chunk)


class _Limited:
    """A read-only view of the next ``length`` bytes of ``fp``, for shutil.copyfileobj."""

    def __init__(self, fp: BinaryIO, length: int) -> None:
        self._fp, self._left = fp, length

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._fp.read(n)
        if len(data) < n:
            raise DicomError("truncated: pixel data ends after the end of the file")
        self._left -= len(data)
        return data


def deidentify(
    ds: Dataset, *, uid_salt: bytes | None = None, allow_identifiable_pixels: bool = False
) -> Dataset:
    """A de-identified copy of ``ds`` (Annex E Basic Profile); ``ds`` is left untouched.

    Without ``uid_salt`` the UID key is fresh for this call, so the UIDs of two calls do not
    match: de-identify the files of one study with one :class:`Deidentifier` (or one salt).
    """
    run = Deidentifier(uid_salt=uid_salt, allow_identifiable_pixels=allow_identifiable_pixels)
    return run.dataset(ds)


def deidentify_file(src: Path | str, dst: Path | str, **kw: Any) -> None:
    """De-identify the file ``src`` into ``dst``; keywords as for :class:`Deidentifier`.

    Same caveat as :func:`deidentify`: several files of one study need one Deidentifier.
    """
    Deidentifier(**kw).file(src, dst)
