"""Lesion box + margin in physical space, the crop grid it defines, and the way back to the study.

A box lives in a *frame*: the canonical axes of the reference phase (a direction matrix whose
columns are the axes). Frame coordinates are u = Dᵀ p for a physical point p, so a box is two
corners `lo`, `hi` (x, y, z in mm) there. Working in physical space makes the crop independent of
how the file stores its axes, and the same box maps every phase, registered or not.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from liverphase.errors import GeometryError
from liverphase.preprocess.geometry import corner_points, resample_like, to_canonical

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in a frame: corners `lo`, `hi` in frame coordinates (x, y, z) mm."""

    lo: Vec3
    hi: Vec3
    direction: tuple[float, ...]

    @property
    def extent(self) -> np.ndarray:
        """Edge lengths (x, y, z) in mm."""
        return np.asarray(self.hi) - np.asarray(self.lo)

    @property
    def centre(self) -> np.ndarray:
        """Centre as a physical point (x, y, z)."""
        return _dir(self.direction) @ ((np.asarray(self.lo) + np.asarray(self.hi)) / 2)

    def corners(self) -> np.ndarray:
        """The 8 corners as physical points (8, 3)."""
        d = _dir(self.direction)
        return np.array(
            [d @ np.array(c) for c in itertools.product(*zip(self.lo, self.hi, strict=True))]
        )

    def expand(self, margin_mm: float | Sequence[float]) -> Box:
        """The box grown by `margin_mm` on every side (a scalar or per-axis x, y, z)."""
        m = np.broadcast_to(np.asarray(margin_mm, float), (3,))
        return Box(_vec(np.asarray(self.lo) - m), _vec(np.asarray(self.hi) + m), self.direction)

    def union(self, other: Box) -> Box:
        """The smallest box holding this box and `other` (same frame assumed)."""
        lo = np.minimum(self.lo, other.lo)
        hi = np.maximum(self.hi, other.hi)
        return Box(_vec(lo), _vec(hi), self.direction)

    def intersect(self, other: Box) -> Box:
        """The part of this box inside `other` (same frame assumed)."""
        lo = np.maximum(self.lo, other.lo)
        hi = np.maximum(np.minimum(self.hi, other.hi), lo)
        return Box(_vec(lo), _vec(hi), self.direction)


@dataclass(frozen=True)
class CropGrid:
    """The output grid: `size` voxels (x, y, z) of `spacing` mm tiling a box edge to edge."""

    origin: Vec3
    spacing: Vec3
    size: tuple[int, int, int]
    direction: tuple[float, ...]

    def image(self) -> sitk.Image:
        """An empty image on this grid (a resampling reference)."""
        img = sitk.Image([int(n) for n in self.size], sitk.sitkUInt8)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    @property
    def box(self) -> Box:
        """The physical box the grid covers (outer voxel edges)."""
        d = _dir(self.direction)
        lo = d.T @ np.asarray(self.origin) - np.asarray(self.spacing) / 2
        return Box(
            _vec(lo), _vec(lo + np.asarray(self.spacing) * np.asarray(self.size)), self.direction
        )

    @property
    def scale_mm(self) -> Vec3:
        """Millimetres per output voxel along (z, y, x): the lesion-size information."""
        return _vec(np.asarray(self.spacing)[::-1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (SimpleITK order x, y, z)."""
        box = self.box
        return {
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "size": list(self.size),
            "direction": list(self.direction),
            "box_lo_mm": list(box.lo),
            "box_hi_mm": list(box.hi),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropGrid:
        """Inverse of `to_dict` (extra keys ignored)."""
        return cls(
            _vec(data["origin"]),
            _vec(data["spacing"]),
            tuple(int(n) for n in data["size"]),  # type: ignore[arg-type]
            tuple(float(v) for v in data["direction"]),
        )


def _dir(direction: Sequence[float]) -> np.ndarray:
    return np.asarray(direction, float).reshape(3, 3)


def _vec(values: Any) -> Vec3:
    a, b, c = (float(v) for v in values)
    return (a, b, c)


def frame_of(reference: sitk.Image) -> tuple[float, ...]:
    """The frame of a study: its reference phase's canonical direction (identity unless oblique)."""
    if reference.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        return reference.GetDirection()
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(reference.GetDirection())
    return to_canonical(probe).GetDirection()


def box_of_points(points: np.ndarray, direction: Sequence[float]) -> Box:
    """The smallest frame-aligned box holding physical `points` (N, 3)."""
    u = np.asarray(points, float) @ _dir(direction)  # rows: Dᵀ p
    return Box(_vec(u.min(axis=0)), _vec(u.max(axis=0)), tuple(direction))


def box_from_index(image: sitk.Image, bbox: Sequence[int], direction: Sequence[float]) -> Box:
    """Box of voxels [z0:z1, y0:y1, x0:x1] of `image` (numpy order, end exclusive), edge to edge."""
    z0, y0, x0, z1, y1, x1 = (int(v) for v in bbox)
    if z1 <= z0 or y1 <= y0 or x1 <= x0:
        raise GeometryError(f"empty bbox {tuple(bbox)}")
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c))
        for c in itertools.product((x0 - 0.5, x1 - 0.5), (y0 - 0.5, y1 - 0.5), (z0 - 0.5, z1 - 0.5))
    ]
    return box_of_points(np.array(corners), direction)


def box_from_mask(mask: sitk.Image, direction: Sequence[float]) -> Box:
    """Box of every voxel with a label > 0 (GeometryError when there is none)."""
    arr = sitk.GetArrayViewFromImage(mask)
    nz = np.nonzero(arr > 0)
    if not nz[0].size:
        raise GeometryError("mask holds no lesion voxel")
    lo = [int(a.min()) for a in nz]
    hi = [int(a.max()) + 1 for a in nz]
    return box_from_index(mask, (*lo, *hi), direction)


def jitter_box(box: Box, rng: np.random.Generator, scale: Sequence[float], shift: float) -> Box:
    """A coarse box for segmentation models: enlarged by a random factor per axis, then moved.

    The centre moves by at most `shift` × the slack the enlargement added, so with shift <= 1 the
    lesion stays inside.
    """
    extent = box.extent
    factor = rng.uniform(scale[0], scale[1], size=3)
    slack = extent * (factor - 1) / 2
    move = rng.uniform(-1.0, 1.0, size=3) * shift * slack
    centre = (np.asarray(box.lo) + np.asarray(box.hi)) / 2 + move
    half = extent * factor / 2
    return Box(_vec(centre - half), _vec(centre + half), box.direction)


def grid_for_box(box: Box, size_zyx: Sequence[int], keep_aspect: bool = False) -> CropGrid:
    """The grid of `size_zyx` voxels tiling `box` (enlarged, centred, for `keep_aspect`)."""
    size = np.asarray(size_zyx, int)[::-1]
    extent = np.maximum(box.extent, 1e-3)
    if keep_aspect:
        spacing = np.full(3, float(np.max(extent / size)))
        lo = (np.asarray(box.lo) + np.asarray(box.hi)) / 2 - spacing * size / 2
    else:
        spacing = extent / size
        lo = np.asarray(box.lo)
    origin = _dir(box.direction) @ (lo + spacing / 2)
    return CropGrid(_vec(origin), _vec(spacing), tuple(int(n) for n in size), tuple(box.direction))  # type: ignore[arg-type]


def outside_box(grid: CropGrid, box: Box) -> np.ndarray:
    """Voxels (D, H, W) of `grid` whose centres lie outside `box` (same frame): the crop's margin."""
    lo = np.asarray(grid.box.lo)
    centres = [lo[a] + grid.spacing[a] * (np.arange(grid.size[a]) + 0.5) for a in range(3)]
    inside = [(c >= box.lo[a]) & (c <= box.hi[a]) for a, c in enumerate(centres)]
    x, y, z = inside
    return ~(z[:, None, None] & y[None, :, None] & x[None, None, :])


def spacing_grid(box: Box, spacing_mm: float | Sequence[float], max_size: int = 128) -> CropGrid:
    """A grid over `box` with about `spacing_mm` (one value, or x y z) between voxels, at most
    `max_size` voxels an axis (coarser along an axis the box would overfill)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    size = np.clip(np.round(box.extent / spacing), 2, max_size).astype(int)
    return grid_for_box(box, tuple(int(v) for v in size[::-1]), keep_aspect=False)


def phases_on_grid(
    images: dict[str, sitk.Image],
    grid: CropGrid,
    transforms: dict[str, sitk.Transform | None],
    phases: Sequence[str],
    pad: dict[str, float | None],
) -> np.ndarray:
    """(P, D, H, W) float32 intensities of each phase resampled (linear) onto `grid` through its
    registration transform (crop-frame point → phase point; None: identity), `pad` outside it."""
    out = []
    for p in phases:
        img = resample_to_grid(images[p], grid, transforms.get(p), "linear", pad[p])
        out.append(sitk.GetArrayFromImage(img))
    return np.stack(out).astype(np.float32)


def leaves_volume(grid: CropGrid, image: sitk.Image, tol_mm: float = 0.5) -> bool:
    """True when part of the crop lies outside `image` (that part is padded)."""
    inside = box_of_points(corner_points(image), grid.direction).expand(tol_mm)
    box = grid.box
    return bool(np.any(np.asarray(box.lo) < inside.lo) or np.any(np.asarray(box.hi) > inside.hi))


def resample_to_grid(
    image: sitk.Image,
    grid: CropGrid,
    transform: sitk.Transform | None = None,
    interpolator: str | int = "linear",
    default: float | None = 0.0,
) -> sitk.Image:
    """Resample `image` onto the crop grid (transform: crop-frame point → image point)."""
    return resample_like(image, grid.image(), transform, interpolator, default)


def to_reference_grid(
    array: np.ndarray,
    grid: CropGrid | dict[str, Any],
    reference: sitk.Image,
    interpolator: str | int = "linear",
    default: float = 0.0,
) -> sitk.Image:
    """Put a (D, H, W) array on the crop grid back onto the reference image's grid (for predict).

    Use "nearest" for label maps, "linear" for probabilities and CAMs. Outside the crop: `default`.
    """
    if isinstance(grid, dict):
        grid = CropGrid.from_dict(grid)
    array = np.asarray(array)
    if array.shape != tuple(grid.size[::-1]):
        raise GeometryError(
            f"array shape {array.shape} is not the crop grid {tuple(grid.size[::-1])}"
        )
    if array.dtype == np.float64 or array.dtype == np.bool_:
        array = array.astype(np.float32 if array.dtype == np.float64 else np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetOrigin(grid.origin)
    img.SetSpacing(grid.spacing)
    img.SetDirection(grid.direction)
    return resample_like(img, reference, interpolator=interpolator, default=default)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (empty stays empty)."""
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def lesion_mask_on_reference(
    probability: np.ndarray,
    grid: CropGrid | dict[str, Any],
    reference: sitk.Image,
    threshold: float = 0.5,
) -> np.ndarray:
    """The lesion mask (D, H, W uint8 on the reference grid) from a crop-grid lesion probability.

    The probability is resampled linearly before thresholding (a nearest-neighbour label map would
    come back blocky from the coarse crop grid), then only the largest component is kept: the box
    holds one lesion. `predict` and the study-grid metrics of `cv`/`evaluate` share this.
    """
    prob = sitk.GetArrayFromImage(
        to_reference_grid(np.asarray(probability, np.float32), grid, reference, "linear")
    )
    return largest_component(prob > threshold).astype(np.uint8)


def with_roi_channel(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Image (P, C, D, H, W) and lesion mask (D, H, W) → (P, C + 1, D, H, W) float32, the mask
    (0/1) repeated as every phase's last channel."""
    if mask.shape != image.shape[2:]:
        raise ValueError(f"mask {mask.shape} does not match the image grid {image.shape[2:]}")
    roi = np.broadcast_to(np.asarray(mask, np.float32) > 0, (image.shape[0], 1, *mask.shape))
    return np.concatenate([np.asarray(image, np.float32), roi.astype(np.float32)], axis=1)
