"""The whole scan at a coarse isotropic spacing, every phase on the reference phase's frame: what
the lesion locator reads (no registration: at 4 mm the phases' breathing shifts are a voxel or two,
and the locator learns them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from liverphase.preprocess.geometry import to_canonical
from liverphase.preprocess.intensity import mri_channel, mri_stats, window

# One liver window (level, width) in HU: enhanced liver, lesion and vessels inside it, fat, air and
# bone clipped away (a lesion 40 HU below the portal-venous liver is a fifth of it).
CT_WINDOW = (80.0, 200.0)
# MRI signal has no absolute scale: each phase is mapped from its own (1st, 99th) percentiles.
MRI_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class CoarseVolume:
    """The phases on one coarse grid: `image` (P, D, H, W) float32 in [0, 1], `grid` its geometry."""

    image: np.ndarray
    grid: sitk.Image


def coarse_grid(reference: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty image over the reference phase's extent at `spacing_mm` in every axis."""
    extent = np.asarray(reference.GetSize()) * np.asarray(reference.GetSpacing())
    size = [max(int(np.ceil(e / spacing_mm)), 1) for e in extent]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetDirection(reference.GetDirection())
    grid.SetSpacing([float(spacing_mm)] * 3)
    # the first coarse voxel's centre sits where the reference's first voxel's corner plus half a
    # coarse voxel is, so both grids cover the same box
    half = (np.asarray(reference.GetSpacing()) - spacing_mm) / 2.0
    corner = reference.TransformContinuousIndexToPhysicalPoint(
        tuple(float(-h / s) for h, s in zip(half, reference.GetSpacing(), strict=True))
    )
    grid.SetOrigin(corner)
    return grid


def antialias(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """`image` (float32) blurred so that sampling it every `spacing_mm` averages its voxels instead
    of picking a few: per axis a Gaussian of sigma sqrt(coarse² − fine²)/2 mm (none along an axis
    already that coarse). Without it a 4 mm sample of a 1 mm scan keeps the 1 mm noise, and a small
    lesion can fall between samples."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    variance = [max(spacing_mm**2 - s**2, 0.0) / 4.0 for s in image.GetSpacing()]
    if not any(variance):
        return image
    return sitk.DiscreteGaussian(image, variance, 32, 0.01, True)


def coarse_volume(
    phases: Mapping[str, sitk.Image],
    reference: sitk.Image,
    order: Sequence[str],
    spacing_mm: float,
    modality: str = "ct",
    ct_window: Sequence[float] = CT_WINDOW,
) -> CoarseVolume:
    """Resample every phase of `order` onto the coarse grid of `reference` in the canonical
    orientation (linear; a phase the study lacks is zero) and normalise it (`ct_window`, or MRI
    percentiles)."""
    grid = coarse_grid(to_canonical(reference), spacing_mm)
    shape = grid.GetSize()[::-1]
    out = np.zeros((len(order), *shape), np.float32)
    for i, name in enumerate(order):
        image = phases.get(name)
        if image is None:
            continue
        fill = -1024.0 if modality == "ct" else 0.0
        moved = sitk.Resample(
            antialias(image, spacing_mm), grid, sitk.Transform(), sitk.sitkLinear, fill
        )
        array = sitk.GetArrayFromImage(moved)
        if modality == "ct":
            out[i] = window(array, *ct_window)
        else:  # the whole phase's own percentiles, as the crop's MRI normalisation reads them
            offset, scale = mri_stats(image, "percentile", MRI_PERCENTILES)
            out[i] = mri_channel(array, offset, scale, clip=True)[0]
    return CoarseVolume(out, grid)


def coarse_target(mask: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """The lesion mask on the coarse grid (lesion where about half a coarse voxel or more is
    lesion; a lesion smaller than that keeps its most covered voxel), uint8 (D, H, W)."""
    blurred = antialias(sitk.Cast(mask > 0, sitk.sitkFloat32), grid.GetSpacing()[0])
    cover = sitk.GetArrayFromImage(
        sitk.Resample(blurred, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    )
    target = (cover >= 0.5).astype(np.uint8)
    if not target.any() and cover.max() > 0:
        target[np.unravel_index(int(np.argmax(cover)), cover.shape)] = 1
    return target


def strongest_component(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, float]:
    """(mask of the connected component above `threshold` with the largest probability mass, the
    threshold used). With no voxel above it, half the map's maximum is used instead, so a study
    always yields a candidate (a missed lesion is then a wrong location, never a dropped case)."""
    used = float(threshold)
    above = prob > used
    if not above.any():
        used = float(prob.max()) / 2.0
        above = prob > used if prob.max() > 0 else np.ones_like(prob, bool)
    labels, n = ndimage.label(above)
    if n <= 1:
        return above, used
    mass = ndimage.sum(prob, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(mass)) + 1, used


def probability_on(prob: np.ndarray, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A coarse probability map (D, H, W) resampled (linear) onto `reference`'s voxels (z, y, x)."""
    image = sitk.GetImageFromArray(prob.astype(np.float32))
    image.CopyInformation(grid)
    moved = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(moved)


# A found lesion's centre lies within the true lesion's equivalent-sphere radius of the true centre,
# and never needs to be closer than this (a mask that merely touches the lesion while covering the
# liver is not a detection; a small lesion's centre is not held to sub-centimetre accuracy).
MIN_DETECTION_RADIUS_MM = 10.0


def lesion_found(pred: np.ndarray, truth: np.ndarray, spacing_zyx: Sequence[float]) -> dict:
    """Dice, the distance between the centres of mass (mm; None when a mask is empty) and
    `detected`: the found centre within max(10 mm, the true lesion's equivalent-sphere radius)."""
    pred, truth = np.asarray(pred) > 0, np.asarray(truth) > 0
    spacing = np.asarray(spacing_zyx, float)
    inter = int((pred & truth).sum())
    dice = 2.0 * inter / max(int(pred.sum() + truth.sum()), 1)
    dist = None
    if pred.any() and truth.any():
        c_p = np.asarray(ndimage.center_of_mass(pred)) * spacing
        c_t = np.asarray(ndimage.center_of_mass(truth)) * spacing
        dist = float(np.linalg.norm(c_p - c_t))
    volume = float(truth.sum() * np.prod(spacing))
    radius = max(MIN_DETECTION_RADIUS_MM, (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0))
    return {
        "dice": dice,
        "detected": dist is not None and dist <= radius,
        "centre_error_mm": dist,
        "radius_mm": radius,
    }
