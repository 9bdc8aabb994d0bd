"""DICOM files and series: header scan, grouping checks, slice sorting and pixel loading.

Slices are sorted by their position along the slice normal (row × column cosines of
ImageOrientationPatient), never by InstanceNumber; stored values go through RescaleSlope and
RescaleIntercept. Files that are not DICOM images (DICOMDIR, SEG, RTSTRUCT, SR, localizers, stray
non-DICOM files) are skipped quietly; a damaged or cut DICOM file is an error naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from liverphase.errors import DicomError, LiverphaseError

_NON_IMAGE = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE", "RTRECORD", "DOC"}
_DICOMDIR = "1.2.840.10008.1.3.10"
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_IMAGE_KEYS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")


@dataclass
class DicomSlice:
    """One image file: its path and header (pixel data not read)."""

    path: Path
    ds: Any  # pydicom header (no pixel data)
    forced: bool

    def get(self, key: str, default: Any = None) -> Any:
        """A header value, `default` when absent or empty."""
        value = self.ds.get(key, default)
        return default if value is None or value == "" else value

    @property
    def position(self) -> np.ndarray:
        """ImagePositionPatient (mm)."""
        return np.array([float(v) for v in self.ds.ImagePositionPatient])

    @property
    def orientation(self) -> np.ndarray:
        """ImageOrientationPatient: row then column direction cosines."""
        return np.array([float(v) for v in self.ds.ImageOrientationPatient])


@dataclass
class DicomSeries:
    """The slices of one SeriesInstanceUID and the phase given to it."""

    uid: str
    slices: list[DicomSlice]
    phase: str | None = None
    assigned_by: str | None = None
    note: str = ""
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    # set by dicom_phases when the series repeats slice positions it cannot split into acquisitions
    split_error: LiverphaseError | None = None

    @property
    def first(self) -> DicomSlice:
        """The first slice (in position order once checked)."""
        return self.slices[0]

    @property
    def description(self) -> str:
        """SeriesDescription, '' when absent."""
        return str(self.first.get("SeriesDescription", ""))

    @property
    def number(self) -> int:
        """SeriesNumber (a large number when absent, so such series sort last)."""
        value = self.first.get("SeriesNumber")
        return int(value) if value is not None else 10**9

    @cached_property
    def time(self) -> float | None:
        """Earliest acquisition time of the slices in seconds (date included), or None."""
        times = [t for t in (_acq_seconds(s) for s in self.slices) if t is not None]
        return min(times) if times else None

    @property
    def label(self) -> str:
        """How messages name the series."""
        return f"series {self.description or '(no description)'!r} (#{self.first.get('SeriesNumber', '?')})"

    @property
    def folder(self) -> Path:
        """The folder holding the series' files (their common parent)."""
        parents = {s.path.parent for s in self.slices}
        return parents.pop() if len(parents) == 1 else Path(*_common(self.slices))


def _common(slices: list[DicomSlice]) -> tuple[str, ...]:
    parts = [s.path.parent.parts for s in slices]
    out = []
    for items in zip(*parts, strict=False):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return tuple(out)


class Problems:
    """Raise the first problem (reading) or collect them all (scanning)."""

    def __init__(self, strict: bool) -> None:
        self.strict, self.items = strict, []

    def add(self, error: LiverphaseError) -> None:
        """Raise `error` when strict, else keep it."""
        if self.strict:
            raise error
        self.items.append(error)


def _tm_seconds(tm: str) -> float | None:
    digits = re.match(r"^(\d{2})(\d{2})?(\d{2})?(\.\d+)?", str(tm).strip())
    if not digits:
        return None
    h, m, s, frac = digits.groups()
    return int(h) * 3600 + int(m or 0) * 60 + int(s or 0) + float(frac or 0)


def dicom_seconds(s: DicomSlice, time_key: str, date_key: str) -> float | None:
    """A TM element of a slice in seconds, its date (else StudyDate) included; None if absent."""
    tm = s.get(time_key)
    secs = _tm_seconds(tm) if tm is not None else None
    if secs is None:
        return None
    date = s.get(date_key) or s.get("StudyDate")
    try:
        day = dt.datetime.strptime(str(date)[:8], "%Y%m%d").toordinal() if date else 0
    except ValueError:
        day = 0
    return day * 86400.0 + secs


def _acq_seconds(s: DicomSlice) -> float | None:
    for tkey, dkey in (
        ("AcquisitionTime", "AcquisitionDate"),
        ("SeriesTime", "SeriesDate"),
        ("ContentTime", "ContentDate"),
    ):
        secs = dicom_seconds(s, tkey, dkey)
        if secs is not None:
            return secs
    return None


def _read_raw(path: Path) -> Any:
    """A DICOM dataset without preamble and meta header (still DICOM), or None."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not a DICOM file"
        return None
    return ds if "SOPInstanceUID" in ds and "Rows" in ds else None


def read_header(path: Path) -> tuple[DicomSlice | None, str | None]:
    """(slice, None) for an image, (None, reason) for a file to skip; DicomError if broken."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        forced = False
    except InvalidDicomError:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM":
            raise DicomError("damaged DICOM header", path) from None
        ds, forced = _read_raw(path), True
        if ds is None:
            if path.suffix.lower() in _DICOM_SUFFIXES:
                raise DicomError(
                    "not a readable DICOM file despite its name (truncated?)", path
                ) from None
            return None, "not DICOM"
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on truncated data
        msg = f"unreadable or truncated DICOM file ({type(exc).__name__}: {exc})"
        raise DicomError(msg[:200], path) from None
    meta_class = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if meta_class == _DICOMDIR or "DirectoryRecordSequence" in ds:
        return None, "DICOMDIR"
    modality = str(ds.get("Modality", "")).upper()
    if modality in _NON_IMAGE:
        return None, f"{modality} object"
    # pydicom stops quietly at the end of a cut file: an image whose header lacks what every
    # image has was truncated
    lacking = [k for k in _IMAGE_KEYS if k not in ds]
    image_class = meta_class is None or "Image Storage" in pydicom.uid.UID(meta_class).name
    if lacking and image_class and not forced:
        raise DicomError(f"incomplete header, lacks {', '.join(lacking)} (truncated file?)", path)
    if "Rows" not in ds or "Columns" not in ds:
        return None, "no image"
    if any(str(t).upper() == "LOCALIZER" for t in ds.get("ImageType", [])):
        return None, "localizer"
    return DicomSlice(path, ds, forced), None


def scan_files(folder: Path, problems: Problems) -> tuple[list[DicomSlice], dict[str, int]]:
    """Headers of every DICOM image under `folder` (any nesting) and counts of skipped files."""
    if not folder.is_dir():
        problems.add(DicomError("DICOM folder not found", folder))
        return [], {}
    slices, skipped = [], defaultdict(int)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            s, reason = read_header(path)
        except DicomError as exc:
            problems.add(exc)
            continue
        if s is None:
            skipped[reason or "other"] += 1
        else:
            slices.append(s)
    if not slices and not problems.items:
        problems.add(DicomError("no DICOM image files found", folder))
    return slices, dict(skipped)


def check_series(series: DicomSeries, problems: Problems) -> bool:
    """Validate geometry and sort slices along the normal; False when the series is unusable."""
    if series.split_error is not None:
        # reported once even when `_assign` already reported it for a study naming no phase
        if all(e is not series.split_error for e in problems.items):
            problems.add(series.split_error)
        return False
    bad = len(problems.items)
    for s in series.slices:
        if "ImagePositionPatient" not in s.ds or "ImageOrientationPatient" not in s.ds:
            problems.add(
                DicomError(
                    f"{series.label}: slice lacks ImagePositionPatient/ImageOrientationPatient",
                    s.path,
                )
            )
            return False
        if int(s.get("NumberOfFrames", 1) or 1) > 1:
            problems.add(
                DicomError(f"{series.label}: multi-frame images are not supported", s.path)
            )
            return False
    iop = series.first.orientation
    for s in series.slices[1:]:
        if np.abs(s.orientation - iop).max() > 1e-4:
            problems.add(
                DicomError(
                    f"{series.label}: inconsistent ImageOrientationPatient within the series",
                    s.path,
                )
            )
            return False
        for key in ("Rows", "Columns", "PixelSpacing"):
            if s.get(key) != series.first.get(key):
                problems.add(DicomError(f"{series.label}: {key} differs between slices", s.path))
                return False
    normal = np.cross(iop[:3], iop[3:])
    series.normal = normal
    series.slices.sort(key=lambda s: float(s.position @ normal))
    d = np.array([float(s.position @ normal) for s in series.slices])
    if len(d) > 1:
        diffs = np.diff(d)
        for k in np.nonzero(diffs < 1e-3)[0]:
            a, b = series.slices[k].path, series.slices[k + 1].path
            problems.add(
                DicomError(
                    f"{series.label}: duplicate slice position {d[k]:.3f} mm ({a.name} and {b.name})",
                    b,
                )
            )
        if (diffs >= 1e-3).all():
            med = float(np.median(diffs))
            for k in np.nonzero(diffs > 1.5 * med)[0]:
                problems.add(
                    DicomError(
                        f"{series.label}: missing slice(s): gap of {diffs[k]:.2f} mm after position "
                        f"{d[k]:.2f} mm where slices are {med:.2f} mm apart",
                        series.folder,
                    )
                )
            offsets = np.array([s.position - (s.position @ normal) * normal for s in series.slices])
            if np.abs(offsets - offsets[0]).max() > 0.05 * max(med, 1.0):
                problems.add(
                    DicomError(
                        f"{series.label}: slices are not stacked along the slice normal (gantry tilt?)",
                        series.folder,
                    )
                )
    return len(problems.items) == bad


def _rescale(planes: list[np.ndarray], slopes: list[float], intercepts: list[float]) -> np.ndarray:
    """Stack slices applying each one's rescale: int16 when exact and in range, else float32."""
    inter = np.array(intercepts)[:, None, None]
    if all(v == 1 for v in slopes) and all(float(v).is_integer() for v in intercepts):
        stack = np.stack(planes).astype(np.int32) + inter.astype(np.int32)
        if stack.min() >= -32768 and stack.max() <= 32767:
            return stack.astype(np.int16)
        return stack.astype(np.float32)
    slope = np.array(slopes, dtype=np.float32)[:, None, None]
    return np.stack(planes).astype(np.float32) * slope + inter.astype(np.float32)


def load_volume(series: DicomSeries) -> sitk.Image:
    """Pixel data of a checked series as one image, rescale applied (int16 when exact)."""
    planes, slopes, intercepts = [], [], []
    for s in series.slices:
        try:
            ds = pydicom.dcmread(s.path, force=s.forced)
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            raise DicomError(
                f"cannot read pixel data ({type(exc).__name__}: {exc})"[:240], s.path
            ) from None
        if arr.ndim != 2:
            raise DicomError(
                f"expected a single-frame grey image, got pixel shape {arr.shape}", s.path
            )
        planes.append(arr)
        slopes.append(float(ds.get("RescaleSlope", 1) or 1))
        intercepts.append(float(ds.get("RescaleIntercept", 0) or 0))
    image = sitk.GetImageFromArray(_rescale(planes, slopes, intercepts))
    first = series.first
    row_sp, col_sp = (float(v) for v in first.ds.PixelSpacing)
    d = [float(s.position @ series.normal) for s in series.slices]
    if len(d) > 1:
        dz = (d[-1] - d[0]) / (len(d) - 1)
    else:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    iop = first.orientation
    image.SetSpacing((col_sp, row_sp, dz))
    image.SetOrigin(tuple(first.position))
    image.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], series.normal]).ravel()))
    return image
