"""Out-of-fold predictions (the rows of a RUN folder's predictions.csv): a table, read and written."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverphase.atomic import atomic_path
from liverphase.errors import InputFileError
from liverphase.evaluate.metrics import check_probs


@dataclass
class Predictions:
    """Out-of-fold predictions: one row per case, as in predictions.csv."""

    case_ids: list[str]
    patient_ids: list[str]
    folds: np.ndarray  # (N,) int
    labels: np.ndarray  # (N,) int class index
    probs: np.ndarray  # (N, K)
    class_names: list[str]

    def __post_init__(self) -> None:
        self.folds = np.asarray(self.folds, dtype=np.int64)
        self.labels, self.probs = check_probs(self.labels, self.probs, len(self.class_names))
        if not len(self.case_ids) == len(self.patient_ids) == self.folds.size == self.labels.size:
            raise ValueError("case_ids, patient_ids, folds and labels differ in length")

    def subset(self, mask: np.ndarray) -> Predictions:
        """The rows where `mask` is true."""
        idx = np.flatnonzero(mask)
        return Predictions(
            [self.case_ids[i] for i in idx],
            [self.patient_ids[i] for i in idx],
            self.folds[idx],
            self.labels[idx],
            self.probs[idx],
            self.class_names,
        )


def write_predictions(path: str | Path, preds: Predictions) -> None:
    """Write predictions.csv (case_id, patient_id, fold, label name, prob_<class>...) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["case_id", "patient_id", "fold", "label", *[f"prob_{c}" for c in preds.class_names]]
        )
        for i, case in enumerate(preds.case_ids):
            w.writerow(
                [
                    case,
                    preds.patient_ids[i],
                    int(preds.folds[i]),
                    preds.class_names[preds.labels[i]],
                    *[f"{v:.9g}" for v in preds.probs[i]],
                ]
            )


def read_predictions(path: str | Path) -> Predictions:
    """Read predictions.csv; labels may be class names or indices."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
            fields = list(rows[0].keys()) if rows else []
    except OSError as exc:
        raise InputFileError(f"cannot read predictions: {exc}", path) from exc
    names = [f[len("prob_") :] for f in fields if f.startswith("prob_")]
    need = {"case_id", "patient_id", "fold", "label"}
    if not rows or not need <= set(fields) or len(names) < 2:
        raise InputFileError(f"needs rows with columns {sorted(need)} and prob_<class> ×≥2", path)
    try:
        labels = [names.index(r["label"]) if r["label"] in names else int(r["label"]) for r in rows]
        return Predictions(
            [r["case_id"] for r in rows],
            [r["patient_id"] for r in rows],
            [int(r["fold"]) for r in rows],
            labels,
            [[float(r[f"prob_{c}"]) for c in names] for r in rows],
            names,
        )
    except ValueError as exc:
        raise InputFileError(f"bad value: {exc}", path) from exc
