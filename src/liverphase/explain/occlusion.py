"""Phase importance by occlusion: how much the predicted class probability drops without each phase.

A phase is "removed" by replacing its input with the mean of the other present phases (default,
`fill="mean"`). Zeros would be far outside what the network saw in training (0 is below every CT
window, i.e. air everywhere), so the drop would measure the shock of an impossible image rather than
the information the phase carries; the mean of the other phases keeps the anatomy and a plausible
intensity, and removes only what is specific to the phase (its enhancement). `fill="zeros"` is kept
for comparison. Phases absent from the study are reported as None. One forward pass per phase,
under `torch.no_grad`, batch 1 (bounded memory on full-size grids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

FILLS = ("mean", "zeros")


@torch.no_grad()
def class_probabilities(
    model: nn.Module, x: torch.Tensor, forward_kwargs: dict[str, Any] | None = None
) -> torch.Tensor:
    """Softmax of the model's logits, (B, K)."""
    return model(x, **(forward_kwargs or {})).logits.float().softmax(dim=1)


@torch.no_grad()
def phase_importance(
    model: nn.Module,
    x: torch.Tensor,
    phases: Sequence[str],
    class_index: int,
    present: Sequence[bool] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    fill: str = "mean",
) -> dict[str, Any]:
    """Drop of p(class_index) when each present phase of x (1, P, C, D, H, W) is occluded.

    Returns {"drop": {phase: float | None}, "probability": p with all phases, "fill": fill,
    "method": text}. A positive drop means the phase supported the prediction.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    present = list(present) if present is not None else [True] * len(phases)
    base = float(class_probabilities(model, x, forward_kwargs)[0, class_index])
    drop: dict[str, float | None] = {}
    live = [i for i, ok in enumerate(present) if ok]
    for i, phase in enumerate(phases):
        if not present[i] or (fill == "mean" and len(live) < 2):
            drop[phase] = None
            continue
        occluded = x.clone()
        if fill == "mean":
            others = [j for j in live if j != i]
            occluded[:, i] = x[:, others].mean(dim=1)
        else:
            occluded[:, i] = 0.0
        p = float(class_probabilities(model, occluded, forward_kwargs)[0, class_index])
        drop[phase] = round(base - p, 6)
    return {
        "drop": drop,
        "probability": round(base, 6),
        "fill": fill,
        "method": (
            "occlusion: each phase replaced by the mean of the other phases; drop in the "
            "predicted class probability"
            if fill == "mean"
            else "occlusion: each phase set to zero; drop in the predicted class probability"
        ),
    }
