"""Radiomics of the whole liver: mask shape, normalised first-order statistics and GLCM texture.

The hand-crafted baseline for cirrhosis staging (evaluate/radiomics.py fits it). Every feature is
computed inside the liver (label 1 of `study.mask`, on the reference sequence's grid; other
sequences get the mask resampled onto their own grid through physical space, nearest neighbour).
Images are first put in LPS orientation, so "axial slice" means a slice of constant S index and
a study stored with flipped or permuted axes gives the same features.

Units, by feature family (names are `shape_*` once per study, `<SEQ>_fo_*` and `<SEQ>_glcm_*` per
sequence):
- shape (of the mask on the reference grid): volume ml, surface cm², sphericity (1 for a ball),
  elongation and flatness (ratios ≥ 1 of the square roots of the principal moments: largest /
  middle, middle / smallest), Feret diameter mm (largest distance between two voxel centres),
  surface ratio (area of the mask / area of the mask smoothed with a Gaussian of
  `SMOOTH_SIGMA_MM` and cut at the level that keeps its volume; about 1 for a smooth organ,
  higher = bumpier: cirrhotic livers are nodular) and nodularity mm (volume between the mask and
  its smoothed version per unit smoothed area: the mean depth of bumps and dents). Surface areas
  are ITK's estimate (LabelShapeStatistics perimeter); staircasing on thick slices inflates them.
- first order (the sequence's own voxels, each divided by the median liver signal so scanner
  scale and bias are taken out; unitless): mean, std, cv, skewness, excess kurtosis, p10, p90,
  entropy (bits) and uniformity of the normalised signal in bins `HIST_BIN_WIDTH` wide.
- GLCM (unitless): the liver crop resampled in-plane to `GLCM_SPACING_MM` (linear; slice spacing
  kept), quantised inside the liver to `GLCM_LEVELS` levels between its 1st and 99th percentiles;
  per axial slice with at least `GLCM_MIN_PIXELS` liver pixels, symmetric co-occurrences of liver
  pixel pairs at Chebyshev distance d = 1, 2 along 4 directions (0°, 45°, 90°, 135°; diagonal
  offsets (d, d)); contrast, dissimilarity, homogeneity, energy, correlation and ASM per
  distance, averaged over the directions, then over slices weighted by their liver pixels.
A sequence the study lacks (or whose grid holds too little of the liver) gives NaN features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist
from skimage.feature import graycomatrix, graycoprops

from liverphase.errors import DatasetError
from liverphase.io.nifti import open_dataset
from liverphase.io.study import Study, same_grid

LIVER_LABEL = 1
SMOOTH_SIGMA_MM = 5.0
HIST_BIN_WIDTH = 0.05  # of the median liver signal
GLCM_SPACING_MM = 1.5
GLCM_LEVELS = 32
GLCM_MIN_PIXELS = 50
GLCM_DISTANCES = (1, 2)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
MIN_LIVER_VOXELS = 100  # fewer in a sequence's grid: its intensity features are NaN

SHAPE_FEATURES = (
    "volume_ml",
    "surface_cm2",
    "sphericity",
    "elongation",
    "flatness",
    "feret_mm",
    "surface_ratio",
    "nodularity_mm",
)
FIRST_ORDER_FEATURES = (
    "mean",
    "std",
    "cv",
    "skewness",
    "kurtosis",
    "p10",
    "p90",
    "entropy",
    "uniformity",
)
GLCM_FEATURES = tuple(f"{p.lower()}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS)
# Settings that change the features' values: part of a feature cache's key.
SETTINGS = {
    "version": 1,
    "smooth_sigma_mm": SMOOTH_SIGMA_MM,
    "hist_bin_width": HIST_BIN_WIDTH,
    "glcm_spacing_mm": GLCM_SPACING_MM,
    "glcm_levels": GLCM_LEVELS,
    "glcm_min_pixels": GLCM_MIN_PIXELS,
    "glcm_distances": list(GLCM_DISTANCES),
    "min_liver_voxels": MIN_LIVER_VOXELS,
}


def feature_names(sequences: Sequence[str]) -> list[str]:
    """The feature names `radiomics_features` returns for these sequences, in a fixed order."""
    names = [f"shape_{n}" for n in SHAPE_FEATURES]
    for seq in sequences:
        names += [f"{seq}_fo_{n}" for n in FIRST_ORDER_FEATURES]
        names += [f"{seq}_glcm_{n}" for n in GLCM_FEATURES]
    return names


def radiomics_features(study: Study, sequences: Sequence[str]) -> dict[str, float]:
    """Shape, normalised first-order and GLCM features of the liver (NaN for absent sequences)."""
    if study.mask is None:
        raise DatasetError(f"case {study.case_id!r} has no liver mask: no radiomics")
    mask = liver_crop(study.mask)
    if mask is None:
        raise DatasetError(f"case {study.case_id!r}: the mask has no liver voxel (label 1)")
    out = {f"shape_{k}": v for k, v in shape_features(mask).items()}
    for seq in sequences:
        values = dict.fromkeys((*FIRST_ORDER_FEATURES, *GLCM_FEATURES), math.nan)
        image = study.phases.get(seq)
        crop = _covering_crop(image, mask) if image is not None else None
        if crop is not None:
            values.update(sequence_features(crop, mask_on_grid(mask, crop)))
        for name, value in values.items():
            family = "fo" if name in FIRST_ORDER_FEATURES else "glcm"
            out[f"{seq}_{family}_{name}"] = value
    return out


def _bbox_slices(arr: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """sitk (x, y, z) slices of the box around `arr`'s true voxels (numpy z y x), grown by `margin`."""
    out = []
    for ax_np in (2, 1, 0):
        other = tuple(a for a in range(3) if a != ax_np)
        idx = np.flatnonzero(np.any(arr, axis=other))
        if idx.size == 0:
            return None
        m = margin[2 - ax_np]
        out.append(slice(max(0, int(idx[0]) - m), min(arr.shape[ax_np], int(idx[-1]) + 1 + m)))
    return tuple(out)


def liver_crop(mask: sitk.Image) -> sitk.Image | None:
    """The liver (label 1) as a uint8 0/1 image cropped to its box plus the smoothing margin."""
    arr = sitk.GetArrayViewFromImage(mask) == LIVER_LABEL
    margin = [int(math.ceil(3 * SMOOTH_SIGMA_MM / s)) + 1 for s in mask.GetSpacing()]
    sl = _bbox_slices(arr, margin)
    if sl is None:
        return None
    return sitk.Cast(mask[sl] == LIVER_LABEL, sitk.sitkUInt8)


def _covering_crop(image: sitk.Image, mask: sitk.Image) -> sitk.Image | None:
    """The part of `image` covering the physical box of the mask's liver (None: no overlap)."""
    sl = _bbox_slices(sitk.GetArrayViewFromImage(mask).astype(bool), (0, 0, 0))
    if sl is None:
        return None
    corners = [
        mask.TransformContinuousIndexToPhysicalPoint(
            [
                float(s.start) - 0.5 if c else float(s.stop) - 0.5
                for s, c in zip(sl, bits, strict=True)
            ]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in corners])
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, image.GetSize())
    if np.any(hi <= lo):
        return None
    return image[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]


def mask_on_grid(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """The mask resampled onto `image`'s grid through physical space (nearest neighbour)."""
    if same_grid(mask, image, tol=1e-3):
        return mask
    return sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _lps(image: sitk.Image) -> sitk.Image:
    """The image in LPS orientation (unchanged when it already is)."""
    direction = image.GetDirection()
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction) == "LPS":
        return image
    return sitk.DICOMOrient(image, "LPS")


def _physical_points(arr: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm) of the voxel centres where `arr` (numpy z, y, x order) is true."""
    idx = np.argwhere(arr)[:, ::-1].astype(np.float64)  # → x, y, z indices
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return np.array(image.GetOrigin()) + (idx * np.array(image.GetSpacing())) @ direction.T


def _feret_mm(points: np.ndarray) -> float:
    """Largest distance between two points, through their convex hull (chunked pair distances)."""
    if len(points) < 2:
        return 0.0
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:
        pass  # flat or degenerate: every point is a candidate
    best = 0.0
    for start in range(0, len(points), 512):  # chunks bound the distance matrix's memory
        best = max(best, float(cdist(points[start : start + 512], points).max()))
    return best


def _shape_stats(mask: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    stats_filter = sitk.LabelShapeStatisticsImageFilter()
    stats_filter.SetComputePerimeter(True)
    stats_filter.SetComputeFeretDiameter(False)  # O(n²) in ITK (2 s on a liver): done via the hull
    stats_filter.Execute(mask)
    return stats_filter


def shape_features(mask: sitk.Image) -> dict[str, float]:
    """Shape of a 0/1 mask in mm: volume, surface, sphericity, elongation, flatness, Feret, irregularity."""
    spacing = np.array(mask.GetSpacing())
    margin = [int(math.ceil(3 * SMOOTH_SIGMA_MM / s)) + 1 for s in spacing]
    sl = _bbox_slices(sitk.GetArrayViewFromImage(mask).astype(bool), margin)
    if sl is None:
        raise ValueError("shape_features: the mask is empty")
    mask = sitk.Cast(mask[sl] > 0, sitk.sitkUInt8)
    # the border is padded with background so the surface is closed and the smoothing sees outside
    mask = sitk.ConstantPad(mask, [1, 1, 1], [1, 1, 1], 0)
    shape = _shape_stats(mask)
    volume = shape.GetPhysicalSize(1)
    area = shape.GetPerimeter(1)
    arr = sitk.GetArrayViewFromImage(mask).astype(bool)
    # the convex hull of a mask is that of each x-row's first and last voxel
    has = arr.any(axis=2)
    first = np.argmax(arr, axis=2)
    last = arr.shape[2] - 1 - np.argmax(arr[:, :, ::-1], axis=2)
    ends = np.zeros_like(arr)
    zz, yy = np.nonzero(has)
    ends[zz, yy, first[has]] = True
    ends[zz, yy, last[has]] = True
    sigma_vox = [SMOOTH_SIGMA_MM / s for s in spacing[::-1]]  # numpy axis order z, y, x
    blurred = ndimage.gaussian_filter(arr.astype(np.float32), sigma_vox, truncate=3.0)
    # cut where the smoothed mask keeps the mask's volume: a level of 0.5 would shrink a convex
    # shape by about sigma²/radius, which on a small organ outweighs its bumps
    n_in = int(np.count_nonzero(arr))
    level = np.partition(blurred.ravel(), blurred.size - n_in)[blurred.size - n_in]
    smooth_arr = blurred >= level
    smooth_mask = sitk.GetImageFromArray(smooth_arr.astype(np.uint8))
    smooth_mask.CopyInformation(mask)
    smooth_area = _shape_stats(smooth_mask).GetPerimeter(1) if smooth_arr.any() else math.nan
    between_mm3 = float(np.count_nonzero(arr ^ smooth_arr)) * float(np.prod(spacing))
    return {
        "volume_ml": volume / 1000.0,
        "surface_cm2": area / 100.0,
        "sphericity": (math.pi ** (1 / 3)) * (6 * volume) ** (2 / 3) / area if area else math.nan,
        "elongation": shape.GetElongation(1),
        "flatness": shape.GetFlatness(1),
        "feret_mm": _feret_mm(_physical_points(ends, mask)),
        "surface_ratio": area / smooth_area,
        "nodularity_mm": between_mm3 / smooth_area,
    }


def first_order_features(values: np.ndarray) -> dict[str, float]:
    """First-order statistics of liver voxel values, each divided by their median first."""
    values = np.asarray(values, dtype=np.float64).ravel()
    median = float(np.median(values)) if values.size else math.nan
    if values.size < MIN_LIVER_VOXELS or not median > 0:
        # a non-positive median (not an MRI magnitude image) cannot set the scale
        return dict.fromkeys(FIRST_ORDER_FEATURES, math.nan)
    v = values / median
    mean, std = float(v.mean()), float(v.std())
    _, counts = np.unique(np.floor(v / HIST_BIN_WIDTH), return_counts=True)
    p = counts / counts.sum()
    p10, p90 = np.percentile(v, [10, 90])
    flat = std < 1e-12 * max(1.0, abs(mean))
    return {
        "mean": mean,
        "std": std,
        "cv": std / mean,
        "skewness": 0.0 if flat else float(stats.skew(v)),
        "kurtosis": 0.0 if flat else float(stats.kurtosis(v)),
        "p10": float(p10),
        "p90": float(p90),
        "entropy": float(-(p * np.log2(p)).sum()),
        "uniformity": float((p**2).sum()),
    }


def _texture_grid(image: sitk.Image, mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Image (float) and mask (bool) arrays, z y x, on a grid of GLCM_SPACING_MM in-plane."""
    spacing = image.GetSpacing()
    new_spacing = (GLCM_SPACING_MM, GLCM_SPACING_MM, spacing[2])
    size = [
        max(1, int(round(n * s / t)))
        for n, s, t in zip(image.GetSize(), spacing, new_spacing, strict=True)
    ]
    # the new grid starts where the old one's first voxel edge is, so both cover the same extent
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift = (np.array(new_spacing) - np.array(spacing)) / 2.0
    shift[2] = 0.0
    origin = np.array(image.GetOrigin()) + direction @ shift
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(new_spacing)
    ref.SetDirection(image.GetDirection())
    ref.SetOrigin(tuple(origin))
    img = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat64)
    msk = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(msk).astype(bool)


def quantise(values: np.ndarray, lo: float, hi: float, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Grey levels 0..levels-1 of `values` between `lo` and `hi` (clipped; all 0 when hi <= lo)."""
    if not hi > lo:
        return np.zeros(np.shape(values), dtype=np.uint8)
    q = np.floor((np.asarray(values, dtype=np.float64) - lo) / (hi - lo) * levels)
    return np.clip(q, 0, levels - 1).astype(np.uint8)


def glcm_features(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Slice-wise GLCM texture of a z y x volume inside a mask (see the module docstring)."""
    image, mask = np.asarray(image, dtype=np.float64), np.asarray(mask, dtype=bool)
    nan = dict.fromkeys(GLCM_FEATURES, math.nan)
    if mask.sum() < MIN_LIVER_VOXELS:
        return nan
    lo, hi = np.percentile(image[mask], [1, 99])
    outside = GLCM_LEVELS  # an extra grey level for non-liver pixels, dropped from the counts
    q = np.where(mask, quantise(image, lo, hi), outside).astype(np.uint8)
    # per distance d: the straight offsets at distance d (0°, 90°) and the diagonal (d, d)
    # offsets, which skimage gives for a distance d·√2 at 45° and 135°
    straight = [float(d) for d in GLCM_DISTANCES]
    diagonal = [d * math.sqrt(2.0) for d in GLCM_DISTANCES]
    kw = {"levels": GLCM_LEVELS + 1, "symmetric": True}
    matrices, weights = [], []
    for k in range(q.shape[0]):
        n = int(mask[k].sum())
        if n < GLCM_MIN_PIXELS:
            continue
        rows, cols = np.flatnonzero(mask[k].any(1)), np.flatnonzero(mask[k].any(0))
        sl = q[k, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        p = np.concatenate(
            [
                graycomatrix(sl, straight, [0.0, math.pi / 2], **kw),
                graycomatrix(sl, diagonal, [math.pi / 4, 3 * math.pi / 4], **kw),
            ],
            axis=3,
        )[:GLCM_LEVELS, :GLCM_LEVELS]
        if np.any(p.sum(axis=(0, 1)) == 0):
            continue  # a slice too thin for a direction: no pair to count
        matrices.append(p)
        weights.append(n)
    if not matrices:
        return nan
    # one graycoprops call per property over every slice and direction: (L, L, dist, slice·dir)
    stack = np.stack(matrices, axis=3)
    n_dist, n_slices = len(GLCM_DISTANCES), len(matrices)
    stack = stack.reshape(GLCM_LEVELS, GLCM_LEVELS, n_dist, n_slices * 4)
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    out = {}
    for prop in GLCM_PROPS:
        per_slice = graycoprops(stack, prop).reshape(n_dist, n_slices, 4).mean(axis=2)
        for i, d in enumerate(GLCM_DISTANCES):
            out[f"{prop.lower()}_d{d}"] = float(per_slice[i] @ w)
    return {name: out[name] for name in GLCM_FEATURES}


def sequence_features(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """First-order and GLCM features of one sequence inside a 0/1 mask on its grid."""
    sl = _bbox_slices(sitk.GetArrayViewFromImage(mask) > 0, (1, 1, 0))
    if sl is None or np.count_nonzero(sitk.GetArrayViewFromImage(mask)) < MIN_LIVER_VOXELS:
        return dict.fromkeys((*FIRST_ORDER_FEATURES, *GLCM_FEATURES), math.nan)
    # axial slices are those of constant S: a study stored with permuted axes reads the same
    image = _lps(sitk.Cast(image[sl], sitk.sitkFloat64))
    mask = _lps(sitk.Cast(mask[sl] > 0, sitk.sitkUInt8))
    arr = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetArrayViewFromImage(mask).astype(bool)
    values = arr[inside]
    out = first_order_features(values)
    median = float(np.median(values))
    if not median > 0:
        return {**out, **dict.fromkeys(GLCM_FEATURES, math.nan)}
    tex_img, tex_mask = _texture_grid(image / median, mask)
    return {**out, **glcm_features(tex_img, tex_mask)}


def case_features(root: str, case_id: str, sequences: Sequence[str]) -> tuple[list[float], float]:
    """One dataset case's features in `feature_names` order and the seconds they took (reading
    included); picklable arguments, for a worker process."""
    start = time.perf_counter()
    study = open_dataset(root).load_study(case_id)
    feats = radiomics_features(study, sequences)
    return [feats[n] for n in feature_names(sequences)], time.perf_counter() - start


def worker_init(threads: int) -> None:
    """A feature worker's SimpleITK thread count (the pool shares the cores)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))
