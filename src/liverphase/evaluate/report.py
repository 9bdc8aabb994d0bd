"""Metric blocks with patient-bootstrap CIs, markdown tables, and the cross-validation report.

`write_cv_report` turns out-of-fold predictions (the rows of predictions.csv) into the RUN
folder's metrics.json, roc.png and report.md; `comparison_table` gives the ablation rows (AUC
with CI and DeLong's p against a reference model: Obuchowski's clustered version when a patient has
several studies, named by `comparison_note`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.evaluate.metrics import (
    BINARY_KEYS,
    MULTICLASS_KEYS,
    check_probs,
    classification_metrics,
)
from liverphase.evaluate.plots import plot_roc, plot_roc_ovr
from liverphase.evaluate.predictions import Predictions, write_predictions
from liverphase.evaluate.stats import auc_test, auc_test_name, bootstrap_many, bootstrap_roc_band

DASH = "—"
METRIC_NAMES = {
    "auc": "AUC",
    "acc": "Accuracy",
    "f1": "F1",
    "ppv": "PPV",
    "npv": "NPV",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
    "kappa": "Cohen's κ",
    "qwk": "Quadratic κ",
    "f1_kappa_mean": "Mean of macro F1 and κ",
    "ece": "ECE",
    "brier": "Brier",
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "surface_dice": "Surface Dice (2 mm)",
    "volume_error": "Volume error (relative)",
    "study_dice": "Dice, study grid",
    "study_hd95": "HD95 (mm), study grid",
    "study_surface_dice": "Surface Dice (2 mm), study grid",
    "study_volume_error": "Volume error, study grid",
}


# ---------------------------------------------------------------- metric blocks


def _plain(value: Any) -> Any:
    """JSON-safe value: NaN/inf become None, CIs become [lo, hi] lists."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_block(
    y: np.ndarray,
    probs: np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    positive: int = 1,
    threshold: float = 0.5,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The metrics.json dict: every metric, `<key>_ci` for the main ones, counts; NaN → None."""
    y, p = check_probs(y, probs, len(class_names))
    point = classification_metrics(y, p, class_names, positive, threshold)
    keys = BINARY_KEYS if p.shape[1] == 2 else MULTICLASS_KEYS
    cis = {}
    if n_boot > 0:

        def fn(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
            m = classification_metrics(a, b, class_names, positive, threshold)
            return {k: m[k] for k in keys}

        cis = bootstrap_many(fn, y, p, groups, n_boot, seed, alpha)
    out: dict[str, Any] = {}
    for key in keys:
        out[key] = point[key]
        if key in cis:
            out[f"{key}_ci"] = cis[key]
    out.update({k: v for k, v in point.items() if k not in out})
    groups_arr = np.arange(y.size) if groups is None else np.asarray(groups)
    out["n_cases"] = int(y.size)
    out["n_patients"] = int(np.unique(groups_arr.astype(str)).size)
    out["class_counts"] = {c: int(np.sum(y == i)) for i, c in enumerate(class_names)}
    if p.shape[1] == 2:
        out["positive_class"], out["threshold"] = class_names[positive], float(threshold)
    if cis:
        out["ci_level"] = 1 - alpha
        out["n_boot"] = int(n_boot)
        out["n_boot_used"] = min(ci.n_used for ci in cis.values())
    return {k: _plain(v) for k, v in out.items()}


def cv_metrics(
    preds: Predictions, n_boot: int = 1000, seed: int = 0, positive: int = 1, threshold: float = 0.5
) -> dict[str, Any]:
    """{"pooled": block with CIs over all out-of-fold predictions, "folds": [point blocks]}."""
    pooled = metrics_block(
        preds.labels,
        preds.probs,
        preds.patient_ids,
        preds.class_names,
        n_boot,
        seed,
        positive,
        threshold,
    )
    folds = []
    for k in np.unique(preds.folds):
        sub = preds.subset(preds.folds == k)
        block = metrics_block(
            sub.labels, sub.probs, sub.patient_ids, sub.class_names, 0, seed, positive, threshold
        )
        folds.append({"fold": int(k), **block})
    return {"pooled": pooled, "folds": folds}


# ---------------------------------------------------------------- formatting


def format_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    """'0.912 (0.871–0.948)'; just the value without a finite CI; a dash without a value."""
    if value is None or not math.isfinite(value):
        return DASH
    text = f"{value:.{digits}f}"
    if ci is not None and all(v is not None and math.isfinite(v) for v in ci):
        text += f" ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})"
    return text


def format_p(p: float | None) -> str:
    """A p-value as '0.034', '<0.001', or a dash."""
    if p is None or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


Fmt = str | Callable[[Any], str]


def _cell(row: Mapping[str, Any], key: str, fmt: Fmt) -> str:
    value = row.get(key)
    if fmt == "ci":
        text = format_ci(value, row.get(f"{key}_ci"))
    elif fmt == "p":
        text = format_p(value)
    elif callable(fmt):
        text = fmt(value)
    elif value is None or (isinstance(value, float) and not math.isfinite(value)):
        text = DASH
    elif isinstance(value, str):
        text = value  # already formatted (e.g. a 'mean ± sd' summary row)
    else:
        text = format(value, fmt)
    return text.replace("|", "\\|")


def markdown_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str, Fmt]]
) -> str:
    """A GitHub markdown table; fmt is a format spec ('.3f', 'd', ''), 'ci', 'p', or a callable.

    'ci' shows `row[key]` with `row[key + "_ci"]`; 'p' formats a p-value; missing → a dash.
    """
    lines = [
        "| " + " | ".join(h for _, h, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"


def _metric_rows(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A pooled block as rows (metric, value, value_ci) in a fixed, readable order."""
    return [
        {"metric": name, "value": block[key], "value_ci": block.get(f"{key}_ci")}
        for key, name in METRIC_NAMES.items()
        if key in block
    ]


# ---------------------------------------------------------------- reports


def write_cv_report(
    run_dir: str | Path,
    preds: Predictions,
    *,
    title: str,
    dataset: str,
    model: str,
    seed: int,
    n_boot: int = 1000,
    positive: int = 1,
    threshold: float = 0.5,
    extra_pooled: Mapping[str, Any] | None = None,
    sections: Sequence[str] = (),
    evaluation: str | None = None,
) -> dict[str, Any]:
    """Write predictions.csv, metrics.json, roc.png and report.md into `run_dir`; return the metrics.

    `extra_pooled` (e.g. dice, dice_ci) joins the pooled block; `sections` are markdown blocks
    appended to the report (e.g. training settings); `evaluation` replaces the sentence describing
    k-fold cross-validation (a published train/val/test split).
    """
    run = Path(run_dir)
    metrics = cv_metrics(preds, n_boot, seed, positive, threshold)
    metrics["pooled"].update({k: _plain(v) for k, v in (extra_pooled or {}).items()})
    write_predictions(run / "predictions.csv", preds)
    atomic_write_json(run / "metrics.json", metrics)
    pooled, k_folds = metrics["pooled"], len(metrics["folds"])
    binary = len(preds.class_names) == 2
    if binary:
        y = preds.labels == positive
        s = preds.probs[:, positive]
        band = bootstrap_roc_band(y, s, preds.patient_ids, n_boot, seed) if n_boot else None
        per_fold = [(y[preds.folds == f], s[preds.folds == f]) for f in np.unique(preds.folds)]
        plot_roc(
            (y, s),
            per_fold,
            band,
            run / "roc.png",
            f"{model}: {k_folds}-fold CV",
            pooled.get("auc_ci"),
        )
    else:
        plot_roc_ovr(
            preds.labels, preds.probs, preds.class_names, run / "roc.png", f"{model}: OvR ROC"
        )
    counts = ", ".join(f"{c} {n}" for c, n in pooled["class_counts"].items())
    split = evaluation or (
        f"{k_folds}-fold cross-validation at patient level (stratified by label, grouped by "
        f"patient: no patient in two folds), seed {seed}. Metrics are pooled over the out-of-fold "
        f"predictions of all folds"
    )
    if n_boot:
        split += (
            f"; 95% CIs by percentile bootstrap over patients ({n_boot} resamples, "
            f"{pooled.get('n_boot_used', 0)} usable, seed {seed})"
        )
    if binary:
        split += (
            f". Positive class: {preds.class_names[positive]}, threshold {threshold:g} on its "
            f"probability"
        )
    fold_cols = [("fold", "Fold", "d"), ("n_cases", "Cases", "d"), ("n_patients", "Patients", "d")]
    fold_cols += [(k, METRIC_NAMES[k], ".3f") for k in (BINARY_KEYS if binary else MULTICLASS_KEYS)]
    fold_rows = list(metrics["folds"])
    fold_rows.append(_mean_sd_row(fold_rows, [c[0] for c in fold_cols[3:]]))
    parts = [
        f"# {title}\n",
        f"## Dataset\n\n{dataset}: {pooled['n_cases']} cases from {pooled['n_patients']} patients "
        f"({counts}).\n",
        f"## Evaluation\n\nModel `{model}`. {split}.\n",
        "## Pooled results\n\n"
        + markdown_table(
            _metric_rows(pooled), [("metric", "Metric", ""), ("value", "Value (95% CI)", "ci")]
        ),
        "## Per fold\n\n" + markdown_table(fold_rows, fold_cols),
        "## ROC\n\n![ROC: pooled, per fold and bootstrap band](roc.png)\n",
        *sections,
    ]
    atomic_write_text(run / "report.md", "\n".join(parts))
    return metrics


def _mean_sd_row(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """A 'mean ± sd' row over folds, as text (cases and patients summed)."""
    row: dict[str, Any] = {"fold": "mean ± sd"}
    row["n_cases"] = sum(r["n_cases"] for r in rows)
    row["n_patients"] = sum(r["n_patients"] for r in rows)
    for key in keys:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if len(vals) > 1:
            row[key] = f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"
    return row


COMPARISON_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("model", "Model", ""),
    ("auc", "AUC (95% CI)", "ci"),
    ("delong_p", "DeLong p", "p"),
    ("acc", "Accuracy (95% CI)", "ci"),
    ("f1", "F1 (95% CI)", "ci"),
    ("sensitivity", "Sensitivity", ".3f"),
    ("specificity", "Specificity", ".3f"),
]


def comparison_table(
    models: Mapping[str, np.ndarray],
    y: np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    reference: str,
    class_names: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    positive: int = 1,
    threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One row per model (its metrics_block, CIs included) plus DeLong's test against `reference`.

    All models must score the same cases in the same order. Rows carry `delta_auc`, `delong_z`
    and `delong_p` (None for the reference itself, and for more than two classes, where DeLong's
    test of a macro AUC is not defined) and `delong_method`: "DeLong", or Obuchowski's clustered
    test when a patient id in `groups` repeats (`auc_test`). Render with
    `markdown_table(rows, COMPARISON_COLUMNS)` and `comparison_note(rows)` under it.
    """
    if reference not in models:
        raise ValueError(f"reference model {reference!r} not among {list(models)}")
    y = np.asarray(y)
    ref = np.asarray(models[reference])
    rows = []
    for name, probs in models.items():
        probs = np.asarray(probs)
        if probs.shape != ref.shape:
            raise ValueError(f"{name}: probs {probs.shape} vs reference {ref.shape}")
        row: dict[str, Any] = {"model": name}
        row.update(metrics_block(y, probs, groups, class_names, n_boot, seed, positive, threshold))
        row.update(delta_auc=None, delong_z=None, delong_p=None, delong_method=None)
        if name != reference and probs.shape[1] == 2:
            pos = y == positive
            try:
                auc, auc_ref, z, p = auc_test(pos, probs[:, positive], ref[:, positive], groups)
            except ValueError as err:  # too few patients of a class for the test
                row["delong_method"] = f"not computed: {err}"
            else:
                row.update(delta_auc=auc - auc_ref, delong_z=_plain(z), delong_p=p)
                row["delong_method"] = auc_test_name(groups)
        rows.append(row)
    return rows


def comparison_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """The footnote of a comparison table: which test gave its DeLong p, and how its CIs were made."""
    methods = sorted({r["delong_method"] for r in rows if r.get("delong_method")})
    tested = [m for m in methods if not m.startswith("not computed")]
    text = ""
    if any(r.get("auc_ci") for r in rows):
        text = "AUC, accuracy and F1 95% CIs: percentile bootstrap over patients (no analytic CI). "
    if any(m.startswith("clustered") for m in tested):
        text += (
            f"DeLong p: {'; '.join(tested)}: a patient's studies are one cluster, so follow-up "
            "studies are not counted as independent."
        )
    elif tested:
        text += "DeLong p: DeLong's test (one study per patient)."
    return text + "".join(f" DeLong p {m}." for m in methods if m.startswith("not computed"))
