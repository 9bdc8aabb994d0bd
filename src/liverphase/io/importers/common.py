"""What every importer shares: CSVs that may carry a BOM, archives unpacked double-nested, linking a
source NIfTI that needs no fix (copying only when links fail), writing a fixed one, and the output
dataset (nnU-Net raw layout + cases.csv + dataset.json)."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from liverphase.atomic import atomic_write_json
from liverphase.errors import DatasetError, InputFileError
from liverphase.io.cases_csv import CASE_ID, CASE_ID_RULE, CASES_CSV, CaseRecord, write_cases_csv
from liverphase.io.importers.registry import ImportSummary
from liverphase.io.nifti import read_image, write_image

T = TypeVar("T")

_BOM = b"\xef\xbb\xbf"


def read_csv(path: Path, summary: ImportSummary) -> list[dict[str, str]]:
    """Rows of a CSV as dicts (header and values stripped); a leading BOM is a named warning."""
    if not path.is_file():
        raise InputFileError("CSV not found", path)
    data = drop_bom(path.read_bytes(), path.name, summary)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # metadata exported on Windows; names only, no numbers lost
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for row in reader:
        rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items() if k})
    if reader.fieldnames is None:
        raise DatasetError("CSV is empty", path)
    return rows


def drop_bom(data: bytes, name: str, summary: ImportSummary) -> bytes:
    """A published text file's bytes without a leading UTF-8 byte-order mark (a named warning)."""
    if not data.startswith(_BOM):
        return data
    # Excel writes one; left in, it glues itself to the first column's name ("\ufeffPatient ID")
    summary.warn(
        "csv_bom",
        "a CSV or label file starts with a UTF-8 byte-order mark; it was skipped",
        name,
        "file",
    )
    return data[len(_BOM) :]


def require_columns(rows: list[dict[str, str]], columns: Sequence[str], path: Path) -> None:
    """A DatasetError naming the CSV when a published column is absent."""
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if rows and missing:
        raise DatasetError(f"missing column(s) {missing}; found {sorted(present)}", path)


def unnest(folder: Path, summary: ImportSummary) -> Path:
    """`X/X/...` (an archive unpacked into a folder of its own name) → the inner X, warned once."""
    while (folder / folder.name).is_dir():
        warn_nested(summary, folder.name)
        folder = folder / folder.name
    return folder


def warn_nested(summary: ImportSummary, where: str) -> None:
    """The named warning for an archive unpacked into a folder of its own (X/X/...)."""
    summary.warn(
        "double_nested_archive",
        "an archive was unpacked double-nested (X/X/...); the inner folder was read",
        where,
        "folder",
    )


def find_root(src: Path, has_layout: Any, summary: ImportSummary, what: str) -> Path:
    """The folder whose contents `has_layout(folder)` recognises as the dataset: SRC itself or
    its only subfolder (two levels at most); X/X nesting is the named double-nesting fault."""
    folder = src
    for _ in range(3):
        if has_layout(folder):
            return folder
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) != 1:
            break
        if subdirs[0].name == folder.name:
            warn_nested(summary, str(subdirs[0].relative_to(src.parent)))
        else:
            summary.notes.append(f"dataset read from {subdirs[0]}")
        folder = subdirs[0]
    raise DatasetError(f"not the {what} layout as published", src)


def progress_iter(items: Sequence[T], desc: str, progress: bool) -> Iterator[T]:
    """Items with a tqdm bar when `progress` is set."""
    yield from tqdm(items, desc=desc, unit="case", disable=not progress or not items)


def header_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine from a NIfTI header (no voxel data read)."""
    try:
        img = nib.load(str(path))
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputFileError(f"unreadable NIfTI ({exc})", path) from None
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine)


def same_header_grid(a: Path, b: Path, tol: float = 1e-3) -> bool:
    """True when two NIfTI headers give the same shape and (within tol) the same affine."""
    sa, aa = header_grid(a)
    sb, ab = header_grid(b)
    return sa == sb and bool(np.allclose(aa, ab, atol=tol, rtol=tol))


def mask_values(path: Path) -> np.ndarray:
    """The distinct values of a mask (reads its voxels)."""
    return np.unique(np.asanyarray(nib.load(str(path)).dataobj))


def check_source_mask(image: Path, mask: Path, case_id: str, summary: ImportSummary) -> str:
    """What a source mask needs to lie on its image's grid as a 0/1 mask: "link" (nothing),
    "fix" (rewrite; the reason is a named warning), or why it is unusable ("grid", "empty")."""
    shape_i, aff_i = header_grid(image)
    shape_m, aff_m = header_grid(mask)
    if shape_i != shape_m:
        return "grid"
    values = set(mask_values(mask).tolist())
    if not values - {0}:
        return "empty"
    same_affine = bool(np.allclose(aff_i, aff_m, atol=1e-3, rtol=1e-3))
    if values <= {0, 1} and same_affine:
        return "link"
    if not same_affine:
        summary.warn(
            "mask_header_differs",
            "a mask's header geometry differs from its image's (same voxel grid); the mask was "
            "rewritten with the image's geometry",
            case_id,
        )
    if not values <= {0, 1}:
        summary.warn(
            "mask_not_binary",
            "a mask holds values other than 0/1; every value > 0 was written as 1",
            case_id,
        )
    return "fix"


def fixed_mask(image: Path, mask: Path) -> sitk.Image:
    """A source mask as 0/1 uint8 on its image's geometry (for `check_source_mask` == "fix")."""
    ref = read_image(image)
    arr = (sitk.GetArrayFromImage(read_image(mask)) > 0).astype(np.uint8)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ref)
    return out


MASK_UNUSABLE = {
    "missing": "no mask file",
    "grid": "the mask's voxel grid differs from its image's",
    "empty": "the mask is empty",
}


class DatasetBuilder:
    """Writes the imported dataset: phase files linked or written, cases.csv, dataset.json."""

    def __init__(self, out: Path, phases: Sequence[str], summary: ImportSummary) -> None:
        self.out = out
        self.phases = list(phases)
        self.summary = summary
        self.records: list[CaseRecord] = []
        self._links_work = True
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        (out / "labelsTr").mkdir(parents=True, exist_ok=True)

    def image_path(self, case_id: str, phase: str) -> Path:
        """Where phase `phase` of a case goes (imagesTr/{case}_{k:04d}.nii.gz)."""
        if not CASE_ID.match(case_id):
            # checked before anything of the case is written: the id names its files
            raise DatasetError(f"case id {case_id!r} must be {CASE_ID_RULE}")
        return self.out / "imagesTr" / f"{case_id}_{self.phases.index(phase):04d}.nii.gz"

    def label_path(self, case_id: str) -> Path:
        """Where a case's mask goes (labelsTr/{case}.nii.gz)."""
        return self.out / "labelsTr" / f"{case_id}.nii.gz"

    def link(self, source: Path, dest: Path) -> None:
        """Link an unchanged source NIfTI into the dataset (copy when links are refused)."""
        if not source.name.endswith(".nii.gz"):
            # the layout names every file .nii.gz; an uncompressed .nii is rewritten, not linked
            self.write(read_image(source), dest)
            return
        if self._links_work:
            try:
                os.symlink(source.resolve(), dest)
                self.summary.linked += 1
                return
            except OSError:
                self._links_work = False
                self.summary.notes.append("symbolic links refused here: unchanged files copied")
        shutil.copy2(source, dest)
        self.summary.copied += 1

    def write(self, image: sitk.Image, dest: Path) -> None:
        """Write a fixed (or converted) image atomically."""
        write_image(image, dest)
        self.summary.written += 1

    def add(self, record: CaseRecord) -> None:
        """Add a case's cases.csv row."""
        self.records.append(record)

    def close(
        self, labels: dict[str, int], class_names: Sequence[str], meta: dict[str, Any]
    ) -> None:
        """Write dataset.json and cases.csv and fill the summary's counts."""
        counts = Counter(r.label or "(unlabeled)" for r in self.records)
        # a published class with no case here would be an output the model can never learn
        classes = [c for c in class_names if counts.get(c)] or list(class_names)
        absent = [c for c in class_names if c not in classes]
        if absent:
            self.summary.notes.append(f"classes with no case, left out of class_names: {absent}")
        doc = {
            "channel_names": {str(k): p for k, p in enumerate(self.phases)},
            "labels": labels,
            "numTraining": len(self.records),
            "file_ending": ".nii.gz",
            "class_names": classes,
            **meta,
        }
        atomic_write_json(self.out / "dataset.json", doc)
        write_cases_csv(self.out / CASES_CSV, self.records)
        self.summary.cases = len(self.records)
        self.summary.classes = {c: counts[c] for c in [*classes, "(unlabeled)"] if counts.get(c)}
        self.summary.phases = list(self.phases)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Ids in natural order (numbers by value, then text)."""
    return sorted(ids, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
