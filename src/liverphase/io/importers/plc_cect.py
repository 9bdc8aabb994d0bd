"""PLC-CECT (ljwa2323/PLC_CECT): four-phase CT of primary liver cancer (HCC, ICC, CHCC) and controls.

patient_data.csv has one row per phase (P, C1, C2, C3 → NC, ART, PV, DL). The published volumes
claim 1×1×1 mm voxels at origin 0 and hold uint8 already windowed to [-200, 200] HU: every volume
is therefore rewritten (in-plane spacing 0.78125 mm, intensities mapped back to HU), each fix a
named warning. `roi="lesion"` (default) puts the PV lesion mask in labelsTr and leaves out the CN
controls, which have none; `roi="organ"` puts the PV liver mask there and keeps the controls.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from liverphase.errors import ConfigError, LiverphaseError
from liverphase.io.cases_csv import CaseRecord
from liverphase.io.importers.common import (
    DatasetBuilder,
    find_root,
    progress_iter,
    read_csv,
    require_columns,
    warn_nested,
)
from liverphase.io.importers.registry import ImportSummary, register_importer
from liverphase.io.nifti import check_mask, read_image

PHASES = {"P": "NC", "C1": "ART", "C2": "PV", "C3": "DL"}
CLASSES = ("HCC", "ICC", "CHCC", "CN")
COLUMNS = ("patient_id", "age", "gender", "phase", "cancer_type", "ct_path", "mask_path")
#: In-plane voxel size the dataset's users report (the headers say 1 mm) [DATASETS.md, third party].
INPLANE_MM = 0.78125
#: The window the uint8 values were cut from.
WINDOW_HU = (-200.0, 200.0)
_NA = {"", "NA", "N/A", "NaN", "nan", "None"}


def _layout(folder: Path) -> bool:
    return (folder / "patient_data.csv").is_file()


def _resolve(root: Path, rel: str, summary: ImportSummary) -> Path:
    """A CSV path under the root; `ct_files/ct_files/x` (archive unpacked double-nested) too."""
    path = root / rel
    parts = Path(rel).parts
    if not path.exists() and len(parts) > 1 and (root / parts[0] / parts[0]).is_dir():
        warn_nested(summary, f"{parts[0]}/{parts[0]}")
        path = root / parts[0] / parts[0] / Path(*parts[1:])
    return path


def _fix_geometry(image: sitk.Image, case_id: str, summary: ImportSummary) -> sitk.Image:
    """Rewrite the claimed 1×1×1 mm / origin 0 geometry (in place) when the header has it."""
    spacing = np.array(image.GetSpacing())
    if np.allclose(spacing, 1.0) and np.allclose(image.GetOrigin(), 0.0):
        summary.warn(
            "false_spacing",
            f"volumes claim 1x1x1 mm voxels at origin 0: in-plane spacing rewritten to "
            f"{INPLANE_MM} mm (the value reported for the dataset, not checkable here); the true "
            "slice spacing differs per phase and is not published, so it stays 1 mm (lengths "
            "and volumes along z are wrong) and phases are aligned by their first voxel at "
            "origin 0 until registration",
            case_id,
        )
        image.SetSpacing((INPLANE_MM, INPLANE_MM, float(spacing[2])))
    return image


def _to_hu(image: sitk.Image, case_id: str, summary: ImportSummary) -> sitk.Image:
    """uint8 0..255 → HU -200..200 (linear, the inverse of the window); anything else unchanged."""
    if image.GetPixelID() != sitk.sitkUInt8:
        return image
    lo, hi = WINDOW_HU
    summary.warn(
        "windowed_uint8",
        f"intensities are uint8 already windowed to [{lo:g}, {hi:g}] HU: mapped linearly "
        f"0..255 → {lo:g}..{hi:g} HU and stored as int16 (steps of {(hi - lo) / 255:.2f} HU); "
        f"what lay outside the window (fat, air, bone, calcification) was clipped at the source "
        "and cannot be recovered: use windows inside [-200, 200] HU",
        case_id,
    )
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(np.round(lo + arr * (hi - lo) / 255.0).astype(np.int16))
    out.CopyInformation(image)
    return out


@register_importer("plc-cect")
def import_plc_cect(
    src: Path, out: Path, summary: ImportSummary, progress: bool, *, roi: str = "lesion"
) -> None:
    """PLC-CECT: four-phase CT, HCC/ICC/CHCC (+ CN controls), fixed spacing and HU."""
    if roi not in ("lesion", "organ"):
        raise ConfigError(f"roi must be 'lesion' or 'organ', got {roi!r}", "roi")
    root = find_root(src, _layout, summary, "PLC-CECT (patient_data.csv)")
    csv_path = root / "patient_data.csv"
    rows = read_csv(csv_path, summary)
    mask_col = "mask_path" if roi == "lesion" else "liver_mask_path"
    require_columns(rows, (*COLUMNS, mask_col), csv_path)
    by_patient: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    for row in rows:
        phase = PHASES.get(row["phase"])
        if phase is None:
            summary.warn(
                "unknown_phase", "a row's phase is not P/C1/C2/C3; skipped", row["patient_id"]
            )
            continue
        by_patient[row["patient_id"]][phase] = row
    builder = DatasetBuilder(out, list(PHASES.values()), summary)
    missing_any = False
    for pid in progress_iter(sorted(by_patient), "plc-cect", progress):
        try:
            missing_any |= _import_case(root, pid, by_patient[pid], mask_col, builder, summary)
        except LiverphaseError as exc:
            summary.problems.append(f"{pid}: {exc}; case left out")
    if roi == "lesion":
        summary.notes.append("lesion masks of NC, ART and DL (per phase) were not used")
    summary.notes.append("no official split: use patient-level cross-validation")
    meta = {"reference_phase": "PV", "modality": "CT", "roi": roi, "source": "PLC-CECT"}
    if missing_any:
        meta["missing_phases"] = "allow"
    labels = {"background": 0, "lesion": 1} if roi == "lesion" else {"background": 0, "liver": 1}
    # the lesion task has no controls (they were left out with a warning)
    builder.close(labels, CLASSES if roi == "organ" else CLASSES[:3], meta)


def _import_case(
    root: Path,
    pid: str,
    rows: dict[str, dict[str, str]],
    mask_col: str,
    builder: DatasetBuilder,
    summary: ImportSummary,
) -> bool:
    """Write one patient's phases and PV mask; True when a phase is missing."""
    label = rows.get("PV", next(iter(rows.values())))["cancer_type"]
    if len({r["cancer_type"] for r in rows.values()}) > 1:
        summary.warn(
            "label_conflict", "phase rows disagree on cancer_type; the PV row's was kept", pid
        )
    if label not in CLASSES:
        summary.warn("unknown_class", f"cancer_type not in {list(CLASSES)}; case left out", pid)
        return False
    if "PV" not in rows:
        summary.warn(
            "missing_reference_phase", "no C2 (PV) row: the mask's phase; case left out", pid
        )
        return False
    mask_rel = rows["PV"].get(mask_col, "")
    if mask_rel in _NA:
        if mask_col == "mask_path" and label == "CN":
            summary.warn(
                "controls_without_lesion_mask",
                "CN controls have no lesion mask (mask_path NA), so a lesion-crop model cannot "
                "read them; left out (import with roi=organ to keep them, cropped on the liver)",
                pid,
            )
        else:
            summary.warn("missing_mask", f"{mask_col} is NA on the PV row; case left out", pid)
        return False
    ref = _fix_geometry(read_image(_resolve(root, rows["PV"]["ct_path"], summary)), pid, summary)
    images = {"PV": ref}
    for phase, row in rows.items():
        if phase != "PV":
            path = _resolve(root, row["ct_path"], summary)
            images[phase] = _fix_geometry(read_image(path), pid, summary)
    mask_path = _resolve(root, mask_rel, summary)
    mask = read_image(mask_path)
    arr = sitk.GetArrayFromImage(mask)
    if np.any((arr != 0) & (arr != 1)):
        summary.warn("mask_not_binary", "a mask holds values other than 0/1; > 0 written as 1", pid)
    fixed = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    fixed.CopyInformation(_fix_geometry(mask, pid, summary))
    check_mask(fixed, ref, mask_path, "PV")  # same grid as the PV volume, not empty
    for phase, image in images.items():
        builder.write(_to_hu(image, pid, summary), builder.image_path(pid, phase))
    builder.write(fixed, builder.label_path(pid))
    missing = [p for p in PHASES.values() if p not in images]
    if missing:
        summary.warn("missing_phase", "a phase row is absent; recorded as a missing phase", pid)
    row = rows["PV"]
    sex = {"male": "M", "female": "F"}.get(row["gender"].lower(), row["gender"])
    builder.add(CaseRecord(pid, pid, label, None, {"age": row["age"], "sex": sex}))
    return bool(missing)
