"""Study augmentation: one random draw per study for every phase and the mask, plus per-phase motion.

The image (P, C, D, H, W) is viewed as P·C channels of one volume, so MONAI's dictionary transforms
draw their parameters once and apply them to every phase, channel and (under the key "mask") the
lesion mask. A separate per-phase integer shift then moves each phase on its own, simulating the
residual breathing motion registration leaves; the mask stays with the reference phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from liverphase.config import ConfigBase
from liverphase.errors import ConfigError


@dataclass
class AugmentConfig(ConfigBase):
    """Augmentation strengths; spatial axes are (0=D, 1=H, 2=W) of the cached crop."""

    flip_prob: float = 0.5
    flip_axes: tuple[int, ...] = (1, 2)
    rotate_prob: float = 0.5
    rotate_degrees: float = 10.0  # in-plane (H, W) rotation range, ± degrees
    intensity_prob: float = 0.5
    scale_intensity: float = 0.1  # v · (1 + f), f ∈ [-s, s]
    shift_intensity: float = 0.05  # v + o, o ∈ [-s, s] (cached intensities are windowed to ~[0, 1])
    noise_prob: float = 0.3
    noise_std: float = 0.02
    phase_shift_prob: float = 0.5
    phase_shift_voxels: int = 1  # each phase moves by an integer in [-n, n] along each axis
    # a study loses one random phase (zeroed, marked absent): trains the masked-phase path that
    # `predict` takes when a study lacks a phase; models with a phase mask only (std_net, unet_channels)
    phase_dropout_prob: float = 0.0

    def validate(self) -> None:
        """Check probabilities in [0, 1], non-negative strengths and valid axes."""
        for name in (
            "flip_prob",
            "rotate_prob",
            "intensity_prob",
            "noise_prob",
            "phase_shift_prob",
            "phase_dropout_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {getattr(self, name)}", name)
        for name in (
            "rotate_degrees",
            "scale_intensity",
            "shift_intensity",
            "noise_std",
            "phase_shift_voxels",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", name)
        if any(a not in (0, 1, 2) for a in self.flip_axes):
            raise ConfigError(f"axes must be 0, 1 or 2, got {self.flip_axes}", "flip_axes")


class Augmenter:
    """Random study augmentation; `augmenter(image, mask, seed)` is a pure function of its inputs."""

    def __init__(self, config: AugmentConfig | None = None, reference_index: int | None = None):
        self.config = config or AugmentConfig()
        self.reference_index = reference_index
        self.transform = Compose(_transforms(self.config))

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment image (P, C, D, H, W) and mask (D, H, W) | None with randomness drawn from `seed`."""
        if image.ndim != 5:
            raise ValueError(f"expected image (P, C, D, H, W), got shape {image.shape}")
        p, c, *spatial = image.shape
        monai_seed, shift_seed = np.random.SeedSequence(seed).generate_state(2)
        data: dict[str, torch.Tensor] = {
            "image": torch.from_numpy(np.array(image, np.float32)).reshape(p * c, *spatial)
        }
        if mask is not None:
            data["mask"] = torch.from_numpy(np.array(mask, np.float32))[None]
        self.transform.set_random_state(seed=int(monai_seed))
        out = self.transform(data)
        new_image = _as_numpy(out["image"]).reshape(p, c, *spatial).astype(np.float32, copy=False)
        new_mask = None
        if mask is not None:
            new_mask = np.rint(_as_numpy(out["mask"])[0]).astype(mask.dtype)
        new_image = self.shift_phases(new_image, np.random.default_rng(shift_seed))
        return new_image, new_mask

    def phase_presence(self, phases: int, seed: int) -> np.ndarray | None:
        """Which phases this draw keeps (bool (P,), one dropped at `phase_dropout_prob`), or None when
        phase dropout is off; from its own stream of `seed`, so the other draws do not change."""
        if self.config.phase_dropout_prob <= 0:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        present = np.ones(phases, bool)
        drop, which = rng.random() < self.config.phase_dropout_prob, rng.integers(phases)
        if drop and phases > 1:
            present[which] = False
        return present

    def shift_phases(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Move each phase (except the reference) by its own small integer shift, edge-padded."""
        n = self.config.phase_shift_voxels
        # Draw for every phase even when skipped, so one phase's draw never depends on another's.
        apply = rng.random(image.shape[0]) < self.config.phase_shift_prob
        shifts = rng.integers(-n, n + 1, size=(image.shape[0], 3))
        if n == 0:
            return image
        out = image.copy()
        for k in range(image.shape[0]):
            if apply[k] and k != self.reference_index and shifts[k].any():
                out[k] = shift_volume(image[k], tuple(int(s) for s in shifts[k]))
        return out


def shift_volume(volume: np.ndarray, shift: tuple[int, int, int]) -> np.ndarray:
    """Shift the last three axes of `volume` by whole voxels, repeating the edge into the gap."""
    pad = [(0, 0)] * (volume.ndim - 3)
    crops = []
    for axis_len, s in zip(volume.shape[-3:], shift, strict=True):
        s = max(-axis_len, min(axis_len, s))
        pad.append((max(s, 0), max(-s, 0)))
        crops.append(slice(max(-s, 0), max(-s, 0) + axis_len))
    padded = np.pad(volume, pad, mode="edge")
    return padded[(Ellipsis, *crops)]


def _transforms(cfg: AugmentConfig) -> list:
    """The MONAI dictionary transforms, image and mask keyed together for spatial ones."""
    both = ["image", "mask"]
    out: list = [
        RandFlipd(keys=both, prob=cfg.flip_prob, spatial_axis=axis, allow_missing_keys=True)
        for axis in cfg.flip_axes
    ]
    if cfg.rotate_degrees > 0:
        angle = math.radians(cfg.rotate_degrees)
        # range_x turns the (H, W) plane about the D axis: an in-plane rotation of the crop.
        out.append(
            RandRotated(
                keys=both,
                range_x=angle,
                prob=cfg.rotate_prob,
                mode=("bilinear", "nearest"),
                padding_mode=("border", "zeros"),
                allow_missing_keys=True,
            )
        )
    if cfg.scale_intensity > 0:
        out.append(
            RandScaleIntensityd(keys="image", factors=cfg.scale_intensity, prob=cfg.intensity_prob)
        )
    if cfg.shift_intensity > 0:
        out.append(
            RandShiftIntensityd(keys="image", offsets=cfg.shift_intensity, prob=cfg.intensity_prob)
        )
    if cfg.noise_std > 0:
        out.append(
            RandGaussianNoised(
                keys="image", std=cfg.noise_std, prob=cfg.noise_prob, sample_std=False
            )
        )
    return out


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy() if not hasattr(x, "as_tensor") else x.as_tensor().numpy()
    return np.asarray(x)
