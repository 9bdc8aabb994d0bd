"""Where the lesion is and what it measures: user boxes, canonical study copies, lesion figures.

Conventions (also in the CLI help):
- a box in voxels is `z0 y0 x0 z1 y1 x1` in the reference phase's stored voxel indices, end exclusive
  (the `cases.csv` convention); three numbers `z y x` are one voxel;
- a box in mm is `x0 y0 z0 x1 y1 z1` in DICOM patient coordinates (LPS: +x left, +y posterior,
  +z superior) as a DICOM viewer shows them, the order `prediction.json` reports `bbox_mm` in;
  three numbers `x y z` are a point.

`snap` puts an image in the canonical orientation and rounds its geometry (origin to 1 µm, spacing
to 0.01 µm, near-axis-aligned directions to exact 0/±1). NIfTI keeps geometry in float32, so the same
study read from DICOM and from NIfTI differs by ~1e-6 mm, and the registration optimiser's path
amplifies that into ~0.1 mm shifts; snapping makes both inputs bit-identical at a cost far below a
voxel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.errors import GeometryError
from liverphase.preprocess.geometry import to_canonical

Box6 = tuple[int, int, int, int, int, int]
BBOX_UNITS = ("mm", "voxel")


def snap(image: sitk.Image) -> sitk.Image:
    """Canonical (LPS) copy of an image with its geometry rounded (preprocess.geometry.to_canonical)."""
    return to_canonical(image)


def bbox_to_index(reference: sitk.Image, values: Sequence[float], units: str = "mm") -> Box6:
    """A user box (or point) as reference-phase voxel indices `z0 y0 x0 z1 y1 x1`, clipped to it."""
    if units not in BBOX_UNITS:
        raise GeometryError(f"bbox units must be one of {list(BBOX_UNITS)}, got {units!r}")
    vals = [float(v) for v in values]
    if len(vals) not in (3, 6):
        raise GeometryError(f"bbox needs 6 numbers (a box) or 3 (a point), got {len(vals)}")
    size = np.asarray(reference.GetSize())[::-1]  # (z, y, x)
    if units == "voxel":
        lo = np.asarray(vals[:3])
        hi = np.asarray(vals[3:]) if len(vals) == 6 else lo + 1
        lo, hi = np.floor(lo).astype(int), np.ceil(hi).astype(int)
    else:
        a = np.asarray(vals[:3])
        b = np.asarray(vals[3:]) if len(vals) == 6 else a
        corners = [
            reference.TransformPhysicalPointToContinuousIndex(tuple(map(float, c)))
            for c in itertools.product(*zip(np.minimum(a, b), np.maximum(a, b), strict=True))
        ]
        idx = np.asarray(corners)[:, ::-1]  # (z, y, x)
        lo = np.floor(idx.min(axis=0) + 0.5).astype(int)
        hi = np.floor(idx.max(axis=0) + 0.5).astype(int) + 1
    if np.any(hi <= lo):
        raise GeometryError(f"empty bbox {tuple(vals)} ({units})")
    c_lo, c_hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    if np.any(c_hi <= c_lo):
        raise GeometryError(
            f"bbox {tuple(vals)} ({units}) lies outside the reference phase "
            f"(voxels z y x 0..{tuple(int(s) for s in size)})"
        )
    return tuple(int(v) for v in (*c_lo, *c_hi))  # type: ignore[return-value]


def box_mask(reference: sitk.Image, box: Box6) -> sitk.Image:
    """A uint8 mask on `reference`'s grid that is 1 inside the voxel box."""
    arr = np.zeros(reference.GetSize()[::-1], np.uint8)
    z0, y0, x0, z1, y1, x1 = box
    arr[z0:z1, y0:y1, x0:x1] = 1
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(reference)
    return img


def index_box(mask: np.ndarray) -> Box6 | None:
    """The voxel box `z0 y0 x0 z1 y1 x1` of the nonzero voxels, or None when there are none."""
    nz = np.nonzero(mask)
    if not nz[0].size:
        return None
    return tuple(int(v) for v in (*(a.min() for a in nz), *(a.max() + 1 for a in nz)))  # type: ignore[return-value]


def canonical_box(mask: sitk.Image) -> Box6 | None:
    """The voxel box of a mask's nonzero voxels in its snapped (canonical) copy."""
    return index_box(sitk.GetArrayFromImage(snap(mask)) > 0)


def enlarge_box(box: Box6, factor: float) -> Box6:
    """The box scaled by `factor` about its centre, rounded outward symmetrically.

    Symmetric rounding keeps a flipped storage of the same study on exactly the flipped box.
    """
    lo, hi = np.asarray(box[:3], float), np.asarray(box[3:], float)
    centre, half = (lo + hi) / 2, (hi - lo) * factor / 2
    new_lo = np.floor(centre - half + 1e-6).astype(int)
    new_hi = np.ceil(centre + half - 1e-6).astype(int)
    return tuple(int(v) for v in (*new_lo, *new_hi))  # type: ignore[return-value]


def conform_mask(mask: sitk.Image, reference: sitk.Image) -> tuple[sitk.Image, str | None]:
    """The mask on the reference grid (nearest-neighbour resampled with a warning when it is not)."""
    from liverphase.io.study import same_grid

    if same_grid(mask, reference, tol=1e-3):
        out = sitk.Cast(mask, sitk.sitkUInt8)
        out.CopyInformation(reference)
        return out, None
    out = sitk.Resample(
        mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return out, "the lesion mask was not on the reference phase's grid: resampled onto it"


def lesion_figures(mask: sitk.Image) -> dict[str, Any]:
    """Volume (ml), centroid and box (LPS mm, x y z) of the nonzero voxels of a mask image."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    n = int(arr.sum())
    spacing = np.asarray(mask.GetSpacing(), float)
    if n == 0:
        return {"voxels": 0, "volume_ml": 0.0, "centroid_mm": None, "bbox_mm": None}
    idx = np.argwhere(arr)[:, ::-1].astype(float)  # (x, y, z)
    centroid = mask.TransformContinuousIndexToPhysicalPoint(tuple(idx.mean(axis=0)))
    lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    corners = np.array(
        [
            mask.TransformContinuousIndexToPhysicalPoint(tuple(map(float, c)))
            for c in itertools.product(*zip(lo, hi, strict=True))
        ]
    )
    return {
        "voxels": n,
        "volume_ml": round(n * float(np.prod(spacing)) / 1000.0, 4),
        "centroid_mm": [round(float(v), 2) for v in centroid],
        "bbox_mm": [round(float(v), 2) for v in (*corners.min(axis=0), *corners.max(axis=0))],
    }


def box_figures(lo: Sequence[float], hi: Sequence[float], direction: Sequence[float]) -> dict:
    """Figures of the ellipsoid inscribed in a frame box (lo, hi in frame x y z mm): no mask known."""
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    d = np.asarray(direction, float).reshape(3, 3)
    corners = np.array([d @ np.array(c) for c in itertools.product(*zip(lo_a, hi_a, strict=True))])
    extent = hi_a - lo_a
    return {
        "voxels": None,
        "volume_ml": round(float(np.pi / 6 * np.prod(extent)) / 1000.0, 4),
        "centroid_mm": [round(float(v), 2) for v in d @ ((lo_a + hi_a) / 2)],
        "bbox_mm": [round(float(v), 2) for v in (*corners.min(axis=0), *corners.max(axis=0))],
    }


FRAME_NOTE = "DICOM patient coordinates (LPS), mm, x y z; bbox_mm = x0 y0 z0 x1 y1 z1"


def lesion_info(
    user_mask: sitk.Image | None,
    pred_mask: sitk.Image | None,
    box: tuple[Sequence[float], Sequence[float], Sequence[float]],
    source: str,
) -> dict[str, Any]:
    """prediction.json's `lesion`: from the user's mask, else the model's, else the lesion box
    (lo, hi, direction) as its inscribed ellipsoid."""
    if user_mask is not None:
        info = {"source": source, **lesion_figures(user_mask)}
    elif pred_mask is not None:
        info = {"source": "model segmentation", **lesion_figures(pred_mask)}
    else:
        info = {"source": f"{source}: ellipsoid inscribed in the box", **box_figures(*box)}
    if pred_mask is not None and user_mask is not None:
        info["segmented_volume_ml"] = lesion_figures(pred_mask)["volume_ml"]
    info["frame"] = FRAME_NOTE
    return info
