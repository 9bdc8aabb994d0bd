"""Per-slice predictions of a slice-wise model (cirrhosis_msa): slice_predictions.csv and its accuracy.

The seed study of cirrhosis staging trains and scores 2D slices, every slice carrying its patient's
stage, so its accuracy is per slice. A slice-wise model here predicts one stage per scan (attention
pooling over slices), and each slice's own logits come out beside it; scoring those slices the
seed's way, restricted to slices that hold the organ (the cached mask on the crop grid), gives a
figure comparable with slice-level numbers in the literature, next to the per-scan one.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_path
from liverphase.evaluate.ordinal import ordinal_metrics, ordinal_table_markdown, slice_accuracy
from liverphase.evaluate.predictions import Predictions

SLICE_CSV = "slice_predictions.csv"


def slice_rows(
    items: Mapping[str, Mapping[str, Any]],
    slice_probs: Mapping[str, np.ndarray],
    folds: Mapping[str, int],
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per slice of every case: ids, fold, slice index, organ voxels, truth, prediction."""
    rows = []
    for case_id, probs in slice_probs.items():
        item = items[case_id]
        voxels = _organ_voxels(item.get("mask"), probs.shape[0])
        for s, p in enumerate(np.asarray(probs)):
            rows.append(
                {
                    "case_id": case_id,
                    "patient_id": item["patient_id"],
                    "fold": folds[case_id],
                    "slice": s,
                    "organ_voxels": int(voxels[s]),
                    "label": item["label"],
                    "pred": class_names[int(np.argmax(p))],
                    **{f"prob_{c}": f"{float(v):.6f}" for c, v in zip(class_names, p, strict=True)},
                }
            )
    return rows


def _organ_voxels(mask_path: str | None, depth: int) -> np.ndarray:
    """Mask voxels per slice of the crop (every slice counts when the case has no cached mask)."""
    if not mask_path:
        return np.ones(depth, np.int64)
    mask = np.load(mask_path, mmap_mode="r", allow_pickle=False)
    return np.asarray(mask > 0).reshape(mask.shape[0], -1).sum(1)


def write_slice_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the slice rows atomically (nothing when there are none)."""
    if not rows:
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_slice_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a slice_predictions.csv ([] when the run has none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def organ_slices(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The slices that hold the organ (what a 2D slice classifier would have been given)."""
    return [r for r in rows if int(r["organ_voxels"]) > 0]


def slice_accuracy_of_rows(
    rows: Sequence[Mapping[str, Any]], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-slice accuracy over the organ slices of slice_predictions.csv rows, patient CI."""
    by_case: dict[str, list[Mapping[str, Any]]] = {}
    for r in organ_slices(rows):
        by_case.setdefault(str(r["case_id"]), []).append(r)
    cases = list(by_case)
    # every slice is scored against its scan's label: 1 where the slice's prediction equals it
    hits = [np.array([r["pred"] == r["label"] for r in by_case[c]], np.int64) for c in cases]
    return slice_accuracy(
        hits,
        np.ones(len(cases), np.int64),
        [by_case[c][0]["patient_id"] for c in cases],
        n_boot,
        seed,
    )


def staging_results(
    out: Path,
    ordinal: bool,
    items: Mapping[str, Mapping[str, Any]],
    slice_probs: Mapping[str, np.ndarray],
    folds: Mapping[str, int],
    preds: Predictions,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], list[str]]:
    """Write slice_predictions.csv (slice-wise models); return metrics.json's `ordinal` (ordered
    classes) and `slices` blocks and the report's staging section."""
    rows = slice_rows(items, slice_probs, folds, preds.class_names) if slice_probs else []
    write_slice_csv(out / SLICE_CSV, rows)
    extra: dict[str, Any] = {}
    if rows:
        extra["slices"] = slice_accuracy_of_rows(rows, n_boot, seed)
    if not ordinal:
        return extra, []
    extra["ordinal"] = ordinal_metrics(
        preds.labels, preds.probs, preds.patient_ids, preds.class_names, n_boot, seed
    )
    note = "Per scan: one prediction per study."
    if rows:
        note += (
            " Per slice: every slice holding the organ scored against its study's stage, as "
            "slice-level studies report (slice_predictions.csv)."
        )
    table = ordinal_table_markdown(extra["ordinal"], extra.get("slices"))
    return extra, [f"## Staging (ordered classes)\n\n{note}\n\n{table}"]
