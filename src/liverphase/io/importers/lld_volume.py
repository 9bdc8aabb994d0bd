"""Per-volume fixes of LLD-MMRI's known faults: repeated slices, a +1024 intensity offset, the box
convention of Annotation.json, and the slice direction used to name upside-down volumes."""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

BoxIndex = tuple[int, int, int, int, int, int]

# MRI background (air) is near 0; a volume whose darkest percentile sits this high was shifted
_OFFSET = 1024.0
_OFFSET_FLOOR = 900.0


def drop_duplicate_slices(image: sitk.Image) -> tuple[sitk.Image, list[int]]:
    """The image without slices identical to the one before them (and the removed indices).

    Only slices with structure count: two blank slices side by side are ordinary background.
    """
    arr = sitk.GetArrayViewFromImage(image)
    removed = [
        k
        for k in range(1, arr.shape[0])
        if np.ptp(arr[k]) > 0 and np.array_equal(arr[k], arr[k - 1])
    ]
    if not removed:
        return image, []
    keep = [k for k in range(arr.shape[0]) if k not in set(removed)]
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr[keep]))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())  # slice 0 is always kept
    out.SetDirection(image.GetDirection())
    return out, removed


def box_from_json(
    box: dict[str, Any] | None, removed: list[int], size_xyz: tuple
) -> BoxIndex | None:
    """Annotation.json's `3D_box` as `z0 y0 x0 z1 y1 x1` (numpy order, end exclusive) on the volume
    after `drop_duplicate_slices`, clipped to it; None when absent or outside.

    The publishers crop `[z_min:z_max+1, y_min:y_max, x_min:x_max]`: z_max is inclusive, x and y
    ends exclusive; an empty x or y range keeps one voxel.
    """
    if not box:
        return None
    try:
        x0, y0, z0 = (int(round(float(box[k]))) for k in ("x_min", "y_min", "z_min"))
        x1, y1, z1 = (int(round(float(box[k]))) for k in ("x_max", "y_max", "z_max"))
    except (KeyError, TypeError, ValueError):
        return None
    n_old = size_xyz[2] + len(removed)
    if z0 >= n_old or z1 < 0:
        return None
    if removed:
        kept = np.array([k for k in range(n_old) if k not in set(removed)])
        # a removed slice is a copy of the kept one before it
        z0, z1 = (
            int(np.searchsorted(kept, z, side="right")) - 1
            for z in (max(z0, 0), min(z1, n_old - 1))
        )
    lo = [max(z0, 0), max(y0, 0), max(x0, 0)]
    hi = [
        min(z1 + 1, size_xyz[2]),
        min(max(y1, y0 + 1), size_xyz[1]),
        min(max(x1, x0 + 1), size_xyz[0]),
    ]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return None
    return (*lo, *hi)  # type: ignore[return-value]


def fix_offset(image: sitk.Image) -> tuple[sitk.Image, float]:
    """Subtract 1024 when a volume's background sits near +1024 (and say so: the offset)."""
    arr = sitk.GetArrayViewFromImage(image)
    if float(np.percentile(arr[:: max(1, arr.shape[0] // 8)], 1)) < _OFFSET_FLOOR:
        return image, 0.0
    out = sitk.GetImageFromArray(np.asarray(arr, np.float32) - np.float32(_OFFSET))
    out.CopyInformation(image)
    return out, _OFFSET


def slice_axis_up(image: sitk.Image) -> bool:
    """True when the slice index runs towards the head (LPS +z), from the image's direction."""
    return image.GetDirection()[8] > 0
