"""Intensity: CT windows to [0, 1] channels, MRI per-phase normalisation, and HU sanity checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

HU_RANGE = (-1100.0, 3100.0)
"""Values a CT in Hounsfield units holds (air -1000 with noise, to dense bone/contrast)."""


def window(array: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map [level - width/2, level + width/2] linearly to [0, 1], clipping outside (float32)."""
    lo = level - width / 2.0
    out = (np.asarray(array, np.float32) - np.float32(lo)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def ct_channels(array: np.ndarray, windows: Sequence[Sequence[float]]) -> np.ndarray:
    """One [0, 1] channel per (level, width) window: (D, H, W) HU → (C, D, H, W) float32."""
    return np.stack([window(array, float(lv), float(wd)) for lv, wd in windows])


def _sample(image: sitk.Image) -> np.ndarray:
    # every 2nd voxel per axis: global statistics at an eighth of the cost
    return sitk.GetArrayViewFromImage(image)[::2, ::2, ::2].astype(np.float32).ravel()


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a sample (separates body from background in MRI)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def mri_stats(image: sitk.Image, method: str, percentiles: Sequence[float]) -> tuple[float, float]:
    """(offset, scale) of one whole MRI phase, so out = (x - offset) / scale.

    "percentile": the given percentiles map to 0 and 1 (then clipped); "zscore": mean and standard
    deviation inside the body (voxels above Otsu's threshold).
    """
    values = _sample(image)
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, tuple(percentiles)))
        return lo, max(hi - lo, 1e-6)
    body = values[values > otsu_threshold(values)]
    if body.size < 10:
        body = values
    return float(body.mean()), max(float(body.std()), 1e-6)


def mri_channel(array: np.ndarray, offset: float, scale: float, clip: bool) -> np.ndarray:
    """(D, H, W) → (1, D, H, W) float32 normalised by (offset, scale), clipped to [0, 1] if asked."""
    out = (np.asarray(array, np.float32) - np.float32(offset)) / np.float32(scale)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out[None]


def ring_reference(
    array: np.ndarray, ring: np.ndarray, value_range: tuple[float, float] | None = None
) -> float | None:
    """Median of `array` over the `ring` voxels inside `value_range` (None: fewer than 20 voxels)."""
    values = np.asarray(array, np.float32)[ring]
    if value_range is not None:
        values = values[(values >= value_range[0]) & (values <= value_range[1])]
    return float(np.median(values)) if values.size >= 20 else None


def hu_warning(array: np.ndarray, phase: str, fraction: float = 0.01) -> str | None:
    """A warning when more than `fraction` of a CT crop lies outside the HU range."""
    arr = np.asarray(array)
    outside = float(np.mean((arr < HU_RANGE[0]) | (arr > HU_RANGE[1])))
    if outside > fraction:
        return (
            f"{phase}: {outside:.1%} of the crop is outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g} HU "
            "(not Hounsfield units? check rescale slope/intercept)"
        )
    return None


def n4_bias_correct(
    image: sitk.Image, shrink: int = 4, iterations: Sequence[int] = (50, 50, 30)
) -> sitk.Image:
    """An MRI phase with its smooth multiplicative bias field removed (SimpleITK's N4).

    The field is fitted on a copy shrunk by `shrink` along each axis (N4's own advice: the field
    is smooth, and fitting it at full resolution costs minutes on a whole abdomen) inside the body
    (Otsu), then evaluated at full resolution and divided out, so the corrected image keeps every
    voxel of the original grid. The mean signal in the body is preserved (the field's scale is
    arbitrary), so per-sequence normalisation afterwards sees familiar values.
    """
    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    floor = float(np.percentile(arr[::2, ::2, ::2], 1))
    positive = sitk.Maximum(img - floor, 0.0) + 1.0  # N4 works on the log: values must be > 0
    body = sitk.OtsuThreshold(positive, 0, 1, 200)
    factors = [max(1, min(int(shrink), n // 8)) for n in positive.GetSize()]
    small = sitk.Shrink(positive, factors)
    small_mask = sitk.Shrink(body, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(positive)
    field = sitk.GetArrayFromImage(sitk.Exp(log_field)).astype(np.float32)
    values = sitk.GetArrayFromImage(positive).astype(np.float32)
    inside = sitk.GetArrayViewFromImage(body) > 0
    corrected = values / field
    if inside.any():  # keep the body's mean: the field's overall scale is not identifiable
        corrected *= np.float32(values[inside].mean() / max(corrected[inside].mean(), 1e-6))
    out = sitk.GetImageFromArray(corrected + np.float32(floor - 1.0))
    out.CopyInformation(image)
    return out
