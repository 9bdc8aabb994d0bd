"""One path from model inputs to flip-averaged probabilities (issue #35).

The trainer's test predictions (`Trainer.predict`, hence `cv`), `evaluate` (`external.predict_items`,
also behind the missing-phase runs) and `predict` (`Predictor`) all call `predict_batch`, on a batch
as `CachedStudyDataset` gives it (`study_batch` makes one from a study's arrays): the ROI channel
appended and absent phases zeroed by `model_input`, the phase mask passed to a model that takes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from liverphase.models.registry import MultiPhaseModel, accepts_phase_mask
from liverphase.models.tta import flip_average, lesion_probability
from liverphase.preprocess.roi import with_roi_channel


@dataclass
class BatchPrediction:
    """Class probabilities (B, K), lesion probabilities (B, D, H, W) of a model that segments and
    per-slice class probabilities (B, D, K) of a slice-wise model, float32, averaged over flips."""

    probs: np.ndarray
    lesion: np.ndarray | None = None
    slices: np.ndarray | None = None


def model_input(
    image: np.ndarray, mask: np.ndarray | None, present: np.ndarray | None, roi_channel: bool
) -> np.ndarray:
    """What the model reads of one study (P, C, D, H, W): with `roi_channel` the lesion mask as
    every phase's last channel, phases `present` marks False set to zero; a float32 copy."""
    if roi_channel:
        if mask is None:
            raise ValueError("the ROI channel needs the lesion mask")
        image = with_roi_channel(image, mask)
    if present is not None:
        image = np.where(present[:, None, None, None, None], image, np.float32(0))
    return np.array(image, np.float32)


def study_batch(
    image: np.ndarray, roi: np.ndarray | None = None, present: Sequence[bool] | None = None
) -> dict[str, torch.Tensor]:
    """One study's arrays (P, C, D, H, W) as a batch of one: the lesion mask `roi` (D, H, W), if
    given, as the ROI channel; the phase mask only when `present` leaves a phase out."""
    flags = None if present is None or all(present) else np.asarray(present, bool)
    batch = {"image": torch.from_numpy(model_input(image, roi, flags, roi is not None))[None]}
    if flags is not None:
        batch["phase_mask"] = torch.from_numpy(flags)[None]
    return batch


def predict_batch(
    model: MultiPhaseModel,
    batch: dict[str, Any],
    flip_axes: Sequence[int] = (),
    device: str | torch.device | None = None,
    present: Sequence[bool] | None = None,
) -> BatchPrediction:
    """`model`'s probabilities for `batch` ({"image": (B, P, C, D, H, W), "phase_mask": (B, P)
    bool, optional}), averaged over the flips of spatial `flip_axes` (models.tta). The phase mask
    goes to a model that takes one; `present` (one bool per phase) withholds the False phases from
    every study through it too (their pixels stay). Runs under the caller's autocast, if any."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = batch["image"].to(device)
    kwargs: dict[str, torch.Tensor] = {}
    mask = batch.get("phase_mask")
    if present is not None:
        keep = torch.tensor(list(present), dtype=torch.bool).expand(len(x), -1)
        mask = keep if mask is None else mask.bool() & keep
    if mask is not None and accepts_phase_mask(model):
        kwargs["phase_mask"] = mask.to(device)
    elif present is not None and not all(present):
        raise ValueError("this model takes no phase mask: it cannot predict with a phase withheld")
    with torch.no_grad():
        avg = flip_average(model, x, tuple(flip_axes), **kwargs)
    seg, slices = avg.seg_logits, avg.slice_probs
    return BatchPrediction(
        avg.probs.cpu().numpy(),
        None if seg is None else lesion_probability(seg).cpu().numpy(),
        None if slices is None else slices.cpu().numpy(),
    )
