"""Canonical orientation, resampling and physical-space cropping of SimpleITK images.

Spatial triples in the public API are numpy order (z, y, x) like the rest of liverphase; SimpleITK
itself (sizes, spacings, points) is (x, y, z) and is converted at the boundary.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from liverphase.errors import GeometryError

CANONICAL_ORIENTATION = "LPS"
"""DICOM convention: +x to the patient's left, +y posterior, +z superior (identity direction)."""

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def interpolator_of(name: str | int) -> int:
    """SimpleITK interpolator constant from a name ("linear", "nearest", "bspline") or constant."""
    if isinstance(name, int):
        return name
    try:
        return _INTERPOLATORS[name]
    except KeyError:
        raise GeometryError(
            f"unknown interpolator {name!r}; use one of {list(_INTERPOLATORS)}"
        ) from None


def to_canonical(image: sitk.Image, orientation: str = CANONICAL_ORIENTATION) -> sitk.Image:
    """The image with its axes permuted/flipped to `orientation`: no interpolation, same physics.

    Two storages of one physical image (e.g. NIfTI written with flipped axes) give the same array.
    Oblique images get the closest axis order; their direction stays oblique. The geometry is rounded
    (origin to 1 µm, spacing to 1e-5 mm, axis-aligned directions to exact ±1/0): NIfTI stores it in
    float32 and DICOM in decimal text, and registration would otherwise amplify that ~1e-6 mm noise
    into different inputs for the same study read from the two formats.
    """
    out = sitk.Image(sitk.DICOMOrient(image, orientation))
    out.SetOrigin(tuple(round(float(v), 3) for v in out.GetOrigin()))
    out.SetSpacing(tuple(round(float(v), 5) for v in out.GetSpacing()))
    d = np.asarray(out.GetDirection(), float)
    r = np.round(d)
    if np.abs(d - r).max() < 1e-5:
        out.SetDirection(tuple(float(v) + 0.0 for v in r))
    return out


def edge_aligned_grid(
    image: sitk.Image, spacing_xyz: Sequence[float], whole_voxels: bool = False
) -> sitk.Image:
    """An empty grid of `spacing_xyz` (x, y, z) whose first outer voxel edge is the image's.

    The voxel count rounds the image's extent (so it is kept to within half a voxel), or with
    `whole_voxels` floors it, so the grid never reaches past the image's outer edges.
    """
    new_sp = np.asarray(spacing_xyz, float)
    old_sp = np.asarray(image.GetSpacing(), float)
    extent = np.asarray(image.GetSize(), float) * old_sp / new_sp
    n = np.floor(extent + 1e-6) if whole_voxels else np.round(extent)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    first_edge = np.asarray(image.GetOrigin()) - direction @ (old_sp / 2)
    ref = sitk.Image([int(v) for v in np.maximum(1, n)], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(v) for v in new_sp))
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(tuple(float(o) for o in first_edge + direction @ (new_sp / 2)))
    return ref


def resample_to_spacing(
    image: sitk.Image,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    interpolator: str | int = "linear",
    default: float | None = None,
) -> sitk.Image:
    """Resample onto a grid of `spacing` (z, y, x) mm covering the same physical extent."""
    ref = edge_aligned_grid(image, np.asarray(spacing, float)[::-1])
    return resample_like(image, ref, interpolator=interpolator, default=default)


def coarsen_to_spacing(image: sitk.Image, spacing_xyz: Sequence[float]) -> sitk.Image:
    """Anti-aliased copy at no finer than `spacing_xyz` (x, y, z) mm, inside the image's own extent.

    Axes already coarser keep their spacing; whole voxels only, so no padding value enters the copy.
    """
    old_sp = np.asarray(image.GetSpacing(), float)
    new_sp = np.maximum(old_sp, np.asarray(spacing_xyz, float))
    if np.allclose(new_sp, old_sp):
        return sitk.Cast(image, sitk.sitkFloat32)
    ref = edge_aligned_grid(image, new_sp, whole_voxels=True)
    return resample_like(smooth_for_downsampling(image, new_sp), ref, default=None)


def resample_like(
    image: sitk.Image,
    reference: sitk.Image,
    transform: sitk.Transform | None = None,
    interpolator: str | int = "linear",
    default: float | None = 0.0,
) -> sitk.Image:
    """Resample `image` onto `reference`'s grid; `transform` maps reference points to image points.

    Linear/B-spline results are float32 (no integer truncation); nearest keeps the pixel type.
    `default=None` fills points outside `image` with its minimum.
    """
    interp = interpolator_of(interpolator)
    if default is None:
        default = float(sitk.GetArrayViewFromImage(image).min())
    out_type = image.GetPixelID() if interp == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return sitk.Resample(
        image,
        reference,
        transform if transform is not None else sitk.Transform(),
        interp,
        float(default),
        out_type,
    )


def corner_points(image: sitk.Image) -> np.ndarray:
    """The 8 outer voxel-edge corners of an image as physical points (8, 3) in (x, y, z)."""
    size = np.asarray(image.GetSize(), float)
    return np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in corner))
            for corner in itertools.product(*[(-0.5, n - 0.5) for n in size])
        ]
    )


def crop_to_points(image: sitk.Image, points: np.ndarray, margin_mm: float = 0.0) -> sitk.Image:
    """The smallest sub-image (no interpolation) holding all physical `points` plus a margin.

    Used to shrink a whole-abdomen volume to the region a step needs before smoothing or
    registering it. Points outside the volume are clamped; if nothing overlaps, the whole image is
    returned (resampling then yields padding, which is the correct answer).
    """
    idx = np.array(
        [image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points]
    )
    pad = margin_mm / np.asarray(image.GetSpacing(), float) + 1.0
    size = np.asarray(image.GetSize())
    # the small offsets keep rounding stable for points sitting on a voxel boundary
    lo = np.floor(idx.min(axis=0) - pad + 1e-3).astype(int)
    hi = np.ceil(idx.max(axis=0) + pad - 1e-3).astype(int) + 1
    lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    if np.any(hi - lo < 2):
        return image
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def smooth_for_downsampling(image: sitk.Image, out_spacing_xyz: Sequence[float]) -> sitk.Image:
    """Gaussian anti-aliasing before resampling to a coarser grid (sigma per axis, in mm).

    sigma = (factor - 1) / 2 input voxels along each axis whose voxel size grows by `factor`
    (the scikit-image rule); axes that keep or refine their voxel size are left alone.
    """
    out = sitk.Cast(image, sitk.sitkFloat32)
    in_sp = np.asarray(image.GetSpacing(), float)
    factor = np.asarray(out_spacing_xyz, float) / in_sp
    for axis in range(3):
        sigma_vox = (factor[axis] - 1.0) / 2.0
        if sigma_vox >= 0.25 and image.GetSize()[axis] >= 4:
            out = sitk.RecursiveGaussian(out, float(sigma_vox * in_sp[axis]), False, 0, axis)
    return out
