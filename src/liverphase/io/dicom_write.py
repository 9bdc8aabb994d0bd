"""Write a SimpleITK volume as a DICOM series (one single-frame file per slice, pydicom).

CT Image Storage (or MR Image Storage), explicit VR little endian, with the geometry DICOM readers
need: ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing, SliceThickness.
Stored values are round((value - intercept) / slope); they are kept unsigned (PixelRepresentation
0) when none is negative, so intercept -1024 with unsigned storage exercises a reader's rescale.
UIDs derive from the study UID and series description, so a seed gives the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


def ds_str(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) that reads back to `value` when possible."""
    for decimals in range(6, -1, -1):
        text = f"{value:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text in ("-0", ""):
            text = "0"
        if len(text) <= 16:
            return text
    return f"{value:.9e}"[:16]


def dicom_time(seconds: float) -> str:
    """Seconds since midnight as a DICOM TM string HHMMSS.ffffff."""
    seconds = seconds % 86400
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"


def uid_from(*parts: object) -> str:
    """A deterministic UID (2.25 form: the decimal of a SHA-256-derived 128-bit number) from text parts.

    pydicom's generate_uid(prefix=None) ignores entropy_srcs and returns a random UUID, so the
    2.25 form is built here directly: same parts, same UID, on every run.
    """
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def write_dicom_series(
    image: sitk.Image,
    folder: str | Path,
    *,
    series_description: str,
    patient_id: str,
    patient_name: str,
    birth_date: str,
    study_uid: str,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    acquisition_time: str = "120000.000000",
    series_number: int = 1,
    modality: str = "CT",
    rescale: tuple[float, float] = (1.0, 0.0),
    shuffle_instance_numbers: bool = False,
    rng: np.random.Generator | None = None,
    study_date: str = "20200101",
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write `image` as one file per slice into `folder`; return the paths in slice order.

    `rescale` is (slope, intercept). With `shuffle_instance_numbers` InstanceNumber is a random
    permutation (readers must sort by position). With an `rng` and no `file_names`, files get
    random names. FrameOfReferenceUID defaults to one derived from the study UID, so every series
    of a study shares it.
    """
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("expected a 3D scalar image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept = rescale
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    stored = np.rint((arr - intercept) / slope)
    if stored.min() >= 0 and stored.max() <= 65535:
        pixels, signed = stored.astype(np.uint16), False
    elif stored.min() >= -32768 and stored.max() <= 32767:
        pixels, signed = stored.astype(np.int16), True
    else:
        raise ValueError(f"values do not fit 16 bits with slope {slope}, intercept {intercept}")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    if abs(abs(normal @ direction[:, 2]) - 1) > 1e-4:
        raise ValueError("the slice axis is not perpendicular to the rows and columns")
    n = arr.shape[0]
    series_uid = series_uid or uid_from(study_uid, series_number, series_description)
    frame_uid = frame_of_reference_uid or uid_from(study_uid, "frame")
    instances = list(range(1, n + 1))
    if shuffle_instance_numbers:
        instances = [int(v) + 1 for v in (rng or np.random.default_rng(0)).permutation(n)]
    names = list(file_names) if file_names is not None else _names(n, rng)
    sx, sy, sz = image.GetSpacing()
    iop = [ds_str(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds = _base_dataset(modality)
    _set(
        ds,
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=series_uid,
        FrameOfReferenceUID=frame_uid,
        Modality=modality,
        PatientName=patient_name,
        PatientID=patient_id,
        PatientBirthDate=birth_date,
        PatientSex="O",
        StudyDate=study_date,
        SeriesDate=study_date,
        AcquisitionDate=study_date,
        ContentDate=study_date,
        StudyTime=acquisition_time,
        SeriesTime=acquisition_time,
        AcquisitionTime=acquisition_time,
        ContentTime=acquisition_time,
        StudyID="1",
        AccessionNumber="",
        ReferringPhysicianName="",
        InstitutionName="SYNTH HOSPITAL",
        Manufacturer="liverphase synth",
        SeriesNumber=series_number,
        AcquisitionNumber=1,
        SeriesDescription=series_description,
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        PositionReferenceIndicator="",
        ImageOrientationPatient=iop,
        PixelSpacing=[ds_str(sy), ds_str(sx)],
        SliceThickness=ds_str(sz),
        SpacingBetweenSlices=ds_str(sz),
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        Rows=arr.shape[1],
        Columns=arr.shape[2],
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        PixelRepresentation=int(signed),
    )
    if modality == "CT" or rescale != (1.0, 0.0):
        ds.RescaleIntercept = ds_str(intercept)
        ds.RescaleSlope = ds_str(slope)
        ds.RescaleType = "HU" if modality == "CT" else "US"
    if modality == "CT":
        _set(ds, KVP="120", WindowCenter="50", WindowWidth="400")
    paths = []
    for k in range(n):  # one dataset, only the per-slice elements change
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        sop_uid = uid_from(series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        _set(
            ds,
            SOPInstanceUID=sop_uid,
            InstanceNumber=instances[k],
            ImagePositionPatient=[ds_str(v) for v in position],
            SliceLocation=ds_str(float(normal @ position)),
            PixelData=np.ascontiguousarray(pixels[k]).tobytes(),
        )
        path = folder / names[k]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _set(ds: Dataset, **tags: object) -> None:
    for keyword, value in tags.items():
        setattr(ds, keyword, value)


def _base_dataset(modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _names(n: int, rng: np.random.Generator | None) -> list[str]:
    if rng is None:
        return [f"IM{k + 1:05d}.dcm" for k in range(n)]
    suffix = str(rng.choice([".dcm", "", ".IMA"]))
    names: set[str] = set()
    out = []
    while len(out) < n:
        name = f"{int(rng.integers(16**10)):010x}{suffix}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out
