"""Lesion segmentation metrics per case (MONAI): Dice, HD95, surface Dice, volume error."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice


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
        hd95 = float(
            compute_hausdorff_distance(
                p, t, include_background=False, percentile=95, spacing=spacing
            )[0, 0]
        )
        nsd = float(
            compute_surface_dice(p, t, [tolerance_mm], include_background=False, spacing=spacing)[
                0, 0
            ]
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
    }


def segmentation_summary(
    items: Sequence[dict[str, Any]], masks: Sequence[np.ndarray | None], fold: int | None = None
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
                "fold": fold,
                **segmentation_metrics(pred, truth, spacing),
            }
        )
    return rows
