"""De-identification to DICOM PS3.15 Annex E, checked tag by tag against two tables.

The tables:

* dicomanonymizer's own lists (``dicomfields_2026c``), loaded from the package;
* an independent copy of PS3.15 Table E.1-1 "Application Level Confidentiality Profile
  Attributes", column "Basic Prof." (:data:`ANNEX_E` below). Source: the standard's table as
  published in machine-readable form by innolitics/dicom-standard
  (``standard/confidentiality_profile_attributes.json`` at commit 0d01bf11, parsed from the
  standard's HTML), transcribed here by hand: 456 attributes, the three repeating groups and
  "private attributes". It is an older edition than 2026c: every tag in it is also in the
  package's table, four with another action (tested below), and the package adds ~200
  attributes of later editions.

Action codes (PS3.15 E.1.1): X remove; Z zero-length, or a dummy; D a non-zero dummy; U a new
UID, consistent within the set; K keep (sequences cleaned); Z/D, X/Z, X/D, X/Z/D: one of those
depending on the IOD; X/Z/U*: remove, empty, or keep with the contained instance UIDs replaced.

Every DICOM file pydicom ships (and that ``dcmread`` can read) is de-identified and checked;
:data:`SKIPPED` says which are not and why. A synthetic data set holding every tag of both
tables, at top level and nested, makes sure no rule goes untested.
"""

from __future__ import annotations

import copy
import io
import re
import shutil
import tracemalloc
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian

from medmesh.errors import DicomError, InvalidInputError
from medmesh.interop.dicom import Deidentifier, check, deidentify_file
from medmesh.interop.dicom.deidentify import BASIC_PROFILE_CODE, EDITION_OVERRIDES, deidentify

DATA = Path(pydicom.data.__file__).parent

# tag      code     attribute name
_TABLE = """
00080050 Z      Accession Number
00184000 X      Acquisition Comments
00400555 X/Z    Acquisition Context Sequence
00080022 X/Z    Acquisition Date
0008002A X/Z/D  Acquisition DateTime
00181400 X/D    Acquisition Device Processing Description
001811BB D      Acquisition Field Of View Label
00189424 X      Acquisition Protocol Description
00080032 X/Z    Acquisition Time
00404035 X      Actual Human Performers Sequence
001021B0 X      Additional Patient History
0040A353 X      Address (Trial)
00380010 X      Admission ID
00380020 X      Admitting Date
00081084 X      Admitting Diagnoses Code Sequence
00081080 X      Admitting Diagnoses Description
00380021 X      Admitting Time
00001000 X      Affected SOP Instance UID
00102110 X      Allergies
40000010 X      Arbitrary
0040A078 X      Author Observer Sequence
22000005 X/Z    Barcode Value
300A00C3 X      Beam Description
300A00DD X      Bolus Description
00101081 X      Branch of Service
0016004D X      Camera Owner Name
00181007 X      Cassette ID
00120060 Z      Clinical Trial Coordinating Center Name
00120082 X      Clinical Trial Protocol Ethics Committee Approval Number
00120081 D      Clinical Trial Protocol Ethics Committee Name
00120020 D      Clinical Trial Protocol ID
00120021 Z      Clinical Trial Protocol Name
00120072 X      Clinical Trial Series Description
00120071 X      Clinical Trial Series ID
00120030 Z      Clinical Trial Site ID
00120031 Z      Clinical Trial Site Name
00120010 D      Clinical Trial Sponsor Name
00120040 D      Clinical Trial Subject ID
00120042 D      Clinical Trial Subject Reading ID
00120051 X      Clinical Trial Time Point Description
00120050 Z      Clinical Trial Time Point ID
00400310 X      Comments on Radiation Dose
00400280 X      Comments on the Performed Procedure Step
300A02EB X      Compensator Description
00209161 U      Concatenation UID
3010000F Z      Conceptual Volume Combination Description
30100017 Z      Conceptual Volume Description
30100006 U      Conceptual Volume UID
00403001 X      Confidentiality Constraint on Patient Data Description
30100013 U      Constituent Conceptual Volume UID
0008009C Z      Consulting Physician's Name
0008009D X      Consulting Physician Identification Sequence
0050001B X      Container Component ID
0040051A X      Container Description
00400512 D      Container Identifier
00700086 X      Content Creator's Identification Code Sequence
00700084 Z/D    Content Creator's Name
00080023 Z/D    Content Date
0040A730 D      Content Sequence
00080033 Z/D    Content Time
00180010 Z/D    Contrast/Bolus Agent
0018A003 X      Contribution Description
00102150 X      Country of Residence
0040A307 X      Current Observer (Trial)
00380300 X      Current Patient Location
00080025 X      Curve Date
00080035 X      Curve Time
0040A07C X      Custodial Organization Sequence
FFFCFFFC X      Data Set Trailing Padding
0018937F X      Decomposition Description
00082111 X      Derivation Description
0018700A X/D    Detector ID
3010001B Z      Device Alternate Identifier
00500020 X      Device Description
3010002D D      Device Label
00181000 X/Z/D  Device Serial Number
0016004B X      Device Setting Description
00181002 U      Device UID
FFFAFFFA X      Digital Signatures Sequence
04000100 U      Digital Signature UID
00209164 U      Dimension Organization UID
00380040 X      Discharge Diagnosis Description
4008011A X      Distribution Address
40080119 X      Distribution Name
300A0016 X      Dose Reference Description
300A0013 U      Dose Reference UID
3010006E U      Dosimetric Objective UID
00189517 X/D    End Acquisition DateTime
30100037 X      Entity Description
30100035 D      Entity Label
30100038 D      Entity Long Label
30100036 X      Entity Name
300A0676 X      Equipment Frame of Reference Description
00102160 X      Ethnic Group
00404011 X      Expected Completion DateTime
00080058 U      Failed SOP Instance UID List
0070031A U      Fiducial UID
00402017 Z      Filler Order Number / Imaging Service Request
30080054 X/D    First Treatment Date
300A0196 X      Fixation Device Description
00340002 D      Flow Identifier
00340001 D      Flow Identifier Sequence
3010007F Z      Fractionation Notes
300A0072 X      Fraction Group Description
00209158 X      Frame Comments
00200052 U      Frame of Reference UID
00340007 D      Frame Origin Timestamp
00181008 X      Gantry ID
00181005 X      Generator ID
00160076 X      GPS Altitude
00160075 X      GPS Altitude Ref
0016008C X      GPS Area Information
0016008D X      GPS Date Stamp
00160088 X      GPS Dest Bearing
00160087 X      GPS Dest Bearing Ref
0016008A X      GPS Dest Distance
00160089 X      GPS Dest Distance Ref
00160084 X      GPS Dest Latitude
00160083 X      GPS Dest Latitude Ref
00160086 X      GPS Dest Longitude
00160085 X      GPS Dest Longitude Ref
0016008E X      GPS Differential
0016007B X      GPS DOP
00160081 X      GPS Img Direction
00160080 X      GPS Img Direction Ref
00160072 X      GPS Latitude
00160071 X      GPS Latitude Ref
00160074 X      GPS Longitude
00160073 X      GPS Longitude Ref
00160082 X      GPS Map Datum
0016007A X      GPS Measure Mode
0016008B X      GPS Processing Method
00160078 X      GPS Satellites
0016007D X      GPS Speed
0016007C X      GPS Speed Ref
00160079 X      GPS Status
00160077 X      GPS Time Stamp
0016007F X      GPS Track
0016007E X      GPS Track Ref
00160070 X      GPS Version ID
00700001 D      Graphic Annotation Sequence
00404037 X      Human Performer's Name
00404036 X      Human Performer's Organization
00880200 X      Icon Image Sequence
00084000 X      Identifying Comments
00204000 X      Image Comments
00284000 X      Image Presentation Comments
00402400 X      Imaging Service Request Comments
003A0314 D      Impedance Measurement DateTime
40080300 X      Impressions
00080015 X      Instance Coercion DateTime
00080014 U      Instance Creator UID
04000600 X      Instance Origin Status
00080081 X      Institution Address
00081040 X      Institutional Department Name
00081041 X      Institutional Department Type Code Sequence
00080082 X/Z/D  Institution Code Sequence
00080080 X/Z/D  Institution Name
00101050 X      Insurance Plan Identification
3010004D X/D    Intended Phase End Date
3010004C X/D    Intended Phase Start Date
00401011 X      Intended Recipients of Results Identification Sequence
300A0741 D      Interlock DateTime
300A0742 D      Interlock Description
300A0783 D      Interlock Origin Description
40080111 X      Interpretation Approver Sequence
4008010C X      Interpretation Author
40080115 X      Interpretation Diagnosis Description
40080202 X      Interpretation ID Issuer
40080102 X      Interpretation Recorder
4008010B X      Interpretation Text
4008010A X      Interpretation Transcriber
00083010 U      Irradiation Event UID
00380011 X      Issuer of Admission ID
00380014 X      Issuer of Admission ID Sequence
00100021 X      Issuer of Patient ID
00380061 X      Issuer of Service Episode ID
00380064 X      Issuer of Service Episode ID Sequence
00400513 Z      Issuer of the Container Identifier Sequence
00400562 Z      Issuer of the Specimen Identifier Sequence
22000002 X/Z    Label Text
00281214 U      Large Palette Color Lookup Table UID
001021D0 X      Last Menstrual Date
0016004F X      Lens Make
00160050 X      Lens Model
00160051 X      Lens Serial Number
0016004E X      Lens Specification
00500021 X      Long Device Description
04000404 X      MAC
0016002B X      Maker Note
0018100B U      Manufacturer's Device Class UID
30100043 Z      Manufacturer's Device Identifier
00020003 U      Media Storage SOP Instance UID
00102000 X      Medical Alerts
00101090 X      Medical Record Locator
00101080 X      Military Rank
04000550 X      Modified Attributes Sequence
00203406 X      Modified Image Description
00203401 X      Modifying Device ID
30080056 X/D    Most Recent Treatment Date
0018937B X      Multi-energy Acquisition Description
003A0310 U      Multiplex Group UID
00081060 X      Name of Physician(s) Reading Study
00401010 X      Names of Intended Recipients of Results
04000551 X      Nonconforming Modified Attributes Sequence
04000552 X      Nonconforming Data Element Value
0040A192 X      Observation Date (Trial)
0040A402 U      Observation Subject UID (Trial)
0040A193 X      Observation Time (Trial)
0040A171 U      Observation UID
00102180 X      Occupation
00081072 X/D    Operator Identification Sequence
00081070 X/Z/D  Operators' Name
00402010 X      Order Callback Phone Number
00402011 X      Order Callback Telecom Information
00402008 X      Order Entered By
00402009 X      Order Enterer's Location
04000561 X      Original Attributes Sequence
00101000 X      Other Patient IDs
00101002 X      Other Patient IDs Sequence
00101001 X      Other Patient Names
00080024 X      Overlay Date
00080034 X      Overlay Time
300A0760 D      Override DateTime
00281199 U      Palette Color Lookup Table UID
0040A07A X      Participant Sequence
00101040 X      Patient's Address
00101010 X      Patient's Age
00100030 Z      Patient's Birth Date
00101005 X      Patient's Birth Name
00100032 X      Patient's Birth Time
00380400 X      Patient's Institution Residence
00100050 X      Patient's Insurance Plan Code Sequence
00101060 X      Patient's Mother's Birth Name
00100010 Z      Patient's Name
00100101 X      Patient's Primary Language Code Sequence
00100102 X      Patient's Primary Language Modifier Code Sequence
001021F0 X      Patient's Religious Preference
00100040 Z      Patient's Sex
00102203 X/Z    Patient's Sex Neutered
00101020 X      Patient's Size
00102155 X      Patient's Telecom Information
00102154 X      Patient's Telephone Numbers
00101030 X      Patient's Weight
00104000 X      Patient Comments
00100020 Z      Patient ID
300A0650 U      Patient Setup UID
00380500 X      Patient State
00401004 X      Patient Transport Arrangements
00400243 X      Performed Location
00400254 X      Performed Procedure Step Description
00400250 X      Performed Procedure Step End Date
00404051 X      Performed Procedure Step End DateTime
00400251 X      Performed Procedure Step End Time
00400253 X      Performed Procedure Step ID
00400244 X      Performed Procedure Step Start Date
00404050 X      Performed Procedure Step Start DateTime
00400245 X      Performed Procedure Step Start Time
00400241 X      Performed Station AE Title
00404030 X      Performed Station Geographic Location Code Sequence
00400242 X      Performed Station Name
00404028 X      Performed Station Name Code Sequence
00081050 X      Performing Physician's Name
00081052 X      Performing Physician Identification Sequence
00401102 X      Person's Address
00401104 X      Person's Telecom Information
00401103 X      Person's Telephone Numbers
00401101 D      Person Identification Code Sequence
0040A123 D      Person Name
00081048 X      Physician(s) of Record
00081049 X      Physician(s) of Record Identification Sequence
00081062 X      Physician(s) Reading Study Identification Sequence
40080114 X      Physician Approving Interpretation
00402016 Z      Placer Order Number / Imaging Service Request
00181004 X      Plate ID
001021C0 X      Pregnancy Status
00400012 X      Pre-Medication
300A000E X      Prescription Description
3010007B Z      Prescription Notes
30100081 Z      Prescription Notes Sequence
00701101 U      Presentation Display Collection UID
00701102 U      Presentation Sequence Collection UID
30100061 X      Prior Treatment Dose Description
00404052 X      Procedure Step Cancellation DateTime
00181030 X/D    Protocol Name
300A0619 D      Radiation Dose Identification Label
300A0623 D      Radiation Dose In-Vivo Measurement Label
300A067D Z      Radiation Generation Mode Description
300A067C D      Radiation Generation Mode Label
300C0113 X      Reason for Omission Description
0040100A X      Reason for Requested Procedure Code Sequence
00321030 X      Reason for Study
3010005C Z      Reason for Superseding
00402001 X      Reason for the Imaging Service Request
00401002 X      Reason for the Requested Procedure
00321066 X      Reason for Visit
00321067 X      Reason for Visit Code Sequence
300A073A D      Recorded RT Control Point DateTime
3010000B U      Referenced Conceptual Volume UID
04000402 X      Referenced Digital Signature Sequence
300A0083 U      Referenced Dose Reference UID
3010006F U      Referenced Dosimetric Objective UID
30100031 U      Referenced Fiducials UID
30060024 U      Referenced Frame of Reference UID
00404023 U      Referenced General Purpose Scheduled Procedure Step Transaction UID
00081140 X/Z/U* Referenced Image Sequence
0040A172 U      Referenced Observation UID (Trial)
00380004 X      Referenced Patient Alias Sequence
00101100 X      Referenced Patient Photo Sequence
00081120 X      Referenced Patient Sequence
00081111 X/Z/D  Referenced Performed Procedure Step Sequence
04000403 X      Referenced SOP Instance MAC Sequence
00081155 U      Referenced SOP Instance UID
00041511 U      Referenced SOP Instance UID in File
00081110 X/Z    Referenced Study Sequence
00080092 X      Referring Physician's Address
00080090 Z      Referring Physician's Name
00080094 X      Referring Physician's Telephone Numbers
00080096 X      Referring Physician Identification Sequence
00102152 X      Region of Residence
300600C2 U      Related Frame of Reference UID
00400275 X      Request Attributes Sequence
00321070 X      Requested Contrast Agent
00401400 X      Requested Procedure Comments
00321060 X/Z    Requested Procedure Description
00401001 X      Requested Procedure ID
00401005 X      Requested Procedure Location
00189937 X      Requested Series Description
00001001 U      Requested SOP Instance UID
00321032 X      Requesting Physician
00321033 X      Requesting Service
00189185 X      Respiratory Motion Compensation Technique Description
00102299 X      Responsible Organization
00102297 X      Responsible Person
40084000 X      Results Comments
40080118 X      Results Distribution List Sequence
40080042 X      Results ID Issuer
300E0008 X/Z    Reviewer Name
30060028 X      ROI Description
30060038 X      ROI Generation Description
300600A6 Z      ROI Interpreter
30060026 Z      ROI Name
30060088 X      ROI Observation Description
30060085 X      ROI Observation Label
300A0615 Z      RT Accessory Device Slot ID
300A0611 Z      RT Accessory Holder Slot ID
3010005A Z      RT Physician Intent Narrative
300A0006 X/D    RT Plan Date
300A0004 X      RT Plan Description
300A0002 D      RT Plan Label
300A0003 X      RT Plan Name
300A0007 X/D    RT Plan Time
30100054 D      RT Prescription Label
300A062A D      RT Tolerance Set Label
30100056 X/D    RT Treatment Approach Label
3010003B U      RT Treatment Phase UID
00404034 X      Scheduled Human Performers Sequence
0038001E X      Scheduled Patient Institution Residence
00400006 X      Scheduled Performing Physician's Name
0040000B X      Scheduled Performing Physician Identification Sequence
00400007 X      Scheduled Procedure Step Description
00400004 X      Scheduled Procedure Step End Date
00400005 X      Scheduled Procedure Step End Time
00404008 X      Scheduled Procedure Step Expiration DateTime
00400009 X      Scheduled Procedure Step ID
00400011 X      Scheduled Procedure Step Location
00404010 X      Scheduled Procedure Step Modification DateTime
00400002 X      Scheduled Procedure Step Start Date
00404005 X      Scheduled Procedure Step Start DateTime
00400003 X      Scheduled Procedure Step Start Time
00400001 X      Scheduled Station AE Title
00404027 X      Scheduled Station Geographic Location Code Sequence
00400010 X      Scheduled Station Name
00404025 X      Scheduled Station Name Code Sequence
00321020 X      Scheduled Study Location
00321021 X      Scheduled Study Location AE Title
00080021 X/D    Series Date
0008103E X      Series Description
0020000E U      Series Instance UID
00080031 X/D    Series Time
00380062 X      Service Episode Description
00380060 X      Service Episode ID
300A01B2 X      Setup Technique Description
300A01A6 X      Shielding Device Description
004006FA X      Slide Identifier
001021A0 X      Smoking Status
00080018 U      SOP Instance UID
30100015 U      Source Conceptual Volume UID
0018936A D      Source End DateTime
00340005 D      Source Identifier
00082112 X/Z/U* Source Image Sequence
300A0216 X      Source Manufacturer
30080105 X/Z    Source Serial Number
00189369 D      Source Start DateTime
00380050 X      Special Needs
0040050A X      Specimen Accession Number
00400602 X      Specimen Detailed Description
00400551 D      Specimen Identifier
00400610 Z      Specimen Preparation Sequence
00400600 X      Specimen Short Description
00400554 U      Specimen UID
00189516 X/D    Start Acquisition DateTime
00081010 X/Z/D  Station Name
00880140 U      Storage Media File-set UID
30060008 Z      Structure Set Date
30060006 X      Structure Set Description
30060002 D      Structure Set Label
30060004 X      Structure Set Name
30060009 X/D    Structure Set Time
00324000 X      Study Comments
00080020 Z      Study Date
00081030 X      Study Description
00200010 Z      Study ID
00320012 X      Study ID Issuer
0020000D U      Study Instance UID
00080030 Z      Study Time
00200200 U      Synchronization Frame of Reference UID
00182042 U      Target UID
0040A354 X      Telephone Number (Trial)
0040DB0D U      Template Extension Creator UID
0040DB0C U      Template Extension Organization UID
40004000 X      Text Comments
20300020 X      Text String
00080201 X      Timezone Offset From UTC
00880910 X      Topic Author
00880912 X      Topic Keywords
00880906 X      Topic Subject
00880904 X      Topic Title
00620021 U      Tracking UID
00081195 U      Transaction UID
00185011 X      Transducer Identification Sequence
30080250 X/D    Treatment Date
300A00B2 X      Treatment Machine Name
300A0608 D      Treatment Position Group Label
300A0609 U      Treatment Position Group UID
300A0700 U      Treatment Session UID
30100077 D      Treatment Site
3010007A Z      Treatment Technique Notes
30080251 X/D    Treatment Time
300A0736 D      Treatment Tolerance Violation DateTime
300A0734 D      Treatment Tolerance Violation Description
0018100A X      UDI Sequence
0040A124 U      UID
00181009 X      Unique Device Identifier
30100033 D      User Content Label
30100034 D      User Content Long Label
0040A352 X      Verbal Source (Trial)
0040A358 X      Verbal Source Identifier Code Sequence (Trial)
0040A088 Z      Verifying Observer Identification Code Sequence
0040A075 D      Verifying Observer Name
0040A073 D      Verifying Observer Sequence
0040A027 D      Verifying Organization
00384000 X      Visit Comments
00189371 D      X-Ray Detector ID
00189373 X      X-Ray Detector Label
00189367 D      X-Ray Source ID
"""

#: {tag: code} for single attributes.
ANNEX_E: dict[int, str] = {
    int(line[:8], 16): line[9:16].strip() for line in _TABLE.strip().splitlines()
}

#: Repeating groups: (group, group mask, element, element mask, code). Curve Data (50xx,xxxx),
#: Overlay Data (60xx,3000), Overlay Comments (60xx,4000), all X.
ANNEX_E_MASKED: list[tuple[int, int, int, int, str]] = [
    (0x5000, 0xFF00, 0x0000, 0x0000, "X"),
    (0x6000, 0xFF00, 0x3000, 0xFFFF, "X"),
    (0x6000, 0xFF00, 0x4000, 0xFFFF, "X"),
]

# File meta AE titles and private information: removed by the engine as a precaution.
META_REMOVED = frozenset({0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102})

CODES = frozenset({"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})

# The dummies the engine writes for D (and for Z/D, X/D, X/Z/D), by VR: an independent copy.
DUMMIES: Mapping[str, object] = {
    **dict.fromkeys(("AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"), "ANONYMIZED"),
    "AS": "000Y",
    "UR": "http://anonymized.invalid",
    "DA": "00010101",
    "DT": "00010101010101.000000+0000",
    "TM": "000000.00",
    **dict.fromkeys(("OB", "UN"), b"Anonymized"),
}
_NEW_UID = re.compile(r"2\.25\.(0|[1-9][0-9]{0,38})")


def is_new_uid(value: object) -> bool:
    """A UID this engine writes: ``2.25.<decimal of at most 128 bits>``, valid per PS3.5 9."""
    text = str(value)
    return bool(_NEW_UID.fullmatch(text)) and int(text[5:]) < 2**128 and len(text) <= 64


def _values(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def is_dummy(elem: DataElement) -> bool:
    """Whether ``elem`` holds the engine's dummy (every leaf, for a sequence)."""
    vr = elem.VR.split(" or ")[0]
    if vr == "SQ":
        return all(is_dummy(e) for item in elem.value for e in item)
    values = _values(elem.value)
    if not values:
        return False
    if vr == "UI":
        return all(is_new_uid(v) or str(v).startswith("1.2.840.10008.") for v in values)
    if vr in ("DS", "IS", "FL", "FD", "SS", "US", "SL", "UL", "SV", "UV", "AT"):
        return all(float(v) == 0 for v in values)  # type: ignore[arg-type]
    if vr in ("OW", "OF", "OL", "OD", "OV"):
        return all(set(bytes(v)) <= {0} for v in values)  # type: ignore[call-overload]
    expected = DUMMIES.get(vr)
    return all(v == expected or str(v) == expected for v in values)


def is_empty(elem: DataElement) -> bool:
    if elem.VR == "SQ":
        return len(elem.value) == 0
    return bool(elem.is_empty)


@dataclass
class Checker:
    """Checks a de-identified data set against one Table E.1-1 and records what it saw.

    ``not_kept`` are tags the other table acts on: not listed here, but not expected kept.
    """

    name: str
    table: Mapping[int, str]
    masked: list[tuple[int, int, int, int, str]]
    not_kept: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # how many elements per code checked
    uid_map: dict[str, str] = field(default_factory=dict)

    def code(self, tag: BaseTag) -> str | None:
        if int(tag) in self.table:
            return self.table[int(tag)]
        for group, gmask, element, emask, code in self.masked:
            if tag.group & gmask == group and tag.element & emask == element:
                return code
        return None

    def check(self, original: Dataset, result: Dataset, where: str = "") -> None:
        for orig in original:
            tag = orig.tag
            if tag.is_private or (tag.element == 0 and tag.group != 2):
                continue
            path = f"{where}{tag}"
            code = self.code(tag)
            new = result.get(tag)
            if code is None:  # K: kept; sequences cleaned item by item
                if int(tag) not in self.not_kept:
                    self._kept(orig, new, path)
                continue
            self.seen[code] = self.seen.get(code, 0) + 1
            self._coded(code, orig, new, path)

    def _fail(self, path: str, what: str) -> None:
        self.problems.append(f"{path}: {what}")

    def _kept(self, orig: DataElement, new: DataElement | None, path: str) -> None:
        if orig.tag in (0x00120062, 0x00120063, 0x00120064):  # the de-identifier writes them
            return
        if new is None and orig.tag in META_REMOVED:
            return
        if new is None:
            self._fail(path, "K: removed")
        elif orig.VR == "SQ":
            if len(new.value) != len(orig.value):
                self._fail(path, "K: sequence items added or removed")
            for i, (a, b) in enumerate(zip(orig.value, new.value, strict=False)):
                self.check(a, b, f"{path}[{i}].")
        elif new.value != orig.value:
            self._fail(path, "K: value changed")

    def _coded(self, code: str, orig: DataElement, new: DataElement | None, path: str) -> None:
        present = new is not None
        empty = present and is_empty(new)  # type: ignore[arg-type]
        dummy = present and not empty and is_dummy(new)  # type: ignore[arg-type]
        if dummy and not is_empty(orig) and new.value == orig.value and orig.VR != "SQ":  # type: ignore[union-attr]
            dummy = False  # a "dummy" equal to the original replaced nothing
        if code == "U":
            self._uid(orig, new, path)
        elif code == "X/Z/U*":
            if present and not empty:
                if orig.VR != "SQ" or new.VR != "SQ" or len(new.value) != len(orig.value):  # type: ignore[union-attr]
                    self._fail(path, "X/Z/U*: kept, but not as the same sequence")
                else:
                    for i, (a, b) in enumerate(zip(orig.value, new.value, strict=True)):  # type: ignore[union-attr]
                        self.check(a, b, f"{path}[{i}].")
        else:
            allowed = {
                "X": not present,
                "Z": empty or dummy,
                "D": dummy,
                "Z/D": empty or dummy,
                "X/Z": not present or empty,
                "X/D": not present or dummy,
                "X/Z/D": not present or empty or dummy,
            }[code]
            if not allowed:
                state = "absent" if not present else "empty" if empty else "kept or not a dummy"
                self._fail(path, f"{code}: {state}")

    def _uid(self, orig: DataElement, new: DataElement | None, path: str) -> None:
        before = [str(v) for v in _values(orig.value) if str(v)]
        if not before:
            return
        if new is None:
            self._fail(path, "U: removed")
            return
        after = [str(v) for v in _values(new.value)]
        if len(after) != len(before):
            self._fail(path, "U: number of values changed")
            return
        for a, b in zip(before, after, strict=True):
            if not is_new_uid(b) or a == b:
                self._fail(path, "U: not replaced by a new valid UID")
            elif self.uid_map.setdefault(a, b) != b:
                self._fail(path, "U: the same UID was replaced inconsistently")


def walk(ds: Dataset) -> Iterator[DataElement]:
    """Every element at every depth."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def private_tags(ds: Dataset) -> list[BaseTag]:
    return [e.tag for e in walk(ds) if Tag(e.tag).is_private]


# -- dicomanonymizer's own table ---------------------------------------------------------------

_PACKAGE_CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _package_table() -> tuple[dict[int, str], list[tuple[int, int, int, int, str]]]:
    tables = dicom_anonymization_database_selector("dicomfields_2026c")
    single: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, code in _PACKAGE_CODES.items():
        for tag in tables[category]:
            if len(tag) == 2:
                single[tag[0] << 16 | tag[1]] = code
            else:  # (group, element, group mask, element mask)
                masked.append((tag[0] & tag[2], tag[2], tag[1] & tag[3], tag[3], code))
    return single, masked


PACKAGE, PACKAGE_MASKED = _package_table()


def checkers() -> list[Checker]:
    """One checker per table; a tag only the other table lists is not expected to be kept."""
    return [
        Checker("PS3.15 (independent)", ANNEX_E, ANNEX_E_MASKED, not_kept=set(PACKAGE)),
        Checker("dicomanonymizer 2026c", PACKAGE, PACKAGE_MASKED, not_kept=set(ANNEX_E)),
    ]


def check_all(original: Dataset, result: Dataset) -> list[Checker]:
    """Run both checkers over the data set and its file meta; return them."""
    done = checkers()
    for checker in done:
        checker.check(original, result)
        meta = getattr(original, "file_meta", None)
        if meta is not None:
            checker.check(meta, result.file_meta, "meta.")
    return done


def assert_deidentified(original: Dataset, result: Dataset) -> list[Checker]:
    done = check_all(original, result)
    for checker in done:
        assert not checker.problems, (checker.name, checker.problems[:20])
    assert private_tags(result) == []
    assert result.PatientIdentityRemoved == "YES"
    assert result.DeidentificationMethod
    codes = {
        (i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
        for i in result.DeidentificationMethodCodeSequence
    }
    assert BASIC_PROFILE_CODE in codes
    return done


# -- the pydicom test files -----------------------------------------------------------------------

# Read with a warning that is expected, and filtered for this file only.
ODD: Mapping[str, str] = {
    "SC_rgb_jpeg.dcm": r"Expected explicit VR, but found implicit VR",  # read as implicit VR
    "badVR.dcm": r"Invalid value for VR (IS|UI)",  # IS '1A'; a UID component with a leading 0
    "rtdose.dcm": r"Invalid value for VR UI",  # a UID component with a leading zero
    "rtdose_1frame.dcm": r"Invalid value for VR UI",
    "rtdose_expb.dcm": r"Invalid value for VR UI",
    "rtdose_expb_1frame.dcm": r"Invalid value for VR UI",
    "rtdose_rle.dcm": r"Invalid value for VR UI",
    "rtdose_rle_1frame.dcm": r"Invalid value for VR UI",
}
# Data sets without the Part-10 preamble: dcmread needs force=True.
NO_PREAMBLE = frozenset({"ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm"})
SKIPPED: Mapping[str, str] = {
    "no_meta.dcm": "damaged on purpose (begins one byte late): even force=True reads garbage",
    "README": "a text file in TINY_ALPHA",
}
_NOT_DICOM_SUFFIXES = frozenset({".py", ".pyc", ".json", ".txt", ".md", ".icc", ".dump", ".gz"})


def pydicom_files() -> list[Path]:
    """Every file shipped in pydicom's data folder that may be DICOM (nothing downloaded)."""
    return sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix not in _NOT_DICOM_SUFFIXES)


@contextmanager
def expected_warnings(path: Path) -> Iterator[None]:
    with warnings.catch_warnings():
        if path.name in ODD:
            warnings.filterwarnings("ignore", message=ODD[path.name], category=UserWarning)
        yield


def read(path: Path) -> Dataset:
    with expected_warnings(path):
        return pydicom.dcmread(path, force=path.name in NO_PREAMBLE)


def _params() -> list[object]:
    out = []
    for p in pydicom_files():
        marks = [pytest.mark.skip(reason=SKIPPED[p.name])] if p.name in SKIPPED else []
        out.append(pytest.param(p, id=str(p.relative_to(DATA)), marks=marks))
    return out


@pytest.fixture(scope="module")
def run() -> Deidentifier:
    """One run for the whole module: UIDs shared between files must map the same way."""
    return Deidentifier(allow_identifiable_pixels=True)


@pytest.mark.parametrize("path", _params())
def test_annex_e_on_pydicom_file(path: Path, run: Deidentifier) -> None:
    # Prepare
    original = read(path)
    pristine = copy.deepcopy(original)
    # Execute
    result = run.dataset(original)
    # Assert
    with expected_warnings(path):
        assert original == pristine, "the input must be left untouched"
        assert_deidentified(original, result)


def test_pydicom_files_are_all_tried() -> None:
    files = pydicom_files()
    assert len(files) > 150
    for p in files:
        if p.name not in SKIPPED:
            read(p)  # readable, and without unexpected warnings
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(p, force=True)
            except Exception:  # pydicom raises several types on garbage
                continue
        assert "SOPClassUID" not in ds, f"{p.name} reads as a data set: test it"


# -- every tag of both tables --------------------------------------------------------------------


def _value_for(vr: str, tag: int) -> object:
    """A realistic identifying value for ``vr``."""
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Doe^Jane"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.{tag}.9"
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.CodeValue = "SECRET"
        return Sequence([item])
    return {
        "AE": "STATION7",
        "AS": "042Y",
        "AT": 0x00100010,
        "CS": "SECRET",
        "DA": "20200102",
        "DS": "12.5",
        "DT": "20200102101010",
        "FD": 1.5,
        "FL": 1.5,
        "IS": "7",
        "LO": "secret text",
        "LT": "secret text",
        "OB": b"\x01\x02",
        "OD": b"\x01" * 8,
        "OF": b"\x01" * 4,
        "OL": b"\x01" * 4,
        "OV": b"\x01" * 8,
        "OW": b"\x01\x02",
        "PN": "Doe^Jane",
        "SH": "secret",
        "SL": 7,
        "SS": 7,
        "ST": "secret text",
        "SV": 7,
        "TM": "101010",
        "UC": "secret text",
        "UI": f"1.2.826.0.1.3680043.2.1143.{tag}",
        "UL": 7,
        "UN": b"secret",
        "UR": "http://example.org/patient/7",
        "US": 7,
        "UT": "secret text",
        "UV": 7,
    }[vr]


def _every_tag() -> Dataset:
    ds = Dataset()
    tags = set(ANNEX_E) | set(PACKAGE)
    tags |= {0x50000010, 0x60003000, 0x60004000, 0x60023000}  # curves and overlays
    for tag in sorted(tags):
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            continue  # command group, file meta and trailing elements are tested elsewhere
        try:
            vr = dictionary_VR(tag).split(" or ")[0]
        except KeyError:
            vr = "UN"  # newer than pydicom's dictionary
        if vr == "OB" and tag >> 16 in (0x5000, 0x6000, 0x6002):
            vr = "OW"
        ds.add(DataElement(tag, vr, _value_for(vr, tag)))
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    return ds


def test_every_annex_e_tag_at_top_level_and_nested(run: Deidentifier) -> None:
    # Prepare: every tag of both tables, again inside a kept sequence and an X/Z/U* sequence
    ds = _every_tag()
    ds.ReferencedSeriesSequence = Sequence([_every_tag()])  # (0008,1115): K, cleaned
    ds.SourceImageSequence = Sequence([_every_tag()])  # (0008,2112): X/Z/U*
    # Execute
    result = run.dataset(ds)
    # Assert
    done = assert_deidentified(ds, result)
    independent, package = done
    # Each tag was checked three times (top level, in the K and in the X/Z/U* sequence),
    # except the few inside the sequences the rules replace or remove.
    assert sum(independent.seen.values()) >= 2 * len(ANNEX_E)
    assert sum(package.seen.values()) >= 2 * len(PACKAGE)
    assert set(independent.seen) == CODES
    nested = result.ReferencedSeriesSequence[0]
    assert nested.get("PatientName") in (None, "")
    assert nested.StudyInstanceUID == result.StudyInstanceUID == run.uid(ds.StudyInstanceUID)


def test_the_checker_fails_on_data_that_is_not_deidentified(run: Deidentifier) -> None:
    """Negative controls: the checks above can fail."""
    ds = _every_tag()
    for checker in check_all(ds, ds):  # nothing done
        assert len(checker.problems) > 300
        assert any(p.startswith("(0010,0010): Z") for p in checker.problems)
    result = run.dataset(ds)
    leaky = copy.deepcopy(result)
    leaky.SourceImageSequence = Sequence([Dataset()])  # an X/Z/U* sequence, items changed
    leaky.AcquisitionDate = "20200102"  # X/Z: a real date is neither absent nor empty
    leaky.VerifyingObserverSequence[0].PatientName = "Doe^Jane"  # D: not a dummy any more
    leaky.FrameOfReferenceUID = ds.FrameOfReferenceUID  # U: not replaced
    leaky.add_new(0x00091010, "LO", "private")
    for checker in check_all(ds, leaky):
        text = "\n".join(checker.problems)
        assert "(0008,2112)[0]." in text  # its contents no longer match
        assert "(0008,0022): X/Z" in text
        assert "(0040,A073): D" in text
        assert "(0020,0052): U" in text
    assert private_tags(leaky) == [Tag(0x00091010)]


def test_tables_agree_but_for_four_attributes() -> None:
    assert set(ANNEX_E) <= set(PACKAGE)
    differ = {tag: (code, PACKAGE[tag]) for tag, code in ANNEX_E.items() if PACKAGE[tag] != code}
    assert differ == {
        0x00100020: ("Z", "Z/D"),  # Patient ID: a dummy satisfies both
        0x30060009: ("X/D", "Z"),  # Structure Set Time: overridden to D
        0x300A00B2: ("X", "X/Z"),  # Treatment Machine Name: overridden to X
        0x30100077: ("D", "X/D"),  # Treatment Site: a dummy satisfies both
    }
    assert set(EDITION_OVERRIDES) == {0x30060009, 0x300A00B2}


# -- UIDs, sequences, private tags, marks --------------------------------------------------------


def _study_files() -> list[Path]:
    return sorted((DATA / "test_files/dicomdirtests/77654033/CT2").iterdir())


def test_uids_are_consistent_within_a_run() -> None:
    run = Deidentifier()
    originals = [read(p) for p in _study_files()]
    results = [run.dataset(ds) for ds in originals]
    assert len({r.StudyInstanceUID for r in results}) == 1
    assert len({r.SeriesInstanceUID for r in results}) == 1
    assert len({r.SOPInstanceUID for r in results}) == len(results)
    for ds, r in zip(originals, results, strict=True):
        assert r.SOPInstanceUID == run.uid(ds.SOPInstanceUID) != ds.SOPInstanceUID
        assert r.file_meta.MediaStorageSOPInstanceUID == r.SOPInstanceUID
        assert r.FrameOfReferenceUID == run.uid(ds.FrameOfReferenceUID)
        assert r.SOPClassUID == ds.SOPClassUID  # K: not identifying


def test_salted_uids_are_reproducible_and_unsalted_ones_are_not() -> None:
    ds = read(DATA / "test_files/CT_small.dcm")
    salt = b"0123456789abcdef-secret"
    one = deidentify(ds, uid_salt=salt).StudyInstanceUID
    assert deidentify(ds, uid_salt=salt).StudyInstanceUID == one
    assert deidentify(ds, uid_salt=b"another salt, 16+ bytes").StudyInstanceUID != one
    assert deidentify(ds).StudyInstanceUID != deidentify(ds).StudyInstanceUID
    assert is_new_uid(one) and len(one) <= 64
    with pytest.raises(InvalidInputError):
        Deidentifier(uid_salt=b"short")


def test_uids_are_uuid_v8_under_2_25() -> None:
    uid = Deidentifier().uid("1.2.3.4")
    n = int(uid.removeprefix("2.25."))
    assert (n >> 76) & 0xF == 8 and (n >> 62) & 0x3 == 0b10


def test_nested_sequences_are_processed(run: Deidentifier) -> None:
    # Prepare: a DICOMDIR nests patient names and instance UIDs in directory records
    original = read(DATA / "test_files/dicomdirtests/DICOMDIR")
    records = original.DirectoryRecordSequence
    assert any(r.get("PatientName") for r in records)
    # Execute
    result = run.dataset(original)
    # Assert
    for before, after in zip(records, result.DirectoryRecordSequence, strict=True):
        assert after.get("PatientName") in (None, "")
        assert "PatientID" not in after or after.PatientID == "ANONYMIZED"  # Z/D
        if "ReferencedSOPInstanceUIDInFile" in before:
            assert after.ReferencedSOPInstanceUIDInFile == run.uid(
                before.ReferencedSOPInstanceUIDInFile
            )
    # the RT structure set's contour references point at the replaced image UIDs
    rt = read(DATA / "test_files/rtstruct.dcm")
    out = run.dataset(rt)
    assert_deidentified(rt, out)
    before = [e.value for e in walk(rt) if e.tag == 0x00081155]
    after = [e.value for e in walk(out) if e.tag == 0x00081155]
    assert before and after == [run.uid(uid) for uid in before]
    frames = [e.value for e in walk(rt) if e.tag == 0x30060024]  # Referenced Frame of Ref.
    assert frames
    assert [e.value for e in walk(out) if e.tag == 0x30060024] == [run.uid(f) for f in frames]


def test_private_tags_are_removed_at_every_depth(run: Deidentifier) -> None:
    for name in ("priv_SQ.dcm", "nested_priv_SQ.dcm", "CT_small.dcm"):
        ds = read(DATA / "test_files" / name)
        assert private_tags(ds), name
        assert private_tags(run.dataset(ds)) == [], name


def test_marks_are_added_once(run: Deidentifier) -> None:
    ds = read(DATA / "test_files/MR_small.dcm")
    twice = run.dataset(run.dataset(ds))
    assert twice.PatientIdentityRemoved == "YES"
    assert len(twice.DeidentificationMethodCodeSequence) == 1
    assert isinstance(twice.DeidentificationMethod, str)


def test_preamble_is_zeroed(run: Deidentifier) -> None:
    ds = read(DATA / "test_files/CT_small.dcm")
    assert ds.preamble[:4] == b"II*\x00"  # a TIFF header: a dual-personality file
    assert run.dataset(ds).preamble == b"\x00" * 128


def test_identifiable_pixels_are_refused_unless_allowed() -> None:
    ds = read(DATA / "test_files/MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DicomError, match="BurnedInAnnotation") as info:
        deidentify(ds)
    assert str(ds.PatientName) not in str(info.value)
    assert deidentify(ds, allow_identifiable_pixels=True).BurnedInAnnotation == "YES"


# -- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["MR_small.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtstruct.dcm"],
)
def test_deidentify_file_matches_deidentify(name: str, tmp_path: Path) -> None:
    # Prepare: native, encapsulated, big-endian, deflated and preamble-less (the last two are
    # not streamed)
    src = DATA / "test_files" / name
    salt = b"a salt of sixteen bytes or more"
    # Execute
    deidentify_file(src, tmp_path / "out.dcm", uid_salt=salt)
    # Assert
    written = pydicom.dcmread(tmp_path / "out.dcm", force=name in NO_PREAMBLE)
    expected = deidentify(read(src), uid_salt=salt)
    assert written.get("PixelData") == expected.get("PixelData")
    assert written == expected
    assert check(tmp_path / "out.dcm").sop_instance_uid == expected.SOPInstanceUID
    assert not list(tmp_path.glob(".*partial"))
    if name not in NO_PREAMBLE:
        del written.file_meta[0x00020000], expected.file_meta[0x00020000]  # group length
        assert written.file_meta == expected.file_meta
        assert written.preamble == b"\x00" * 128


def _big_file(path: Path, size: int = 50_000_000) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1143.7.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.7.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1143.7"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1143.7.0"
    ds.PatientName = "Doe^Jane"
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 500, 500, size // 500_000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x01\x02" * (size // 2)
    ds.save_as(path, enforce_file_format=True)


def test_deidentify_file_streams_pixel_data(tmp_path: Path) -> None:
    # Prepare: ~50 MB of pixel data
    src, dst = tmp_path / "big.dcm", tmp_path / "out.dcm"
    _big_file(src)
    # Execute
    tracemalloc.start()
    try:
        Deidentifier().file(src, dst)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Assert
    assert peak < 5_000_000, f"peak {peak} bytes: the pixel data was loaded"
    assert dst.stat().st_size > 50_000_000
    info = check(dst)
    assert info.patient_name is None and info.study_uid.startswith("2.25.")
    with open(src, "rb") as a, open(dst, "rb") as b:
        a.seek(-1_000_000, io.SEEK_END)
        b.seek(-1_000_000, io.SEEK_END)
        assert a.read() == b.read()


def test_deidentify_file_refuses_broken_input(tmp_path: Path) -> None:
    src = tmp_path / "cut.dcm"
    data = (DATA / "test_files/MR_small.dcm").read_bytes()
    src.write_bytes(data[:-100])
    with pytest.raises(DicomError, match="truncated"):
        deidentify_file(src, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    with pytest.raises(InvalidInputError, match="destination"):
        shutil.copy(DATA / "test_files/MR_small.dcm", src)
        deidentify_file(src, src)


def test_error_messages_do_not_carry_phi(tmp_path: Path) -> None:
    ds = read(DATA / "test_files/CT_small.dcm")
    folder = tmp_path / str(ds.PatientName)
    folder.mkdir()
    src = folder / "x.dcm"
    src.write_bytes((DATA / "test_files/CT_small.dcm").read_bytes()[:-10])
    with pytest.raises(DicomError) as info:
        deidentify_file(src, tmp_path / "out.dcm")
    for secret in (str(ds.PatientName), str(ds.PatientID), str(folder)):
        assert secret not in str(info.value)
    assert info.value.path == src
    assert re.fullmatch(r"[a-z: ]+", str(info.value))
