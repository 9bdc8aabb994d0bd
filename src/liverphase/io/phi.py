"""Patient identifiers: the DICOM PS3.15 Basic Application Level Confidentiality Profile attributes
liverphase tracks, the text forms their values take, whether a folder name holds one, a stable
pseudonym, and a header anonymized under the profile (for `predict --anonymize`'s DICOM SEG).

The policy (README, "Identifiers"): report.html, prediction.json, printed lines, run folders and
bundles carry none of the `IDENTIFYING` values of a study's source headers (a DICOM study's case id
derived from a folder name holding one becomes `pseudonym(StudyInstanceUID)`); `--keep-phi` keeps
them. The DICOM SEG keeps its source's patient and study identity (it must attach to its study in a
PACS) but for the patient's name and birth date (`SEG_BLANKED`); `--anonymize` writes it with
`anonymized_headers`: only the source's pixel geometry kept (so every `BASIC_PROFILE` attribute is
removed or replaced by a dummy), new UIDs.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import generate_uid

from liverphase.errors import ConfigError

# Values searched for in outputs and in folder names (each kind by its VR: PN by name forms and
# components, DA/TM/DT by their written forms, the rest as written).
IDENTIFYING: tuple[str, ...] = (
    # people
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "ResponsiblePerson",
    # identifiers, addresses, places and devices
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "AdmissionID",
    "RequestedProcedureID",
    "PerformedProcedureStepID",
    "ScheduledProcedureStepID",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "ResponsibleOrganization",
    "MilitaryRank",
    "BranchOfService",
    # dates and times
    "PatientBirthDate",
    "PatientBirthTime",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "AcquisitionDateTime",
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "LastMenstrualDate",
    # instance identity (action U: replaced by new UIDs)
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "InstanceCreatorUID",
    "IrradiationEventUID",
)

# Removed from an anonymized header but not searched for: demographics, free text and reference
# sequences whose values ("F", "071Y", "PV", "58") are too short or common to search in outputs,
# and that liverphase never copies into them (SeriesDescription names the phase, read not written).
NOT_SEARCHED: tuple[str, ...] = (
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
    "PatientComments",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
    "PatientReligiousPreference",
    "CountryOfResidence",
    "RegionOfResidence",
    "PatientState",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageComments",
    "DerivationDescription",
    "PerformedProcedureStepDescription",
    "AdmittingDiagnosesDescription",
    "RequestAttributesSequence",
    "OtherPatientIDsSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
    "ReferringPhysicianIdentificationSequence",
    "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence",
    "OperatorIdentificationSequence",
    "PatientInsurancePlanCodeSequence",
    "ReferencedPatientPhotoSequence",
    "ReferencedImageSequence",
    "SourceImageSequence",
)

BASIC_PROFILE: tuple[str, ...] = IDENTIFYING + NOT_SEARCHED
"""Every attribute `anonymized_headers` removes or replaces (DICOM keywords)."""

SEG_BLANKED: tuple[str, ...] = ("PatientName", "PatientBirthDate")
"""What the default (identity-keeping) DICOM SEG blanks unless --keep-phi."""

UIDS: tuple[str, ...] = tuple(k for k in IDENTIFYING if k.endswith("UID"))
# all an anonymized header keeps of its source (besides new UIDs and dummies): what a SEG writer
# needs to describe the source's pixels and place them, and the (non-identifying) equipment make
_GEOMETRY: tuple[str, ...] = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "Modality",
    "ImageType",
    "Manufacturer",
    "ManufacturerModelName",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)
MIN_SEARCH_CHARS = 5  # shorter text matches by chance in compressed or base64 output
_PN_PARTS = 3  # family, given, middle: prefixes and suffixes ("Dr", "Jr") identify nobody


def _vr(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is not None:
        return str(dictionary_VR(tag))
    return "PN" if "Name" in keyword else "DA" if "Date" in keyword else "LO"


def _values(value: Any) -> list[str]:
    """The non-empty values of a (multi-valued, backslash-joined) element as text."""
    items = value if isinstance(value, list | tuple) else str(value or "").split("\\")
    return [str(v).strip() for v in items if str(v or "").strip()]


def identifiers(headers: Iterable[Dataset]) -> dict[str, str]:
    """The `IDENTIFYING` values present in `headers` (top level; distinct values joined by "\\")."""
    found: dict[str, list[str]] = {}
    for ds in headers:
        for keyword in IDENTIFYING:
            value = ds.get(keyword)
            items = [str(v) for v in value] if isinstance(value, MultiValue) else str(value or "")
            for text in _values(items):
                if text not in found.setdefault(keyword, []):
                    found[keyword].append(text)
    return {k: "\\".join(v) for k, v in found.items() if v}


def _name_parts(name: str) -> list[list[str]]:
    """Components (family, given, middle) of each representation group of a DICOM PN value."""
    out = []
    for group in name.split("="):
        parts = [p.strip() for p in group.split("^")[:_PN_PARTS] if p.strip()]
        if parts:
            out.append(parts)
    return out


def _date_forms(da: str) -> list[str]:
    y, m, d = da[:4], da[4:6], da[6:8]
    return [da, f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{y}/{m}/{d}"]


def _time_forms(tm: str) -> list[str]:
    out = [tm]
    if re.fullmatch(r"\d{6}(\.\d+)?", tm):
        out.append(f"{tm[:2]}:{tm[2:4]}:{tm[4:6]}")
    return out


def phi_strings(phi: Mapping[str, Any] | None) -> list[str]:
    """The text forms of identifier values worth searching for, longest first.

    Names as written and with their components in either order joined by a space, "_", ", " or
    nothing; dates as YYYYMMDD, YYYY-MM-DD, DD.MM.YYYY and slashed; times also as HH:MM:SS. Forms
    shorter than MIN_SEARCH_CHARS are left out (they match by chance).
    """
    out: set[str] = set()
    for key, value in (phi or {}).items():
        vr = _vr(key)
        for text in _values(value):
            if vr == "PN":
                out.add(text)
                for parts in _name_parts(text):
                    orders = [parts, parts[1:] + parts[:1], parts[:2], parts[1::-1]]
                    for order in orders:
                        for sep in (" ", "_", ", ", "^", ""):
                            out.add(sep.join(order))
            elif vr == "DA" and re.fullmatch(r"\d{8}", text):
                out.update(_date_forms(text))
            elif vr == "TM":
                out.update(_time_forms(text))
            elif vr == "DT":
                out.add(text)
                if re.fullmatch(r"\d{8}.*", text):
                    out.update(_date_forms(text[:8]) + _time_forms(text[8:]))
            else:
                out.add(text)
    return sorted((s for s in out if len(s) >= MIN_SEARCH_CHARS), key=lambda s: (-len(s), s))


def _fold(text: str) -> str:
    """Accents dropped ("Müller" → "Muller"), case kept."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _squash(text: str) -> str:
    return "".join(c for c in _fold(text).lower() if c.isalnum())


def _tokens(text: str) -> set[str]:
    """Words of a name: split at separators, letter/digit changes and camelCase humps."""
    out = set()
    for chunk in re.split(r"[\W_]+", _fold(text)):
        pieces = re.split(r"(?<=[a-z])(?=[A-Z])|(?<=\D)(?=\d)|(?<=\d)(?=\D)", chunk)
        out.update(p.lower() for p in pieces if p)
    return out


def _needles(keyword: str, value: str) -> list[tuple[str, bool]]:
    """(squashed text, whole word only) pairs a name holding `value` would contain."""
    vr = _vr(keyword)
    if vr == "PN":
        out = [(_squash(value), False)]
        for parts in _name_parts(value):
            out += [(_squash(p), len(_squash(p)) < 4) for p in parts if len(_squash(p)) >= 2]
        return out
    digits = re.sub(r"\D", "", value)
    if vr == "DA" and len(digits) == 8:
        return [(digits, False), (digits[6:] + digits[4:6] + digits[:4], False)]
    if vr == "TM":
        return [(digits[:6], False)] if len(digits) >= 6 else []
    if vr == "DT":
        return _needles("StudyDate", digits[:8]) + _needles("StudyTime", digits[8:])
    text = _squash(value)
    return [(text, len(text) < 4)] if len(text) >= 3 else []


def name_holds(name: str, phi: Mapping[str, Any] | None) -> list[str]:
    """The identifier keywords whose value (or a name's component) `name` holds, ignoring case,
    accents and separators; a component or value shorter than 4 characters must be a whole word."""
    squashed, words = _squash(name), _tokens(name)
    held = []
    for keyword, value in (phi or {}).items():
        for text in _values(value):
            if any(
                (n in words) if whole else (n in squashed)
                for n, whole in _needles(keyword, text)
                if n
            ):
                held.append(keyword)
                break
    return sorted(set(held))


def check_phi_options(keep_phi: bool, anonymize: bool) -> None:
    """ConfigError when both are asked: one keeps identifiers, the other removes them."""
    if keep_phi and anonymize:
        raise ConfigError(
            "--keep-phi keeps the identifiers that --anonymize removes from the DICOM SEG: "
            "give one of them"
        )


def pseudonym(key: str) -> str:
    """A stable, identifier-free case id: "study-" and 12 hex digits of the SHA-256 of `key`."""
    return "study-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def anonymized_headers(headers: list[Dataset], dummy_id: str) -> list[Dataset]:
    """Copies of a series' headers under the Basic Profile, for a SEG writer: only `_GEOMETRY` kept
    (so every BASIC_PROFILE attribute and private tag is gone), the patient named and identified
    `dummy_id`, the study attributes a writer requires present but empty, and each UID replaced by
    a new one, the same throughout the copies."""
    new_uids: dict[str, str] = {}
    out = []
    for source in headers:
        ds = Dataset()
        for keyword in _GEOMETRY:
            if keyword in source:
                ds.add(copy.deepcopy(source[keyword]))
        for keyword in UIDS[:4]:  # study, series, instance, frame of reference
            if keyword in source:
                old = str(source[keyword].value)
                setattr(ds, keyword, new_uids.setdefault(old, generate_uid()))
        meta = getattr(source, "file_meta", None)
        if meta is not None:
            ds.file_meta = copy.deepcopy(meta)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        # type 2 attributes SEG writers read from the source: present, empty or a dummy
        ds.PatientName = f"{dummy_id}^"  # the caret: a family name, not a malformed name
        ds.PatientID = dummy_id
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            setattr(ds, keyword, "")
        for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName"):
            setattr(ds, keyword, None)
        out.append(ds)
    return out


def mark_deidentified(ds: Dataset, software: str) -> None:
    """Record on `ds` that `software` de-identified it under the Basic Profile, dates removed."""
    from pydicom.sr.codedict import codes

    code = codes.DCM.BasicApplicationConfidentialityProfile
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
    item.CodeMeaning = code.meaning
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"PS3.15 Basic Profile, {software}"[:64]  # LO: 64 characters
    ds.DeidentificationMethodCodeSequence = [item]
    ds.LongitudinalTemporalInformationModified = "REMOVED"
