"""Test-time augmentation: average class probabilities over in-plane flips of the input.

Training flips the crop along H and W (see data.augment), so the model was taught that a mirrored
lesion has the same class; averaging the flipped predictions removes part of the variance a small
training set leaves in the decision function. Segmentation outputs are flipped back before averaging.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from liverphase.models.registry import ModelOutput, MultiPhaseModel

# spatial axes of the crop (D, H, W) as indices into the model input (B, P, C, D, H, W)
_INPUT_AXIS = {0: 3, 1: 4, 2: 5}


def flip_combinations(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every subset of `axes` (the identity first): 2**len(axes) views."""
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@dataclass
class FlipAverage:
    """Outputs averaged over flipped views: class probabilities (B, K), mask logits
    (B, S, D, H, W) and per-slice class probabilities (B, D, K), each flipped back first."""

    probs: torch.Tensor
    seg_logits: torch.Tensor | None = None
    slice_probs: torch.Tensor | None = None


def flip_average(
    model: MultiPhaseModel, x: torch.Tensor, axes: tuple[int, ...] = (), **kwargs: Any
) -> FlipAverage:
    """Every output of `model` averaged over the flips of spatial `axes` (see `FlipAverage`)."""
    if any(a not in _INPUT_AXIS for a in axes):
        raise ValueError(f"flip axes must be among 0 (D), 1 (H), 2 (W); got {axes}")
    probs: torch.Tensor | None = None
    seg: torch.Tensor | None = None
    slices: torch.Tensor | None = None
    views = flip_combinations(tuple(axes))
    for combo in views:
        dims = [_INPUT_AXIS[a] for a in combo]
        out: ModelOutput = model(x.flip(dims) if dims else x, **kwargs)
        p = out.logits.float().softmax(dim=1)
        probs = p if probs is None else probs + p
        if out.seg_logits is not None:
            # seg_logits are (B, S, D, H, W): spatial axis a sits at index a + 2
            s = out.seg_logits.float()
            s = s.flip([a + 2 for a in combo]) if combo else s
            seg = s if seg is None else seg + s
        if out.slice_logits is not None:
            # (B, D, K): only a flip of D (axis 0) reorders the slices
            q = out.slice_logits.float().softmax(dim=-1)
            q = q.flip(1) if 0 in combo else q
            slices = q if slices is None else slices + q
    assert probs is not None
    n = float(len(views))
    return FlipAverage(
        probs / n,
        seg / n if seg is not None else None,
        slices / n if slices is not None else None,
    )


def predict_with_flips(
    model: MultiPhaseModel, x: torch.Tensor, axes: tuple[int, ...] = (), **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities (B, K) and lesion-mask logits averaged over flips of spatial `axes`."""
    avg = flip_average(model, x, axes, **kwargs)
    return avg.probs, avg.seg_logits


def lesion_probability(seg_logits: torch.Tensor) -> torch.Tensor:
    """Lesion probability (B, D, H, W) from mask logits (B, S, D, H, W): the softmax mass of the
    foreground channels, or the sigmoid of a single channel."""
    s = seg_logits.float()
    return s.softmax(dim=1)[:, 1:].sum(dim=1) if s.shape[1] > 1 else s.sigmoid()[:, 0]
