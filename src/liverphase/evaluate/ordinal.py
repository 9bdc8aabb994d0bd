"""Ordinal and multi-class evaluation of staging: κ, MAE in stages, per-stage rates, patient CIs.

Classes are ordered by index (e.g. healthy < mild < moderate < severe); the predicted stage is the
argmax of the probabilities. Every CI is a percentile bootstrap over patients (all studies of a
drawn patient come along), through `stats.patient_resamples` / `stats.bootstrap_many`.
Undefined values (a class absent, one class only) are NaN internally and None in the returned
JSON-ready dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from liverphase.evaluate.metrics import (
    check_probs,
    cohen_kappa,
    confusion,
    macro_auc_ovr,
    macro_f1,
    quadratic_kappa,
)
from liverphase.evaluate.stats import bootstrap_many, paired_bootstrap_p, patient_resamples

ORDINAL_KEYS = ("acc", "qwk", "kappa", "macro_f1", "mae_stage", "macro_auc")
STAGE_KEYS = ("accuracy", "sensitivity", "specificity")
ORDINAL_NAMES = {
    "acc": "Accuracy",
    "qwk": "Quadratic-weighted κ",
    "kappa": "Cohen's κ (unweighted)",
    "macro_f1": "Macro F1",
    "mae_stage": "MAE (stages)",
    "macro_auc": "Macro AUC (one-vs-rest)",
}


def _scalars(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Point values of every scalar metric; per-stage ones keyed '<index>:<rate>'."""
    k = p.shape[1]
    pred = p.argmax(1)
    cm = confusion(y, pred, k)
    n = y.size
    out = {
        "acc": float(np.trace(cm) / n) if n else float("nan"),
        "qwk": quadratic_kappa(cm),
        "kappa": cohen_kappa(cm),
        "macro_f1": macro_f1(cm),
        "mae_stage": float(np.mean(np.abs(pred - y))) if n else float("nan"),
        "macro_auc": macro_auc_ovr(y, p),
    }
    for c in range(k):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = n - tp - fn - fp
        out[f"{c}:accuracy"] = (tp + tn) / n if n else float("nan")
        out[f"{c}:sensitivity"] = tp / (tp + fn) if tp + fn else float("nan")
        out[f"{c}:specificity"] = tn / (tn + fp) if tn + fp else float("nan")
    return out


def _json(value: Any) -> Any:
    """JSON-safe copy: non-finite floats → None, tuples (CIs) → lists, numpy scalars → Python."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_json(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _groups(patient_ids: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray | None:
    if patient_ids is None:
        return None
    g = np.asarray(patient_ids).astype(str)
    if g.shape != (n,):
        raise ValueError(f"patient_ids has shape {g.shape}, expected ({n},)")
    return g


def ordinal_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray | None,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The ordinal metrics block (JSON-ready), each scalar with `<key>_ci` from a patient bootstrap.

    Keys: acc, qwk (quadratic-weighted κ), kappa (unweighted κ), macro_f1, mae_stage (mean
    |argmax − truth| in stages), macro_auc (one-vs-rest; None unless every class occurs), each
    with `<key>_ci` [lo, hi]; per_stage {class: {n, accuracy (one-vs-rest), sensitivity,
    specificity, each rate with `<rate>_ci`}}; confusion (K×K, rows = truth); class_names, n,
    n_patients, and with n_boot > 0 ci_level, n_boot, n_boot_used (fewest resamples in which a
    main metric was defined). n_boot = 0 leaves out every `_ci` key.
    """
    y, p = check_probs(labels, probs, len(class_names))
    groups = _groups(patient_ids, y.size)
    point = _scalars(y, p)
    cis = bootstrap_many(_scalars, y, p, groups, n_boot, seed, alpha) if n_boot > 0 else {}
    out: dict[str, Any] = {}
    for key in ORDINAL_KEYS:
        out[key] = point[key]
        if key in cis:
            out[f"{key}_ci"] = cis[key]
    per_stage: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(class_names):
        stage: dict[str, Any] = {"n": int(np.sum(y == c))}
        for rate in STAGE_KEYS:
            stage[rate] = point[f"{c}:{rate}"]
            if f"{c}:{rate}" in cis:
                stage[f"{rate}_ci"] = cis[f"{c}:{rate}"]
        per_stage[str(name)] = stage
    out["per_stage"] = per_stage
    out["confusion"] = confusion(y, p.argmax(1), p.shape[1]).tolist()
    out["class_names"] = [str(c) for c in class_names]
    out["n"] = int(y.size)
    out["n_patients"] = int(y.size if groups is None else np.unique(groups).size)
    if cis:
        out["ci_level"] = 1 - alpha
        out["n_boot"] = int(n_boot)
        out["n_boot_used"] = min(cis[k].n_used for k in ORDINAL_KEYS if k in cis)
    return _json(out)


# ---------------------------------------------------------------- paired comparison

_WHOLE_SAMPLE: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "qwk": lambda y, p: quadratic_kappa(confusion(y, p.argmax(1), p.shape[1])),
    "kappa": lambda y, p: cohen_kappa(confusion(y, p.argmax(1), p.shape[1])),
    "macro_f1": lambda y, p: macro_f1(confusion(y, p.argmax(1), p.shape[1])),
    "macro_auc": macro_auc_ovr,
}
PAIRED_METRICS = ("acc", "mae_stage", *_WHOLE_SAMPLE)


def paired_ordinal_p(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    patient_ids: Sequence[str] | np.ndarray | None,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> float:
    """Two-sided paired-bootstrap p for metric(A) − metric(B) on the same cases, resampling patients.

    Both models are scored on each patient resample. p = 2·min(share of resampled differences
    ≤ 0, share ≥ 0), capped at 1: the smallest α at which the (1 − α) percentile CI of the
    difference excludes 0 (a CI-inversion p, not an exact test; 0 means every resample fell on
    one side, i.e. p < 2/n_boot). Identical predictions give 1. acc and mae_stage are per-case
    means, so their per-case differences go to `stats.paired_bootstrap_p`; κ, macro F1 and macro
    AUC are not, so both are recomputed on every resample (resamples where either is undefined
    are skipped). `metric` is one of PAIRED_METRICS; NaN if no resample was usable.
    """
    y, pa = check_probs(labels, probs_a)
    _, pb = check_probs(labels, probs_b, pa.shape[1])
    groups = _groups(patient_ids, y.size)
    if metric in ("acc", "mae_stage"):
        ea, eb = pa.argmax(1) - y, pb.argmax(1) - y
        # acc: correct_A − correct_B; MAE: |err_A| − |err_B| (a mean of each is the metric).
        diff = (ea == 0).astype(float) - (eb == 0) if metric == "acc" else np.abs(ea) - np.abs(eb)
        return paired_bootstrap_p(diff, groups, n_boot, seed)
    if metric not in _WHOLE_SAMPLE:
        raise ValueError(f"metric must be one of {PAIRED_METRICS}, got {metric!r}")
    fn = _WHOLE_SAMPLE[metric]
    diffs = []
    for idx in patient_resamples(groups, y.size, n_boot, seed):
        d = fn(y[idx], pa[idx]) - fn(y[idx], pb[idx])
        if math.isfinite(d):
            diffs.append(d)
    if not diffs:
        return float("nan")
    d = np.asarray(diffs)
    return min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))


# ---------------------------------------------------------------- per-slice accuracy


def slice_accuracy(
    slice_preds: Sequence[np.ndarray],
    scan_labels: Sequence[int] | np.ndarray,
    patient_ids: Sequence[str] | np.ndarray | None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Per-slice accuracy, every slice scored against its scan's label, with a patient-bootstrap CI.

    `slice_preds[i]` holds scan i's per-slice predicted classes (D_i,) or per-slice scores
    (D_i, K), whose argmax is taken. Accuracy pools slices (Σ correct / Σ slices), so long scans
    weigh more; slices of one scan are far from independent, hence the patient bootstrap.
    Returns {slice_acc, slice_acc_ci (n_boot > 0), n_slices, n_scans, n_patients}.
    """
    labels = np.asarray(scan_labels, dtype=np.int64)
    if len(slice_preds) != labels.size:
        raise ValueError(f"{len(slice_preds)} scans of slice predictions, {labels.size} labels")
    correct = np.zeros(labels.size)
    count = np.zeros(labels.size)
    for i, pred in enumerate(slice_preds):
        pred = np.asarray(pred)
        if pred.ndim == 2:
            pred = pred.argmax(1)
        elif pred.ndim != 1:
            raise ValueError(
                f"scan {i}: slice predictions must be (D,) or (D, K), got {pred.shape}"
            )
        correct[i], count[i] = np.sum(pred == labels[i]), pred.size
    groups = _groups(patient_ids, labels.size)

    def pooled(c: np.ndarray, m: np.ndarray) -> dict[str, float]:
        return {"slice_acc": float(c.sum() / m.sum()) if m.sum() else float("nan")}

    out: dict[str, Any] = pooled(correct, count)
    if n_boot > 0:
        out["slice_acc_ci"] = bootstrap_many(pooled, correct, count, groups, n_boot, seed, alpha)[
            "slice_acc"
        ]
    out["n_slices"] = int(count.sum())
    out["n_scans"] = int(labels.size)
    out["n_patients"] = int(labels.size if groups is None else np.unique(groups).size)
    return _json(out)


# ---------------------------------------------------------------- markdown


def ordinal_table_markdown(
    block: Mapping[str, Any], slices: Mapping[str, Any] | None = None
) -> str:
    """Markdown for a report: summary (value and CI), per-stage rates, confusion (rows = truth).

    `block` is an `ordinal_metrics` result; `slices` an optional `slice_accuracy` result, added
    as one summary row.
    """
    # Imported here because report.py is the natural caller of this module (no import cycle).
    from liverphase.evaluate.report import markdown_table

    rows = [
        {"metric": name, "value": block.get(key), "value_ci": block.get(f"{key}_ci")}
        for key, name in ORDINAL_NAMES.items()
    ]
    if slices is not None:
        rows.append(
            {
                "metric": f"Per-slice accuracy ({slices['n_slices']} slices)",
                "value": slices.get("slice_acc"),
                "value_ci": slices.get("slice_acc_ci"),
            }
        )
    summary = markdown_table(rows, [("metric", "Metric", ""), ("value", "Value (95% CI)", "ci")])
    stage_rows = [{"stage": name, **vals} for name, vals in block["per_stage"].items()]
    stages = markdown_table(
        stage_rows,
        [("stage", "Stage", ""), ("n", "n", "d")]
        + [(r, f"{r.capitalize()} (95% CI)", "ci") for r in STAGE_KEYS],
    )
    names = block["class_names"]
    cm_rows = [
        {"truth": name, **{f"c{j}": v for j, v in enumerate(row)}}
        for name, row in zip(names, block["confusion"], strict=True)
    ]
    cm = markdown_table(
        cm_rows,
        [("truth", "Truth \\ predicted", "")] + [(f"c{j}", n, "d") for j, n in enumerate(names)],
    )
    return (
        f"{summary}\n**Per stage** (one-vs-rest)\n\n{stages}\n"
        f"**Confusion matrix** (rows: truth, columns: prediction)\n\n{cm}"
    )
