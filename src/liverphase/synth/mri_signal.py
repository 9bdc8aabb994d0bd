"""MRI image formation shared by the MRI phantoms: coil bias field and Rician magnitude noise.

An MR magnitude image is |S·B + n_re + i·n_im|: the true signal S times the receive-coil profile B
(smooth, multiplicative, fixed in scanner coordinates so it does not move with breathing), plus
complex Gaussian noise. Its magnitude is Rician: where S = 0 (air) the values follow a Rayleigh
law with mean σ·sqrt(π/2), not zero, and no value is negative.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from liverphase.synth.shapes import Grid, Waves

RAYLEIGH_MEAN = float(np.sqrt(np.pi / 2))  # mean of |n_re + i n_im| per unit sigma


def random_bias_waves(rng: np.random.Generator) -> tuple[Waves, Waves]:
    """An in-plane and a cranio-caudal unit-rms smooth field (wavelengths 250-700 mm)."""
    return Waves.random(rng, 4, (250, 600), 1.0), Waves.random(rng, 2, (300, 700), 1.0)


def bias_field(grid: Grid, waves: tuple[Waves, Waves], strength: float) -> np.ndarray:
    """exp(strength · (xy + 0.6 z)) on an axis-aligned grid (z, y, x), in scanner mm.

    Evaluated as an in-plane map times a per-slice profile, so it costs one slice plus one column.
    """
    xy, zw = waves
    o, s, n = grid.origin, grid.spacing, grid.size
    xs, ys, zs = (
        np.float32(o[i]) + np.arange(n[i], dtype=np.float32) * np.float32(s[i]) for i in range(3)
    )
    plane = xy(xs[None, None, :], ys[None, :, None], np.float32(0.0))
    along = zw(np.float32(0.0), np.float32(0.0), zs[:, None, None])
    return np.exp(np.float32(strength) * (plane + np.float32(0.6) * along))


def rician(values: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """|values + n_re + i·n_im| with n ~ N(0, sigma²), in place on a float32 array."""
    values += rng.standard_normal(values.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(values.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(values, imag, out=values)


def form_mr_image(
    values: np.ndarray,
    spacing: tuple[float, float, float],
    blur_mm: float,
    bias: np.ndarray | None,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Partial-volume blur, coil bias, Rician noise, then rounded to int16 (0 ... 32767).

    The slice profile is a fixed fraction of the slice (sigma 0.35 voxel), as in the CT phantom.
    """
    sigma_vox = (0.35, blur_mm / spacing[1], blur_mm / spacing[0])
    out = ndimage.gaussian_filter(
        values.astype(np.float32, copy=False), sigma_vox, mode="nearest", truncate=3.0
    )
    if bias is not None:
        out *= bias
    out = rician(out, sigma, rng)
    return np.rint(np.clip(out, 0, 32767)).astype(np.int16)
