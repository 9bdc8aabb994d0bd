"""Lesion segmentation metrics per case (MONAI): Dice, HD95, surface Dice, volume error."""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

from liverphase.atomic import atomic_write_text
from liverphase.errors import DatasetError
from liverphase.evaluate.report import markdown_table
from liverphase.evaluate.stats import mean_ci
from liverphase.io.nifti import NnUNetDataset, read_image
from liverphase.preprocess.roi import lesion_mask_on_reference

SEGMENTATION_FIELDS = (
    "case_id",
    "patient_id",
    "fold",
    "dice",
    "hd95",
    "surface_dice",
    "volume_error",
    "volume_ml",
    "true_volume_ml",
)


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(mask) > 0)
    return torch.stack([~m, m]).unsqueeze(0).float()  # (1, 2, D, H, W)


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float = 2.0
) -> dict[str, float]:
    """Dice, HD95 (mm), surface Dice at `tolerance_mm`, and relative volume error of one lesion mask."""
    p, t = _one_hot(pred), _one_hot(truth)
    spacing = [float(s) for s in spacing_mm]
    dice = float(compute_dice(p, t, include_background=False)[0, 0])
    if p[0, 1].any() and t[0, 1].any():
        with warnings.catch_warnings():
            # MONAI 1.5 passes a deprecated argument to itself (get_mask_edges); not ours to fix
            warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges", FutureWarning)
            hd95 = float(
                compute_hausdorff_distance(
                    p, t, include_background=False, percentile=95, spacing=spacing
                )[0, 0]
            )
            nsd = float(
                compute_surface_dice(
                    p, t, [tolerance_mm], include_background=False, spacing=spacing
                )[0, 0]
            )
    else:
        hd95, nsd = float("nan"), 0.0
    vox = float(np.prod(spacing))
    vol_t = float(t[0, 1].sum()) * vox
    vol_p = float(p[0, 1].sum()) * vox
    return {
        "dice": dice,
        "hd95": hd95,
        "surface_dice": nsd,
        "volume_error": (vol_p - vol_t) / vol_t if vol_t > 0 else float("nan"),
        "volume_ml": vol_p / 1000.0,
        "true_volume_ml": vol_t / 1000.0,
    }


def segmentation_summary(
    items: Sequence[dict[str, Any]], masks: Sequence[np.ndarray | None]
) -> list[dict[str, Any]]:
    """Per-case segmentation metrics for cached items (ground truth and crop spacing from the cache)."""
    rows = []
    for item, pred in zip(items, masks, strict=True):
        if pred is None or not item.get("mask"):
            continue
        truth = np.load(item["mask"])
        meta = json.loads((Path(item["image"]).parent / "meta.json").read_text())
        spacing = meta.get("scale_mm", [1.0, 1.0, 1.0])
        rows.append(
            {
                "case_id": item["case_id"],
                "patient_id": item["patient_id"],
                **segmentation_metrics(pred, truth, spacing),
            }
        )
    return rows


def _around(pred: np.ndarray, truth: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """The bounding box of both masks plus `margin` voxels: Dice, volumes and surface distances
    are the same there as on the whole scan, and the distance transforms stay small."""
    both = np.argwhere((pred > 0) | (truth > 0))
    if not len(both):
        return tuple(slice(0, 1) for _ in pred.shape)
    lo, hi = np.maximum(both.min(0) - margin, 0), both.max(0) + margin + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def study_grid_summary(
    ds: NnUNetDataset,
    items: Sequence[dict[str, Any]],
    lesion_probs: Sequence[np.ndarray | None],
) -> list[dict[str, Any]]:
    """Per-case segmentation metrics on each study's own grid (the reference phase), as `predict`
    writes the mask: crop-grid lesion probability resampled linearly, > 0.5, largest component,
    against the dataset's label map."""
    rows = []
    for item, prob in zip(items, lesion_probs, strict=True):
        label_path = ds.label_path(item["case_id"])
        if prob is None or label_path is None:
            continue
        reference = read_image(ds.image_paths(item["case_id"])[ds.reference_phase])
        meta = json.loads((Path(item["image"]).parent / "meta.json").read_text())
        pred = lesion_mask_on_reference(prob, meta["crop"], reference)
        truth = sitk.GetArrayFromImage(read_image(label_path)) > 0
        if truth.shape != pred.shape:
            raise DatasetError(
                f"label map {truth.shape[::-1]} is not on the grid of the reference phase "
                f"{ds.reference_phase} {pred.shape[::-1]}",
                label_path,
            )
        box = _around(pred, truth)
        spacing = reference.GetSpacing()[::-1]
        rows.append(
            {
                "case_id": item["case_id"],
                "patient_id": item["patient_id"],
                **segmentation_metrics(pred[box], truth[box], spacing),
            }
        )
    return rows


def write_segmentation_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Per-case segmentation metrics as CSV (atomic), the file `compare` reads Dice from."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SEGMENTATION_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SEGMENTATION_FIELDS})
    atomic_write_text(path, buf.getvalue())


def read_segmentation_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """Case id → metrics (floats; NaN where empty) of a segmentation.csv."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [k for k in ("case_id", "dice", "hd95") if k not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"segmentation.csv lacks columns {missing}", path)
        out = {}
        for r in reader:
            out[r["case_id"]] = {
                k: float(r[k]) if r.get(k) not in (None, "") else float("nan")
                for k in SEGMENTATION_FIELDS[3:]
                if k in r
            }
        return out


POOLED_KEYS = ("dice", "hd95", "surface_dice", "volume_error")


def pooled_segmentation(
    rows: Sequence[dict[str, Any]],
    n_boot: int = 1000,
    seed: int = 0,
    keys: Sequence[str] = POOLED_KEYS,
) -> dict[str, Any]:
    """Mean Dice, HD95, surface Dice and volume error over cases (NaN skipped) with patient-bootstrap
    CIs, as `metrics.json` pools them (`dice`, `dice_ci`, ...)."""
    groups = np.array([r["patient_id"] for r in rows])
    out: dict[str, Any] = {}
    for key in keys:
        vals = np.array([r[key] for r in rows], dtype=float)
        ok = np.isfinite(vals)
        if ok.any():
            mean, ci = mean_ci(vals[ok], groups[ok], n_boot, seed)
            out[key], out[f"{key}_ci"] = float(mean), [float(ci[0]), float(ci[1])]
    return out


def _finite(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    vals = np.array([float(r.get(key, "nan") or "nan") for r in rows], dtype=float)
    return vals[np.isfinite(vals)]


def dice_by_size(rows: Sequence[dict[str, Any]], n_bins: int = 3) -> list[dict[str, Any]]:
    """Cases split into `n_bins` equal-count bins of true lesion volume: per bin the volume range,
    case count, mean Dice and surface Dice, median HD95 and median relative volume error."""
    sized = [r for r in rows if np.isfinite(float(r.get("true_volume_ml", "nan") or "nan"))]
    sized.sort(key=lambda r: float(r["true_volume_ml"]))
    stats = (("dice", np.mean), ("surface_dice", np.mean), ("hd95", np.median))
    out = []
    for part in np.array_split(np.arange(len(sized)), min(n_bins, len(sized))):
        group = [sized[i] for i in part]
        vol = _finite(group, "true_volume_ml")
        row: dict[str, Any] = {"volume": f"{vol.min():.2f}–{vol.max():.2f}", "cases": len(group)}
        for key, how in (*stats, ("volume_error", np.median)):
            vals = _finite(group, key)
            row[key] = float(how(vals)) if len(vals) else float("nan")
        out.append(row)
    return out


def _size_table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown_table(
        dice_by_size(rows),
        [
            ("volume", "True volume (ml)", ""),
            ("cases", "Cases", "d"),
            ("dice", "Dice (mean)", ".3f"),
            ("surface_dice", "Surface Dice 2 mm (mean)", ".3f"),
            ("hd95", "HD95 mm (median)", ".2f"),
            ("volume_error", "Volume error (median)", "+.2f"),
        ],
    )


def segmentation_section(
    rows: Sequence[dict[str, Any]], study_rows: Sequence[dict[str, Any]] = ()
) -> str:
    """The report's segmentation block: how it was measured and Dice by lesion size, on the crop
    grid and (when given) on the studies' own grids."""
    text = (
        "## Segmentation\n\nPer test case (`segmentation.csv`), on the crop grid the model sees "
        "(the lesion box plus margin, resampled to the profile's input), against the cached "
        "ground-truth mask on that grid; distances in mm. Volume error is (predicted − true) / true. "
        "By tertile of true lesion volume:\n\n" + _size_table(rows)
    )
    if study_rows:
        dice, hd95 = _finite(study_rows, "dice"), _finite(study_rows, "hd95")
        text += (
            "\n\n### On the study grid\n\nThe same predictions as `predict` writes them "
            "(`segmentation_study.csv`): the crop-grid lesion probability resampled linearly onto "
            "the reference phase's own grid, thresholded at 0.5, largest component kept, against "
            f"the dataset's label map. Mean Dice {dice.mean() if len(dice) else float('nan'):.3f}, "
            f"mean HD95 {hd95.mean() if len(hd95) else float('nan'):.2f} mm (CIs in the pooled "
            "table). By tertile of "
            "true lesion volume:\n\n" + _size_table(study_rows)
        )
    return text


def evaluate_segmentation(
    out: str | Path,
    ds: NnUNetDataset,
    items: Sequence[dict[str, Any]],
    lesion_probs: Sequence[np.ndarray | None],
    folds: Sequence[int | None] | None = None,
    n_boot: int = 1000,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Per-case metrics on both grids into OUT/segmentation.csv and OUT/segmentation_study.csv;
    returns the pooled values for metrics.json (`dice`, ..., `study_dice`, ...) and the report
    section, or (None, []) when no item has a lesion probability and a mask."""
    masks = [None if p is None else (p > 0.5).astype(np.uint8) for p in lesion_probs]
    crop_rows = segmentation_summary(items, masks)
    study_rows = study_grid_summary(ds, items, lesion_probs)
    fold_of = {it["case_id"]: f for it, f in zip(items, folds or [None] * len(items), strict=True)}
    for row in (*crop_rows, *study_rows):
        row["fold"] = fold_of[row["case_id"]]
    if not crop_rows:
        return None, []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_segmentation_csv(out / "segmentation.csv", crop_rows)
    pooled = pooled_segmentation(crop_rows, n_boot)
    if study_rows:
        write_segmentation_csv(out / "segmentation_study.csv", study_rows)
        study = pooled_segmentation(study_rows, n_boot)
        pooled.update({f"study_{k}": v for k, v in study.items()})
    return pooled, [segmentation_section(crop_rows, study_rows)]
