"""NIfTI images and the nnU-Net v2 raw dataset layout with its `cases.csv` sidecar (DESIGN.md)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from liverphase.atomic import atomic_path
from liverphase.errors import DatasetError, GeometryError, InputFileError, LiverphaseError
from liverphase.io.cases_csv import (
    CASES_CSV,
    CaseRecord,
    read_cases_csv,
)
from liverphase.io.dataset_json import JsonObject, check_channel_names
from liverphase.io.study import Study, grid_difference, same_grid
from liverphase.phases import DEFAULT_REFERENCE_PHASE


def read_image(path: str | Path) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK-readable) image and check it is whole and finite."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError("file not found", path)
    if path.name.endswith((".nii", ".nii.gz")):
        image, arr = _read_nifti(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputFileError(f"unreadable image ({_first_line(exc)})", path) from None
        arr = sitk.GetArrayViewFromImage(image)
    if image.GetDimension() != 3:
        raise InputFileError(f"expected a 3D image, got {image.GetDimension()}D", path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError("expected a scalar image, got a vector image", path)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputFileError(f"{n} voxel(s) are NaN or infinite", path)
    return image


# nibabel works in RAS, SimpleITK (and DICOM) in LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _read_nifti(path: Path) -> tuple[sitk.Image, np.ndarray]:
    """Read NIfTI with nibabel (SimpleITK silently turns NaN into 0 and reads truncated files)."""
    try:
        nii = nib.load(str(path))
        arr = np.asanyarray(nii.dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError, zlib.error) as exc:
        raise InputFileError(f"truncated or unreadable NIfTI ({_first_line(exc)})", path) from None
    # Trailing length-1 axes (x*y*z*1, as some tools write 3D volumes) are harmless; anything else
    # is not one scalar volume, and must be refused here rather than cached as a constant phase.
    extra = arr.shape[3:]
    if arr.ndim < 3 or any(n != 1 for n in extra):
        what = "a time series or multi-channel image?" if arr.ndim > 3 else "a single slice?"
        raise InputFileError(
            f"expected a 3D image, got {arr.ndim}D of shape {tuple(arr.shape)} ({what})", path
        )
    arr = arr.reshape(arr.shape[:3])
    if arr.dtype.kind not in "buif":
        kind = "RGB" if arr.dtype.names else str(arr.dtype)
        raise InputFileError(
            f"expected scalar voxels, got {kind} (a colour or vector image?)", path
        )
    affine = nii.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 0):
        raise InputFileError("degenerate affine (zero voxel size)", path)
    direction = _RAS_TO_LPS @ affine[:3, :3] / zooms
    u, _, vt = np.linalg.svd(direction)
    ortho = u @ vt
    if np.abs(ortho - direction).max() > 1e-3:
        raise InputFileError("affine has shear; only rigid orientations are supported", path)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))  # big-endian files from other tools
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(z) for z in zooms))
    image.SetDirection(tuple(float(v) for v in ortho.ravel()))
    image.SetOrigin(tuple(float(v) for v in _RAS_TO_LPS @ affine[:3, 3]))
    return image, arr


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:160] if lines else type(exc).__name__


def write_image(image: sitk.Image, path: str | Path) -> None:
    """Write an image atomically (the format follows the file name, e.g. .nii.gz)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(path).endswith(".gz"))


def flip_storage(image: sitk.Image, axes_xyz: Sequence[int]) -> sitk.Image:
    """The same physical image stored with the given index axes reversed (0=x, 1=y, 2=z)."""
    if not axes_xyz:
        return image
    arr = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    size = image.GetSize()
    flip_idx = [0.0, 0.0, 0.0]
    for ax in set(axes_xyz):
        arr = np.flip(arr, axis=2 - ax)
        direction[:, ax] *= -1
        flip_idx[ax] = size[ax] - 1
    # The new first voxel is the old voxel at the far end of each flipped axis.
    origin = image.TransformContinuousIndexToPhysicalPoint(flip_idx)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(tuple(direction.ravel()))
    out.SetOrigin(origin)
    return out


def flip_bbox(
    bbox: Sequence[int], size_xyz: Sequence[int], axes_xyz: Sequence[int]
) -> tuple[int, int, int, int, int, int]:
    """The (z0 y0 x0 z1 y1 x1) box of an image after `flip_storage` with the same axes."""
    lo, hi = list(bbox[:3]), list(bbox[3:])
    for ax in set(axes_xyz):
        i, n = 2 - ax, size_xyz[ax]
        lo[i], hi[i] = n - hi[i], n - lo[i]
    return (*lo, *hi)  # type: ignore[return-value]


class NnUNetDataset:
    """An nnU-Net v2 raw dataset (imagesTr/, labelsTr/, dataset.json) plus cases.csv."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError("dataset folder not found", self.root)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise DatasetError("dataset.json not found: not an nnU-Net raw dataset", meta_path)
        try:
            self.meta: dict[str, Any] = json.loads(
                meta_path.read_bytes().decode("utf-8-sig"), object_pairs_hook=JsonObject
            )
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"invalid JSON ({exc.msg} at line {exc.lineno})", meta_path
            ) from None
        except UnicodeDecodeError:
            raise DatasetError("not UTF-8 text (JSON must be UTF-8)", meta_path) from None
        if not isinstance(self.meta, dict):
            raise DatasetError(
                f"expected a JSON object at the top level, got a {type(self.meta).__name__}",
                meta_path,
            )
        channels = self.meta.get("channel_names")
        if not isinstance(channels, dict) or not channels:
            raise DatasetError("'channel_names' missing or empty", meta_path)
        try:
            order = sorted(channels, key=int)
        except ValueError:
            raise DatasetError("'channel_names' keys must be integers", meta_path) from None
        check_channel_names(channels, order, meta_path)
        self.phases: list[str] = [str(channels[k]) for k in order]
        self.channel_index: dict[str, int] = {str(channels[k]): int(k) for k in order}
        self.file_ending: str = self.meta.get("file_ending", ".nii.gz")
        self.labels: dict[str, int] = dict(self.meta.get("labels", {"background": 0, "lesion": 1}))
        ref = self.meta.get("reference_phase", DEFAULT_REFERENCE_PHASE)
        self.reference_phase: str = (
            ref if ref in self.phases else self.phases[len(self.phases) // 2]
        )
        # Wave 2 keys: "modality" picks the intensity step, "roi" what is cropped (the lesion, or the
        # organ in labelsTr for whole-liver tasks), "missing_phases": "allow" lets a case lack a
        # sequence (an MRI study often has T1W or T2W only), "ordinal": the classes are ordered stages
        self.modality: str = dataset_json_modality(self.meta, meta_path)
        self.roi: str = str(self.meta.get("roi", "lesion"))
        if self.roi not in ("lesion", "organ"):
            raise DatasetError(f"'roi' must be 'lesion' or 'organ', got {self.roi!r}", meta_path)
        missing = self.meta.get("missing_phases", "error")
        if missing not in ("error", "allow"):
            raise DatasetError(
                f"'missing_phases' must be 'error' or 'allow', got {missing!r}", meta_path
            )
        self.allow_missing_phases: bool = missing == "allow"
        self.ordinal: bool = bool(self.meta.get("ordinal", False))
        self.cases: list[CaseRecord] = read_cases_csv(self.root / CASES_CSV)
        self._by_id = {c.case_id: c for c in self.cases}
        names = self.meta.get("class_names")
        self.class_names: list[str] = (
            list(names) if names else sorted({c.label for c in self.cases if c.label})
        )
        unknown = sorted(
            {c.label for c in self.cases if c.label and c.label not in self.class_names}
        )
        if unknown:
            raise DatasetError(
                f"labels {unknown} are not in dataset.json class_names {self.class_names}",
                self.root / CASES_CSV,
            )

    # -- paths -----------------------------------------------------------------------------------
    def case(self, case_id: str) -> CaseRecord:
        """The cases.csv record of a case (DatasetError when unknown)."""
        if case_id not in self._by_id:
            raise DatasetError(f"unknown case {case_id!r}", self.root / CASES_CSV)
        return self._by_id[case_id]

    def image_paths(self, case_id: str) -> dict[str, Path]:
        """Phase name → image path (whether or not the file exists)."""
        return {
            p: self.root / "imagesTr" / f"{case_id}_{self.channel_index[p]:04d}{self.file_ending}"
            for p in self.phases
        }

    def label_path(self, case_id: str) -> Path | None:
        """Path of the lesion mask, or None when the case has none."""
        path = self.root / "labelsTr" / f"{case_id}{self.file_ending}"
        return path if path.is_file() else None

    def case_files(self, case_id: str) -> list[Path]:
        """Every file a case is read from (phases, mask, and cases.csv for label and bbox); a phase
        the dataset allows to be missing is listed only when its file exists."""
        files = list(self.image_paths(case_id).values())
        if self.allow_missing_phases:
            files = [f for f in files if f.is_file()]
        label = self.label_path(case_id)
        return files + ([label] if label else [])

    def present_phases(self, case_id: str) -> list[str]:
        """The phases whose files exist for a case, in dataset order."""
        return [p for p, path in self.image_paths(case_id).items() if path.is_file()]

    def case_reference_phase(self, case_id: str) -> str:
        """The phase a case's mask and bbox live on: the dataset's reference phase, or (when the
        case lacks it and missing phases are allowed) its first present phase in dataset order."""
        present = self.present_phases(case_id)
        if self.reference_phase in present or not self.allow_missing_phases or not present:
            return self.reference_phase
        return present[0]

    @property
    def class_index(self) -> dict[str, int]:
        """Class name → integer target."""
        return {c: i for i, c in enumerate(self.class_names)}

    # -- loading ---------------------------------------------------------------------------------
    def load_study(self, case_id: str, *, require_roi: bool = True) -> Study:
        """Read one case into a Study, checking files, grids and the mask."""
        rec = self.case(case_id)
        phases: dict[str, sitk.Image] = {}
        paths = self.image_paths(case_id)
        for phase, path in paths.items():
            if not path.is_file():
                if self.allow_missing_phases:
                    continue
                raise InputFileError(f"missing phase {phase} of case {case_id!r}", path)
            phases[phase] = read_image(path)
        if not phases:
            raise InputFileError(
                f"case {case_id!r} has none of the phases {self.phases}",
                next(iter(paths.values())),
            )
        reference = self.case_reference_phase(case_id)
        mask = None
        label_path = self.label_path(case_id)
        if label_path is not None:
            mask = read_image(label_path)
            check_mask(mask, phases[reference], label_path, reference)
        elif self.roi == "organ" and require_roi:
            raise DatasetError(
                f"case {case_id!r} has no organ mask in labelsTr/ (dataset.json 'roi': 'organ' "
                "reads the whole liver from it; liverphase ships no liver segmenter yet)",
                self.root / "labelsTr" / f"{case_id}{self.file_ending}",
            )
        elif rec.bbox is None and not rec.phase_boxes and require_roi:
            raise DatasetError(
                f"case {case_id!r} has neither a mask in labelsTr/ nor a bbox in cases.csv",
                self.root / CASES_CSV,
            )
        unknown = sorted(set(rec.phase_boxes) - set(self.phases))
        if unknown:
            raise DatasetError(
                f"case {case_id!r}: bbox column(s) for phase(s) {unknown} not in channel_names "
                f"{self.phases}",
                self.root / CASES_CSV,
            )
        if rec.bbox is not None:
            check_box_in_image(rec.bbox, phases[reference], f"case {case_id!r}: bbox", self.root)
        boxes = {p: b for p, b in rec.phase_boxes.items() if p in phases}
        for p, box in boxes.items():
            check_box_in_image(box, phases[p], f"case {case_id!r}: bbox_{p}", self.root)
        grids = {p: img.GetSize() for p, img in phases.items()}
        return Study(
            case_id=case_id,
            patient_id=rec.patient_id,
            phases=phases,
            mask=mask,
            label=rec.label,
            bbox=rec.bbox,
            reference_phase=reference,
            phase_boxes=boxes,
            metadata={"dataset": str(self.root), "extra": dict(rec.extra), "grids": grids},
            sources={
                "images": [paths[p] for p in phases],
                "mask": [label_path] if label_path else [],
            },
        )

    def problems(self) -> list[LiverphaseError]:
        """Every problem in the dataset (for `inspect`): all cases are checked, nothing stops early."""
        found: list[LiverphaseError] = []
        for rec in self.cases:
            try:
                self.load_study(rec.case_id)
            except LiverphaseError as exc:
                found.append(exc)
        listed = {c.case_id for c in self.cases}
        on_disk = set()
        for path in sorted((self.root / "imagesTr").glob(f"*{self.file_ending}")):
            stem = path.name[: -len(self.file_ending)]
            on_disk.add(stem.rsplit("_", 1)[0])
        for cid in sorted(on_disk - listed):
            found.append(
                DatasetError(
                    f"case {cid!r} has images but no row in cases.csv", self.root / CASES_CSV
                )
            )
        return found


def dataset_json_modality(meta: dict[str, Any], path: Path) -> str:
    """A dataset.json's modality (CT when absent) as the preprocessing's "ct" or "mri"."""
    return _modality(meta.get("modality", "CT"), path)


def _modality(value: object, path: Path) -> str:
    """dataset.json's modality ("CT", "MR"/"MRI", any case) as the preprocessing's "ct" or "mri"."""
    text = str(value).strip().upper()
    if text == "CT":
        return "ct"
    if text in ("MR", "MRI"):
        return "mri"
    raise DatasetError(f"'modality' must be 'CT' or 'MR', got {value!r}", path)


def check_box_in_image(box: Sequence[int], image: sitk.Image, what: str, root: Path) -> None:
    """A voxel box (z0 y0 x0 z1 y1 x1) must overlap its image; one wholly outside would crop
    nothing but padding (a constant input the model would call with full confidence)."""
    size_zyx = image.GetSize()[::-1]
    lo, hi = box[:3], box[3:]
    if any(h <= 0 or lo_ >= n for lo_, h, n in zip(lo, hi, size_zyx, strict=True)):
        raise DatasetError(
            f"{what} {' '.join(str(int(v)) for v in box)} (z0 y0 x0 z1 y1 x1) lies outside the "
            f"image of {size_zyx[0]}x{size_zyx[1]}x{size_zyx[2]} voxels (z y x)",
            root / CASES_CSV,
        )


def check_mask(mask: sitk.Image, reference: sitk.Image, path: Path, reference_phase: str) -> None:
    """A mask must lie on its reference phase's grid, hold integer labels and not be empty."""
    if not same_grid(mask, reference, tol=1e-3):
        raise GeometryError(
            f"mask is not on the grid of the reference phase {reference_phase} (mask vs "
            f"{reference_phase}: {grid_difference(mask, reference, tol=1e-3)})",
            path,
        )
    arr = sitk.GetArrayViewFromImage(mask)
    if not np.any(arr > 0):
        raise InputFileError("mask is empty (no lesion voxel)", path)
    if np.any(arr < 0) or np.any(np.asarray(arr) != np.round(arr)):
        raise InputFileError("mask holds non-integer or negative values", path)
    # Masks are binary (0 background, 1 lesion or organ): segmenting models take the label as a
    # class index, so a 2 or 255 would otherwise fail deep inside training.
    if arr.max() > 1:  # max first: np.unique sorts the whole volume
        labels = np.unique(arr)
        found = [int(v) for v in labels[:10]]
        raise InputFileError(
            f"mask holds labels {found}{' ...' if len(labels) > 10 else ''}; expected 0 "
            "(background) and 1 (lesion or organ): set every foreground voxel to 1",
            path,
        )


def open_dataset(root: str | Path) -> NnUNetDataset:
    """Open and validate an nnU-Net raw dataset with cases.csv."""
    return NnUNetDataset(root)
