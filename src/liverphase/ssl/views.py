"""What pretraining reads per study: two augmented views (Barlow Twins, VICReg) or one view and a
patch mask (masked autoencoding), every random draw a pure function of (seed, epoch, study, view).

A view is the study through `data.augment.Augmenter` (one draw for all phases: flips, in-plane
rotation, intensity scale/shift, noise; a small integer shift per phase; phase dropout), then, for
the two-view methods, a random resized crop (the same box for every phase, each axis keeping a
fraction in `crop_scale` of the crop, resized back) and contrast-timing jitter: each present phase
scaled by its own factor in [1 − j, 1 + j], as a bolus arriving earlier or later changes how
strongly each phase is enhanced. Labels are ignored: unlabeled studies are read like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from liverphase.data.augment import AugmentConfig, Augmenter
from liverphase.data.dataset import CachedStudyDataset
from liverphase.ssl.masking import sample_patch_mask

_UNLABELED = ""


def stream(*parts: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (seed, epoch, index, purpose, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(p) for p in parts]))


def random_resized_crop(
    image: torch.Tensor, scale: Sequence[float], rng: np.random.Generator
) -> torch.Tensor:
    """(P, C, D, H, W): one random box (each axis a fraction in `scale`) for all phases, resized
    back to (D, H, W) trilinearly."""
    p, c, *spatial = image.shape
    lo, hi = scale
    fractions = rng.uniform(lo, hi, size=3)
    offsets = rng.random(3)  # drawn whatever the sizes, so the stream never depends on them
    box = []
    for n, f, o in zip(spatial, fractions, offsets, strict=True):
        size = min(n, max(1, int(round(n * f))))
        start = int(o * (n - size + 1))
        box.append(slice(start, start + size))
    crop = image[(slice(None), slice(None), *box)].reshape(
        1, p * c, *[s.stop - s.start for s in box]
    )
    out = F.interpolate(crop, size=tuple(spatial), mode="trilinear", align_corners=False)
    return out.reshape(p, c, *spatial)


def timing_jitter(image: torch.Tensor, jitter: float, rng: np.random.Generator) -> torch.Tensor:
    """Each phase of (P, C, D, H, W) times its own factor in [1 − jitter, 1 + jitter]."""
    factors = 1.0 + rng.uniform(-jitter, jitter, size=image.shape[0])
    return image * torch.as_tensor(factors, dtype=image.dtype).view(-1, 1, 1, 1, 1)


class PretrainDataset(Dataset):
    """Studies as pretraining batches: `image0`, `present0` (+ `image1`, `present1` for two views,
    or `hidden` (P, gd, gh, gw) patch mask for MAE) and `index`."""

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        method: str,
        seed: int,
        augment: AugmentConfig,
        crop_scale: Sequence[float] = (0.6, 1.0),
        jitter: float = 0.2,
        mask: dict[str, Any] | None = None,
        roi_channel: bool = False,
    ) -> None:
        self.method, self.seed = method, int(seed)
        self.crop_scale, self.jitter = tuple(crop_scale), float(jitter)
        self.mask = dict(mask or {})
        if method == "mae":
            # phases are hidden patch by patch already; a dropped phase would only remove targets
            augment = augment.replace(phase_dropout_prob=0.0)
            if not {"grid", "ratio", "mode"} <= set(self.mask):
                raise ValueError("MAE needs mask settings grid, ratio and mode")
        # labels play no part; the mask is read only for a model that takes it as a channel
        base = [
            {**it, "label": _UNLABELED, "mask": it.get("mask") if roi_channel else None}
            for it in items
        ]
        n_views = 1 if method == "mae" else 2
        self.views = [
            CachedStudyDataset(
                base,
                {_UNLABELED: 0},
                Augmenter(augment),
                seed=int(np.random.SeedSequence([self.seed, v]).generate_state(1)[0]),
                roi_channel=roi_channel,
            )
            for v in range(n_views)
        ]
        self.epoch = 0

    def __len__(self) -> int:
        """Number of studies."""
        return len(self.views[0])

    def spatial_size(self) -> tuple[int, ...] | None:
        """(D, H, W) of the cached crops."""
        return self.views[0].spatial_size()

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of this epoch."""
        self.epoch = int(epoch)
        for v in self.views:
            v.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One study's view(s) and, for MAE, its patch mask."""
        out: dict[str, Any] = {"index": int(index)}
        for v, ds in enumerate(self.views):
            item = ds[index]
            image = item["image"]
            present = item.get("phase_mask")
            if present is None:
                present = torch.ones(image.shape[0], dtype=torch.bool)
            if self.method != "mae":
                rng = stream(self.seed, self.epoch, index, v, 1)
                image = random_resized_crop(image, self.crop_scale, rng)
                image = timing_jitter(image, self.jitter, rng)
                image = image * present.view(-1, 1, 1, 1, 1).to(image.dtype)
            out[f"image{v}"] = image.contiguous()
            out[f"present{v}"] = present
        if self.method == "mae":
            rng = stream(self.seed, self.epoch, index, 0, 2)
            hidden = sample_patch_mask(
                len(out["present0"]), self.mask["grid"], self.mask["ratio"], rng, self.mask["mode"]
            )
            out["hidden"] = torch.from_numpy(hidden)
        return out
