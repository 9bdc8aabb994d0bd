"""The analysis grid: the model's crop box (grown to hold the liver ring around the lesion box) at
about the scan's own resolution, phases registered.

The model sees the lesion box resampled to its fixed input size (often coarse and anisotropic).
Kinetics (mean HU of lesion and liver) and the report's pictures want the scan's own detail, so they
use a second grid over the same physical box with about the reference phase's voxel size (at most
`MAX_SIZE` voxels an axis), every phase resampled onto it in HU through the registration transform
preprocessing found (recorded in its meta), and the lesion mask, CAMs and predicted probabilities
mapped onto it from wherever they live.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.explain.kinetics import named_patterns
from liverphase.inference.context import ReportContext
from liverphase.inference.lesion import snap
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.kinetics import (
    KINETICS_MARGIN_MM,
    KINETICS_SPACING_MM,
    measure_kinetics,
)
from liverphase.preprocess.register import transform_from_dict
from liverphase.preprocess.roi import (
    Box,
    CropGrid,
    phases_on_grid,
    resample_to_grid,
    spacing_grid,
    to_reference_grid,
)

MAX_SIZE = 128


def analysis_grid(
    crop: dict[str, Any],
    lesion_box: dict[str, Any] | None = None,
    max_size: int = MAX_SIZE,
) -> CropGrid:
    """A grid over the crop box, grown to hold the lesion box plus the liver ring the kinetics need
    (`lesion_box`: meta's lo/hi in frame mm), at the 1 mm the kinetics baseline measures on."""
    box = CropGrid.from_dict(crop).box
    if lesion_box is not None:
        lesion = Box(tuple(lesion_box["lo"]), tuple(lesion_box["hi"]), box.direction)  # type: ignore[arg-type]
        box = box.union(lesion.expand(KINETICS_MARGIN_MM))
    return spacing_grid(box, KINETICS_SPACING_MM, max_size)


def phase_values(
    canon: dict[str, sitk.Image],
    grid: CropGrid,
    registration: dict[str, dict[str, Any]],
    phases: Sequence[str],
    pad: float | None,
) -> np.ndarray:
    """(P, D, H, W) float32 intensities of each phase on the grid, registered to the reference."""
    transforms = {p: transform_from_dict(registration[p]) for p in phases if p in registration}
    return phases_on_grid(canon, grid, transforms, phases, dict.fromkeys(phases, pad))


def mask_on_grid(mask: sitk.Image, grid: CropGrid) -> np.ndarray:
    """A label image resampled (nearest) onto the grid as a bool array (D, H, W)."""
    return sitk.GetArrayFromImage(resample_to_grid(mask, grid, None, "nearest", 0)) > 0


def crop_array_on_grid(
    array: np.ndarray, crop: dict[str, Any], grid: CropGrid, interpolator: str = "linear"
) -> np.ndarray:
    """An array on the model's crop grid resampled onto the analysis grid (D, H, W) float32."""
    img = to_reference_grid(array.astype(np.float32), crop, grid.image(), interpolator)
    return sitk.GetArrayFromImage(img).astype(np.float32)


def ellipsoid_on_grid(lo: Sequence[float], hi: Sequence[float], grid: CropGrid) -> np.ndarray:
    """The ellipsoid inscribed in a frame box (lo, hi: x y z mm) as a bool array on the grid."""
    d = np.asarray(grid.direction, float).reshape(3, 3)
    nx, ny, nz = grid.size
    idx = np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"), -1)
    # physical = origin + D (spacing * index_xyz); frame coordinates = Dᵀ physical
    frame0 = d.T @ np.asarray(grid.origin)
    u = frame0 + idx[..., ::-1] * np.asarray(grid.spacing)
    centre = (np.asarray(lo) + np.asarray(hi)) / 2
    semi = np.maximum((np.asarray(hi) - np.asarray(lo)) / 2, 1e-3)
    return (((u - centre) / semi) ** 2).sum(axis=-1) <= 1.0


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 2)


def kinetics_summary(
    values: np.ndarray,
    mask: np.ndarray,
    grid: CropGrid,
    phases: Sequence[str],
    reference_phase: str,
    modality: str,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(per-phase table, named patterns or None for MRI, raw kinetics for the plot)."""
    ct = modality == "ct"
    with warnings.catch_warnings():
        # an empty liver ring (lesion filling the crop) gives NaN means: reported as null
        warnings.simplefilter("ignore", RuntimeWarning)
        kin = measure_kinetics(
            values, mask.astype(np.uint8), grid.scale_mm, phases, reference_phase, ct=ct
        )
        raw = named_patterns(kin) if ct else None
    unit = "hu" if ct else "signal"
    table: dict[str, Any] = {}
    for p in phases:
        row = kin["per_phase"][p]
        table[p] = {
            f"lesion_{unit}": _num(row["lesion"]),
            f"liver_{unit}": _num(row["liver"]),
            f"core_{unit}": _num(row["core"]),
            f"rim_{unit}": _num(row["rim"]),
            f"lesion_minus_liver_{unit}": _num(row["lesion_minus_liver"]),
            f"lesion_enhancement_{unit}": _num(row["lesion_enhancement"]),
            "relative_enhancement": _num(row["relative_enhancement"]),
        }
    patterns = None
    if raw is not None:
        patterns = {
            "verdicts": {k: v for k, v in raw.items() if k != "thresholds_hu"},
            "thresholds_hu": raw["thresholds_hu"],
        }
    return table, patterns, kin


def centre_slice(mask: np.ndarray, fallback: int) -> int:
    """The axial index through the mask's centroid (`fallback` when the mask is empty)."""
    zs = np.nonzero(mask)[0]
    return int(round(float(zs.mean()))) if zs.size else fallback


def report_context(
    canon: dict[str, sitk.Image],
    present: list[str],
    ref: str,
    meta: dict[str, Any],
    config: PreprocessConfig,
    user_mask: sitk.Image | None,
    seg_prob: np.ndarray | None,
    cams: dict[str, np.ndarray] | None,
    warnings_out: list[str],
) -> ReportContext:
    """Kinetics and the report's pictures on the analysis grid of a preprocessed study's crop.

    The lesion region is the user's mask, else the model's segmentation (probability > 0.5), else
    the ellipsoid inscribed in the lesion box (with a warning).
    """
    crop = meta["crop"]
    grid = analysis_grid(crop, meta.get("lesion_box_mm"))
    values = phase_values(canon, grid, meta["registration"], present, config.default_pad)
    if user_mask is not None:
        mask = mask_on_grid(snap(user_mask), grid)
    elif seg_prob is not None:
        mask = crop_array_on_grid(seg_prob, crop, grid) > 0.5
    else:
        box = meta["lesion_box_mm"]
        mask = ellipsoid_on_grid(box["lo"], box["hi"], grid)
        warnings_out.append(
            "no lesion mask: kinetics use the ellipsoid inscribed in the lesion box"
        )
    kinetics, patterns, raw = None, None, None
    if config.roi == "organ":
        pass  # the mask is the organ: lesion-versus-parenchyma kinetics do not apply
    elif mask.any():
        kinetics, patterns, raw = kinetics_summary(
            values, mask, grid, present, ref, config.modality
        )
    else:
        warnings_out.append("the lesion mask is empty on the analysis grid: no kinetics")
    cam_stack = None
    if cams is not None:
        cam_stack = np.stack([crop_array_on_grid(cams[p], crop, grid) for p in present])
    return ReportContext(
        phases=present,
        values=values,
        mask=mask,
        cams=cam_stack,
        spacing_zyx=tuple(grid.scale_mm),
        kinetics=kinetics,
        patterns=patterns,
        raw_kinetics=raw,
        modality=config.modality,
    )
