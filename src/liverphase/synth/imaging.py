"""Image formation shared by the phantoms: anatomical texture, partial-volume blur, scanner noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from liverphase.synth.shapes import Domain, Waves, member


@dataclass(frozen=True)
class TexturePart:
    """A smooth field added to the voxels of some labels inside a box (body mm)."""

    lo: np.ndarray
    hi: np.ndarray
    labels: Sequence[int]
    waves: Waves
    scale: float = 1.0


def add_texture(
    values: np.ndarray, labels: np.ndarray, domain: Domain, parts: Sequence[TexturePart]
) -> None:
    """Add each part's field in place; fields live in body coordinates, so they move with it."""
    for part in parts:
        found = domain.sub(part.lo, part.hi)
        if found is None:
            continue
        idx, coords = found
        where = member(labels[idx], part.labels)
        if not where.any():
            continue
        xs, ys, zs = (np.broadcast_to(c, where.shape)[where] for c in coords)
        region = values[idx]
        region[where] += part.waves(xs, ys, zs) * np.float32(part.scale)


def kernel_rms(sigma: float, truncate: float = 3.0) -> float:
    """Root of the summed squared weights of a discrete Gaussian: its white-noise gain."""
    if sigma < 1e-3:
        return 1.0
    radius = int(truncate * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w /= w.sum()
    return float(np.sqrt((w**2).sum()))


def form_image(
    values: np.ndarray,
    spacing: Sequence[float],
    blur_mm: float,
    noise: float,
    rng: np.random.Generator,
    clip: tuple[float, float] = (-1024, 3071),
    dtype: type = np.int16,
) -> np.ndarray:
    """Blur (partial volume) plus white noise in one pass, scaled so the blurred noise has standard
    deviation `noise`; then clip and round to `dtype` (int16 HU by default)."""
    # z: a slice profile about as wide as the slice (sigma 0.35 slice); in-plane: the scanner PSF
    sigma = (0.35, blur_mm / spacing[1], blur_mm / spacing[0])
    gain = float(np.prod([kernel_rms(s) for s in sigma]))
    values = values.astype(np.float32, copy=False)
    values += rng.standard_normal(values.shape, dtype=np.float32) * np.float32(noise / gain)
    out = ndimage.gaussian_filter(values, sigma, mode="nearest", truncate=3.0)
    out = np.clip(out, *clip)
    return (np.rint(out) if np.issubdtype(dtype, np.integer) else out).astype(dtype)
