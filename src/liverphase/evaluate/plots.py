"""Figures for reports: ROC with per-fold curves and a bootstrap band, calibration, confusion.

Built on matplotlib's object API (`Figure`, rendered by Agg) rather than pyplot, so no global
backend is switched, nothing is left open, and it works headless and in threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from liverphase.atomic import atomic_path
from liverphase.evaluate.metrics import (
    auc_score,
    check_probs,
    confusion,
    expected_calibration_error,
    roc_points,
)
from liverphase.evaluate.stats import RocBand

FIG_SIZE = (5.0, 5.0)  # inches; at DPI this makes a 500×500 PNG
DPI = 100


def _format_auc(auc: float, ci: Sequence[float] | None) -> str:
    if ci is not None and np.all(np.isfinite(ci)):
        return f"{auc:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
    return f"{auc:.3f}"


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    """A square figure with a unit-square axes, labels and a diagonal reference line."""
    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return fig, ax


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render `fig` to a PNG at `path` atomically (a killed run leaves no half image)."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def plot_roc(
    pooled: tuple[np.ndarray, np.ndarray],
    per_fold: Sequence[tuple[np.ndarray, np.ndarray]],
    ci_band: RocBand | None,
    path: str | Path,
    title: str = "ROC",
    auc_ci: Sequence[float] | None = None,
) -> Path:
    """Pooled ROC (thick), per-fold ROCs (thin), bootstrap band (shaded), AUC (CI) in the legend.

    `pooled` and each fold are (binary labels, positive-class scores).
    """
    fig, ax = _new_axes(title, "1 − specificity (FPR)", "sensitivity (TPR)")
    if ci_band is not None and ci_band.n_used:
        ax.fill_between(
            ci_band.fpr,
            ci_band.lo,
            ci_band.hi,
            color="C0",
            alpha=0.2,
            linewidth=0,
            label=f"{ci_band.level:.0%} band ({ci_band.n_used} patient resamples)",
        )
    for k, (y, s) in enumerate(per_fold):
        fpr, tpr = roc_points(y, s)
        ax.plot(
            fpr,
            tpr,
            linewidth=0.8,
            alpha=0.6,
            color=f"C{k + 1}",
            label=f"fold {k}: AUC {_format_auc(auc_score(y, s), None)}",
        )
    y, s = pooled
    fpr, tpr = roc_points(y, s)
    ax.plot(
        fpr,
        tpr,
        linewidth=2.2,
        color="C0",
        label=f"pooled: AUC {_format_auc(auc_score(y, s), auc_ci)}",
    )
    ax.legend(loc="lower right", fontsize=7)
    return save_figure(fig, path)


def plot_roc_ovr(
    y: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "ROC",
) -> Path:
    """One-vs-rest ROC per class (for more than two classes), each with its AUC."""
    y, p = check_probs(y, probs, len(class_names))
    fig, ax = _new_axes(title, "1 − specificity (FPR)", "sensitivity (TPR)")
    for k, name in enumerate(class_names):
        if (y == k).any() and (y != k).any():
            fpr, tpr = roc_points(y == k, p[:, k])
            ax.plot(
                fpr,
                tpr,
                linewidth=1.6,
                color=f"C{k}",
                label=f"{name} vs rest: AUC {auc_score(y == k, p[:, k]):.3f}",
            )
    ax.legend(loc="lower right", fontsize=7)
    return save_figure(fig, path)


def plot_calibration(
    y: np.ndarray,
    probs: np.ndarray,
    path: str | Path,
    n_bins: int = 10,
    title: str = "Calibration",
) -> Path:
    """Reliability diagram of top-label confidence vs accuracy per equal-width bin, ECE in title."""
    y, p = check_probs(y, probs)
    conf = p.max(1)
    correct = p.argmax(1) == y
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    fig, ax = _new_axes(
        f"{title} (ECE {expected_calibration_error(y, p, n_bins):.3f})", "confidence", "accuracy"
    )
    filled = np.flatnonzero(np.bincount(b, minlength=n_bins))
    acc = np.array([correct[b == i].mean() for i in filled])
    mean_conf = np.array([conf[b == i].mean() for i in filled])
    ax.bar(
        (filled + 0.5) / n_bins, acc, width=1 / n_bins, edgecolor="k", alpha=0.5, label="accuracy"
    )
    ax.plot(mean_conf, acc, "o", color="C3", label="bin mean confidence")
    ax.legend(loc="upper left", fontsize=7)
    return save_figure(fig, path)


def plot_confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix (rows truth, columns prediction) with counts written in each cell."""
    k = len(class_names)
    cm = confusion(y_true, y_pred, k)
    fig = Figure(figsize=FIG_SIZE, dpi=DPI)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(k)
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    for i in range(k):
        for j in range(k):
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="w" if dark else "k")
    return save_figure(fig, path)
