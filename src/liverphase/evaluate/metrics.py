"""Classification metrics in plain numpy (fast enough to run inside a 1000-resample bootstrap).

Undefined values (a class absent, an empty denominator) are NaN rather than an exception or a
silent 0, so a bootstrap can skip them and a report can show a dash. Every function here is
cross-checked against scikit-learn in tests/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

BINARY_KEYS = (
    "auc",
    "acc",
    "f1",
    "ppv",
    "npv",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
)
# "kappa" is unweighted Cohen's κ (nominal classes: LLD-MMRI's score with macro F1); "qwk", the
# quadratic-weighted one, only means something when the classes are ordered stages
MULTICLASS_KEYS = ("auc", "acc", "f1", "balanced_accuracy", "kappa", "qwk")


def _div(num: float, den: float) -> float:
    """num / den, NaN when den is 0."""
    return float(num) / float(den) if den else float("nan")


def check_probs(y_true: np.ndarray, probs: np.ndarray, n_classes: int | None = None) -> tuple:
    """Validate and return (y as int array, probs as (N, K) float array)."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"need y (N,) and probs (N, K); got {y.shape} and {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ValueError(f"probs have {p.shape[1]} columns for {n_classes} classes")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or inf")
    return y.astype(np.int64), p


def auc_score(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of a score for binary labels (1 = positive) by midranks; NaN with one class."""
    y = np.asarray(y_true).astype(bool)
    m = int(y.sum())
    n = y.size - m
    if m == 0 or n == 0:
        return float("nan")
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - m * (m + 1) / 2.0) / (m * n))


def roc_points(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, starting at (0, 0), like sklearn's roc_curve."""
    y = np.asarray(y_true).astype(np.float64)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tps / tps[-1]]
        fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr


def roc_at(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR of the linearly interpolated ROC at each FPR in `grid` (upper end of vertical steps)."""
    grid = np.asarray(grid, dtype=np.float64)
    i = np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, fpr.size - 1)
    j = np.minimum(i + 1, fpr.size - 1)
    span = fpr[j] - fpr[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(span > 0, (grid - fpr[i]) / span, 0.0)
    return tpr[i] + frac * (tpr[j] - tpr[i])


def binary_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) for binary labels and predictions (1 = positive)."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    return int(t.size - tp - fp - fn), fp, fn, tp


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict:
    """AUC, ACC, F1, PPV, NPV, sensitivity, specificity, balanced accuracy; positive if score ≥ thr."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    tn, fp, fn, tp = binary_counts(y, s >= threshold)
    sens = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    return {
        "auc": auc_score(y, s),
        "acc": _div(tp + tn, y.size),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2.0,
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """K×K confusion matrix, rows = truth, columns = prediction."""
    idx = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def macro_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean of one-vs-rest AUCs; NaN unless every class is present."""
    y = np.asarray(y_true)
    aucs = [auc_score(y == k, probs[:, k]) for k in range(probs.shape[1])]
    return float(np.mean(aucs))  # NaN propagates when a class is absent


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in truth or prediction (scikit-learn's default set)."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    return float(np.mean(2 * tp[present] / denom[present])) if present.any() else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Unweighted Cohen's κ from a K×K confusion matrix; NaN when chance agreement is 1."""
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    chance = int(cm.sum(1) @ cm.sum(0))
    # Integer arithmetic so that "everything in one class" gives exactly 0/0 → NaN.
    den = n * n - chance
    return (n * int(np.trace(cm)) - chance) / den if den else float("nan")


def quadratic_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa with quadratic weights (i - j)² for ordered classes; NaN if undefined."""
    k = cm.shape[0]
    n = cm.sum()
    if n == 0:
        return float("nan")
    i, j = np.indices((k, k))
    w = (i - j) ** 2
    expected = np.outer(cm.sum(1), cm.sum(0)) / n
    return 1.0 - _div((w * cm).sum(), (w * expected).sum())


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: Σ_b |acc_b − conf_b| · n_b/N over equal-width confidence bins on [0, 1]."""
    y, p = check_probs(y_true, probs)
    if y.size == 0:
        return float("nan")
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    # Bins are (lo, hi] like Guo et al. 2017; confidence 0 falls in the first bin.
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.abs(np.bincount(b, correct, n_bins) - np.bincount(b, conf, n_bins))
    return float(gap.sum() / y.size)


def brier_score(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Brier score: mean (p₁ − y)² for two classes, mean Σ_k (p_k − y_k)² for more (as sklearn).

    With rows summing to 1 the two-class value is the same whichever class is called positive.
    """
    y, p = check_probs(y_true, probs)
    if p.shape[1] == 2:
        return float(np.mean((p[:, 1] - y) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    positive: int = 1,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict[str, float]:
    """All metrics as plain floats: the binary set for two classes, the macro set for more.

    Two classes: `positive` names the positive column; ACC/F1/... use `probs[:, positive] ≥
    threshold`. More classes: prediction is the argmax; AUC and F1 are macro (one-vs-rest AUC),
    kappa is unweighted Cohen's κ, qwk quadratic-weighted (classes in their given order), and
    f1_kappa_mean their mean with macro F1 (the LLD-MMRI challenge's ranking score). ECE and Brier
    in both cases.
    """
    y, p = check_probs(y_true, probs, len(class_names))
    k = p.shape[1]
    if k == 2:
        if positive not in (0, 1):
            raise ValueError(f"positive class index must be 0 or 1, got {positive}")
        out = binary_metrics(y == positive, p[:, positive], threshold)
    else:
        pred = p.argmax(1)
        cm = confusion(y, pred, k)
        recalls = [_div(cm[c, c], cm[c].sum()) for c in range(k) if cm[c].sum() > 0]
        out = {
            "auc": macro_auc_ovr(y, p),
            "acc": _div(np.trace(cm), y.size),
            "f1": macro_f1(cm),
            "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
            "kappa": cohen_kappa(cm),
            "qwk": quadratic_kappa(cm),
        }
        out["f1_kappa_mean"] = (out["f1"] + out["kappa"]) / 2
        for c, name in enumerate(class_names):
            out[f"auc_{name}"] = auc_score(y == c, p[:, c])
    out["ece"] = expected_calibration_error(y, p, n_bins)
    out["brier"] = brier_score(y, p)
    return {key: float(v) for key, v in out.items()}
