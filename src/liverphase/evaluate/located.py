"""What `cv --locate auto` writes: one row per blind test study (located.csv), and the report: the
automatic-location figures with patient-bootstrap CIs next to the same run's true-location figures
on the same studies, and the paired AUC test between them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.evaluate.predictions import read_predictions
from liverphase.evaluate.report import format_ci, format_p, markdown_table, metrics_block
from liverphase.evaluate.segmentation import read_segmentation_csv
from liverphase.evaluate.stats import auc_test, auc_test_name, mean_ci
from liverphase.preprocess.coarse import MIN_DETECTION_RADIUS_MM

OUT = "located"
FOLD_CSV = "located.csv"
COLUMNS = (
    "case_id",
    "patient_id",
    "fold",
    "label",
    "predicted",
    "probabilities",
    "detected",
    "centre_error_mm",
    "dice",
    "locator_detected",
    "locator_dice",
    "peak_probability",
    "true_volume_ml",
    "seconds",
)

# lesion volume bins (ml) for the detection rate by size: below about 12 mm across, to about 27 mm,
# larger
SIZE_BINS_ML = ((0.0, 1.0), (1.0, 10.0), (10.0, float("inf")))


def _size_label(lo: float, hi: float) -> str:
    if lo == 0:
        return f"< {hi:g} ml"
    return f"≥ {lo:g} ml" if hi == float("inf") else f"{lo:g}–{hi:g} ml"


def _row(
    name: str,
    y: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
    n_boot: int,
    detected: np.ndarray | None = None,
    dice: np.ndarray | None = None,
) -> dict[str, Any]:
    """One table row: AUC and accuracy as the cv report computes them (`metrics_block`: macro AUC
    beyond two classes), detection and Dice as patient-bootstrap means."""
    block = metrics_block(y, probs, groups, class_names, n_boot)
    row: dict[str, Any] = {"location": name, "n": int(y.size)}
    for key in ("auc", "auc_ci", "acc", "acc_ci"):
        row[key] = block.get(key)
    for key, values in (("detection", detected), ("dice", dice)):
        if values is not None and np.isfinite(values).any():
            value, ci = mean_ci(values, groups, n_boot)
            row[key], row[f"{key}_ci"] = float(value), list(ci)
    return row


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A fold's (or the run's) located rows as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({**r, "probabilities": json.dumps(r["probabilities"])} for r in rows)
    atomic_write_text(path, buf.getvalue())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows written by `write_rows`, numbers parsed."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["fold"], r["detected"] = int(r["fold"]), int(r["detected"])
        r["locator_detected"] = int(r["locator_detected"])
        r["probabilities"] = json.loads(r["probabilities"])
        numbers = ("centre_error_mm", "dice", "locator_dice", "peak_probability", "seconds")
        for key in (*numbers, "true_volume_ml"):
            r[key] = float(r[key]) if r[key] not in ("", "None") else float("nan")
    return rows


def located_summary(
    run: Path, rows: Sequence[dict[str, Any]], class_names: Sequence[str], n_boot: int = 1000
) -> dict[str, Any]:
    """Metrics of the blind rows beside the run's own (true-location) predictions, same studies."""
    ids = [r["case_id"] for r in rows]
    groups = np.asarray([r["patient_id"] for r in rows])
    y = np.asarray([list(class_names).index(r["label"]) for r in rows])
    auto = np.asarray([[r["probabilities"][c] for c in class_names] for r in rows], float)
    given = read_predictions(run / "predictions.csv")
    where = {c: i for i, c in enumerate(given.case_ids)}
    missing = [c for c in ids if c not in where]
    if missing:
        raise ValueError(f"{len(missing)} blind studies are not in the run's predictions.csv")
    true_probs = given.probs[[where[c] for c in ids]]
    seg_path = run / "segmentation_study.csv"
    true_dice = None
    if seg_path.is_file():
        seg = read_segmentation_csv(seg_path)
        true_dice = np.asarray([seg.get(c, {}).get("dice", np.nan) for c in ids], float)
    detected = np.asarray([r["detected"] for r in rows], float)
    dice = np.asarray([r["dice"] for r in rows], float)
    table = [
        _row(
            "true lesion location (the cv run)",
            y,
            true_probs,
            groups,
            class_names,
            n_boot,
            dice=true_dice,
        ),
        _row("automatic (--locate auto)", y, auto, groups, class_names, n_boot, detected, dice),
    ]
    found = detected.astype(bool)
    if len(set(y[found])) == len(class_names):  # every class among the found lesions
        table.append(
            _row(
                "automatic, detected lesions only",
                y[found],
                auto[found],
                groups[found],
                class_names,
                n_boot,
            )
        )
    volumes = np.asarray([r["true_volume_ml"] for r in rows], float)
    by_size = []
    for lo, hi in SIZE_BINS_ML:
        inside = (volumes >= lo) & (volumes < hi)
        if inside.any():
            value, ci = mean_ci(detected[inside], groups[inside], n_boot)
            by_size.append(
                {
                    "size": _size_label(lo, hi),
                    "n": int(inside.sum()),
                    "detection": float(value),
                    "detection_ci": list(ci),
                }
            )
    difference = None
    if len(class_names) == 2:  # DeLong compares binary AUCs: the positive class's probability
        a1, a2, z, p = auc_test(y, true_probs[:, 1], auto[:, 1], groups)
        difference = {"true": a1, "auto": a2, "z": z, "p": p, "test": auc_test_name(groups)}
    errors = np.asarray([r["centre_error_mm"] for r in rows], float)
    return {
        "n_studies": len(rows),
        "n_patients": len(set(groups)),
        "rows": table,
        "detection_by_size": by_size,
        "auc_difference": difference,
        "centre_error_mm": {
            "median": float(np.nanmedian(errors)),
            "q25": float(np.nanpercentile(errors, 25)),
            "q75": float(np.nanpercentile(errors, 75)),
        },
        "locator_detection": float(np.mean([r["locator_detected"] for r in rows])),
        "seconds_per_study": float(np.median([r["seconds"] for r in rows])),
    }


def write_located_report(run: Path, summary: dict[str, Any], rows: Sequence[dict]) -> Path:
    """RUN/located/: metrics.json, predictions.csv (one row per study) and report.md."""
    out = run / OUT
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "predictions.csv", rows)
    atomic_write_json(out / "metrics.json", summary)
    diff, err = summary["auc_difference"], summary["centre_error_mm"]
    columns = [
        ("location", "lesion location", ""),
        ("n", "studies", "d"),
        ("detection", "detection rate (95% CI)", "ci"),
        ("auc", "AUC (95% CI)", "ci"),
        ("acc", "ACC (95% CI)", "ci"),
        ("dice", "Dice, study grid (95% CI)", "ci"),
    ]
    text = (
        "# The pipeline without the answer (`cv --locate auto`)\n\n"
        f"{summary['n_studies']} test studies of {summary['n_patients']} patients, each predicted "
        "by the bundle of the fold that held it out, with its mask and boxes removed: the fold's "
        "lesion locator (trained on that fold's training masks) frames the crop. A missed lesion "
        "is scored from the crop it got, never dropped.\n\n"
        + markdown_table(summary["rows"], columns)
        + "\nDetected: the centre of the mask the pipeline used (a segmenting model's own mask, "
        "else the locator's) within the true lesion's equivalent-sphere radius (at least "
        f"{MIN_DETECTION_RADIUS_MM:g} mm) of the true centre. Dice of that mask on the study grid. "
        f"Centre error median {err['median']:.1f} mm (IQR {err['q25']:.1f}–{err['q75']:.1f}); "
        f"the locator's own mask detects {summary['locator_detection']:.3f}. "
        f"Median {summary['seconds_per_study']:.1f} s per study (search, registration, model).\n\n"
        "Detection by true lesion volume:\n\n"
        + markdown_table(
            summary["detection_by_size"],
            [
                ("size", "lesion volume", ""),
                ("n", "studies", "d"),
                ("detection", "detection rate (95% CI)", "ci"),
            ],
        )
        + (
            f"\nTrue vs automatic location, AUC {diff['true']:.3f} vs {diff['auto']:.3f}: "
            f"p {format_p(diff['p'])} ({diff['test']}). "
            if diff
            else "\nAUC: macro one-vs-rest over the classes (no paired test). "
        )
        + "CIs are percentile bootstraps over patients.\n"
    )
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def headline(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    auto = summary["rows"][1]
    return (
        f"located automatically: detection {format_ci(auto.get('detection'), auto.get('detection_ci'))}, "
        f"AUC {format_ci(auto['auc'], auto['auc_ci'])}, Dice {format_ci(auto.get('dice'), auto.get('dice_ci'))} "
        f"(true location AUC {summary['rows'][0]['auc']:.3f}"
        + (f", p {format_p(diff['p'])})" if (diff := summary["auc_difference"]) else ")")
    )
