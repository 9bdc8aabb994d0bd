"""Study → model input: canonical orientation, lesion crop, inter-phase registration, intensities.

Every phase is resampled once, straight from its stored voxels onto the crop grid through its
registration transform (no intermediate 1 mm volume, so one interpolation and no whole-abdomen
resampling). Registration sees the reference phase resampled to `register_spacing_mm` over the
crop box plus `register_margin_mm`; the other phases are cropped to that region without
interpolation before they are smoothed or registered. The kinetics (region means in HU) are measured
on a second grid, the mask's box plus the liver ring at 1 mm (`KINETICS_SPACING_MM`), so they depend
neither on the model's crop nor on the scan's slice thickness.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.errors import DatasetError, GeometryError
from liverphase.io.study import Study, geometry_of
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.geometry import (
    corner_points,
    crop_to_points,
    smooth_for_downsampling,
    to_canonical,
)
from liverphase.preprocess.intensity import (
    ct_channels,
    hu_warning,
    mri_channel,
    mri_stats,
    n4_bias_correct,
    ring_reference,
)
from liverphase.preprocess.kinetics import (
    KINETICS_MARGIN_MM,
    KINETICS_SPACING_MM,
    PARENCHYMA_HU,
    measure_kinetics,
)
from liverphase.preprocess.register import (
    RegistrationResult,
    fixed_region,
    identity,
    register_phase,
)
from liverphase.preprocess.roi import (
    Box,
    CropGrid,
    box_from_index,
    box_from_mask,
    box_of_points,
    frame_of,
    grid_for_box,
    jitter_box,
    leaves_volume,
    outside_box,
    phases_on_grid,
    resample_to_grid,
    spacing_grid,
    to_reference_grid,
)


@dataclass
class PreprocessedStudy:
    """Model-ready arrays: image (P, C, D, H, W) float32, mask (D, H, W) uint8 or None, and meta."""

    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    meta: dict[str, Any]

    @property
    def grid(self) -> CropGrid:
        """The crop grid the arrays live on (for mapping predictions back)."""
        return CropGrid.from_dict(self.meta["crop"])


def _case_rng(config: PreprocessConfig, case_id: str) -> np.random.Generator:
    # stable across processes and runs (unlike hash()), so a cached jittered crop is reproducible
    digest = int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "little")
    return np.random.default_rng([config.seed, digest])


def lesion_box(study: Study, source: str) -> tuple[Box, str]:
    """The lesion box in the study's frame and which input gave it ("mask", "bbox" or "image")."""
    frame = frame_of(study.reference)
    if source == "image":
        return box_of_points(corner_points(study.reference), frame), "image"
    index_box = _index_box(study)
    use_bbox = source == "bbox" and index_box is not None
    if study.mask is not None and not use_bbox:
        return box_from_mask(study.mask, frame), "mask"
    if index_box is not None:
        return box_from_index(*index_box, frame), "bbox"
    raise DatasetError(f"case {study.case_id!r} has neither a lesion mask nor a bbox")


def _index_box(study: Study) -> tuple[sitk.Image, tuple[int, ...]] | None:
    """(image, voxel box) locating the lesion: the reference's bbox, else the reference phase's own
    box, else the first phase box (every phase box maps to the same physical space)."""
    if study.bbox is not None:
        return study.reference, study.bbox
    for p in [study.reference_phase, *study.phase_boxes]:
        if p in study.phase_boxes and p in study.phases:
            return study.phases[p], study.phase_boxes[p]
    return None


def phase_box_grids(
    study: Study, config: PreprocessConfig, phases: list[str], used: str
) -> dict[str, tuple[Box, CropGrid]]:
    """Per phase with its own box (cases.csv `bbox_<PHASE>`), that box and its own crop grid: the
    phase is cropped around its own annotation and not registered, as LLD-MMRI's sequences are
    annotated one by one. Empty when the crop comes from a mask or the whole image."""
    if used != "bbox":
        return {}
    frame = frame_of(study.reference)
    out = {}
    for p in phases:
        if p in study.phase_boxes:
            box = box_from_index(study.phases[p], study.phase_boxes[p], frame)
            grid = grid_for_box(box.expand(config.margin_mm), config.size, config.keep_aspect)
            out[p] = (box, grid)
    return out


def _boxes(
    study: Study, config: PreprocessConfig, rng: np.random.Generator | None
) -> tuple[Box, Box, CropGrid, str]:
    """(lesion box, the box the crop frames: the lesion's or a jittered one, crop grid, ROI used)."""
    lesion, used = lesion_box(study, config.roi_source)
    box = lesion
    if config.roi_source == "mask_jitter":
        rng = rng if rng is not None else _case_rng(config, study.case_id)
        box = jitter_box(lesion, rng, config.jitter_scale, config.jitter_shift)
    grid = grid_for_box(box.expand(config.margin_mm), config.size, config.keep_aspect)
    return lesion, box, grid, used


def crop_box_for(
    study: Study, config: PreprocessConfig, rng: np.random.Generator | None = None
) -> CropGrid:
    """The crop grid (lesion box + margin, resized to `config.size`) of a study."""
    return _boxes(study, config, rng)[2]


def map_to_reference(
    array: np.ndarray, meta: dict[str, Any], reference: sitk.Image, interpolator: str = "linear"
) -> sitk.Image:
    """Put a (D, H, W) array on a preprocessed study's crop grid back onto the reference image."""
    return to_reference_grid(array, meta["crop"], reference, interpolator)


def _phase_order(study: Study, config: PreprocessConfig) -> tuple[list[str], list[str]]:
    """(the phases of the model input, those of them the study has)."""
    phases = list(config.phases) if config.phases else study.phase_names
    missing = [p for p in phases if p not in study.phases]
    if missing and (config.missing_phases == "error" or len(missing) == len(phases)):
        raise DatasetError(
            f"case {study.case_id!r} lacks phase(s) {missing} (has {study.phase_names})"
        )
    return phases, [p for p in phases if p in study.phases]


def _register_all(
    study: Study,
    canon: dict[str, sitk.Image],
    phases: list[str],
    lesion: Box,
    grid: CropGrid,
    config: PreprocessConfig,
    skip: set[str] | None = None,
) -> dict[str, RegistrationResult]:
    ref = study.reference_phase
    centre = lesion.centre
    results = {
        p: RegistrationResult(
            config.register_transform, identity(config.register_transform, centre)
        )
        for p in phases
    }
    movers = [p for p in phases if p != ref and p not in (skip or ())]
    for p in skip or ():
        results[p].accepted, results[p].stop = False, "cropped around its own box"
    if not config.register or not movers:
        for res in results.values():
            res.accepted, res.stop = False, "registration off"
        return results
    level, width = config.register_window
    clip = (level - width / 2, level + width / 2) if config.modality == "ct" else None
    # only where the reference has data: padding would tie the fit to the scan's edge, which
    # stays put while the anatomy moves
    scan = box_of_points(corner_points(canon[ref]), grid.direction)
    region = grid.box.expand(config.register_margin_mm).intersect(scan)
    fixed = fixed_region(canon[ref], region, config.register_spacing_mm, clip)
    probes = np.vstack([grid.box.corners(), centre[None]])
    for p in movers:
        results[p] = register_phase(
            fixed,
            canon[p],
            centre=centre,
            probes=probes,
            kind=config.register_transform,
            clip=clip,
            seed=config.seed,
            iterations=config.register_iterations,
            sampling=config.register_sampling,
            max_shift_mm=config.register_max_shift_mm,
            threads=config.register_threads,
        )
    return results


def _resample_phase(
    image: sitk.Image, grid: CropGrid, transform: sitk.Transform, pad: float, antialias: bool
) -> np.ndarray:
    corners = np.array([transform.TransformPoint(tuple(map(float, c))) for c in grid.box.corners()])
    in_sp = np.asarray(image.GetSpacing(), float)
    sigma_mm = max(0.0, float(np.max((np.asarray(grid.spacing) - in_sp) / 2))) if antialias else 0.0
    local = crop_to_points(image, corners, margin_mm=4 * sigma_mm + 2 * float(in_sp.max()))
    if antialias:
        local = smooth_for_downsampling(local, grid.spacing)
    out = resample_to_grid(local, grid, transform, "linear", pad)
    return sitk.GetArrayFromImage(out)


def preprocess_study(
    study: Study, config: PreprocessConfig, rng: np.random.Generator | None = None
) -> PreprocessedStudy:
    """Canonicalise, crop, register, resample and normalise one study (see the module docstring).

    `rng` only matters for `roi_source="mask_jitter"` (training draws a fresh box per epoch);
    without it the jitter is seeded by `config.seed` and the case id.
    """
    timings: dict[str, float] = {}
    warnings: list[str] = []
    tick = time.perf_counter()
    start = tick

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = round(now - tick, 4)
        tick = now

    all_phases, phases = _phase_order(study, config)
    needed = dict.fromkeys([*phases, study.reference_phase])
    canon = {p: to_canonical(study.phases[p]) for p in needed}
    lap("canonical")
    if config.bias_correction == "n4":
        canon = {p: n4_bias_correct(img) for p, img in canon.items()}
        lap("bias_correction")

    lesion, box, grid, used = _boxes(study, config, rng)
    if used != config.roi_source and config.roi_source != "mask_jitter":
        warnings.append(f"roi_source {config.roi_source!r} unavailable: box taken from the {used}")
    if leaves_volume(grid, study.reference):
        warnings.append("lesion near the volume edge: the crop leaves the scan and is padded")
    lap("roi")

    own = phase_box_grids(study, config, phases, used)
    reg = _register_all(study, canon, phases, lesion, grid, config, skip=set(own))
    warnings += [f"{p}: {r.warning}" for p, r in reg.items() if r.warning]
    lap("register")

    pads = {p: config.default_pad for p in phases}
    for p in phases:
        if pads[p] is None:
            pads[p] = float(sitk.GetArrayViewFromImage(canon[p])[::2, ::2, ::2].min())
    crops = {p: own.get(p, (box, grid)) for p in phases}
    raw = {
        p: _resample_phase(canon[p], crops[p][1], reg[p].transform, pads[p], config.antialias)
        for p in phases
    }
    mask = None
    if study.mask is not None:
        mask_img = resample_to_grid(study.mask, grid, None, "nearest", 0)
        mask = sitk.GetArrayFromImage(mask_img).astype(np.uint8)
    lap("resample")

    channels, norm = [], {}
    refs = _liver_references(raw, crops, config, warnings)
    for p in phases:
        ref = refs.get(p)
        if config.modality == "ct":
            if (w := hu_warning(raw[p], p)) is not None:
                warnings.append(w)
            hu = raw[p]
            if ref is not None:
                norm[p] = {"liver_ring": ref}
                hu = hu + np.float32(config.liver_anchor - ref)
            channels.append(ct_channels(hu, config.ct_windows))
        else:
            if ref is None:
                offset, scale = mri_stats(canon[p], config.mri_norm, config.mri_percentiles)
                clip = config.mri_norm == "percentile"
                norm[p] = {"offset": offset, "scale": scale}
            else:  # liver at 0.5: twice the parenchyma's signal reaches 1
                offset, scale, clip = 0.0, 2.0 * ref, True
                norm[p] = {"offset": offset, "scale": scale, "liver_ring": ref}
            channels.append(mri_channel(raw[p], offset, scale, clip=clip))
    if len(phases) < len(all_phases):  # absent phases: zero channels, marked in the meta
        by_phase = dict(zip(phases, channels, strict=True))
        channels = [by_phase.get(p, np.zeros_like(channels[0])) for p in all_phases]
        warnings.append(f"phase(s) {[p for p in all_phases if p not in phases]} absent: zeros")
    image = np.ascontiguousarray(np.stack(channels), dtype=np.float32)
    lap("intensity")
    kinetics = None
    if mask is not None and mask.any() and config.roi == "lesion":
        # the unjittered lesion box is the mask's box whenever the crop came from the mask
        mask_box = (
            lesion if used == "mask" else box_from_mask(study.mask, frame_of(study.reference))
        )
        kinetics = _study_kinetics(study, mask_box, canon, phases, reg, pads, config)
        lap("kinetics")
    timings["total"] = round(time.perf_counter() - start, 4)

    if not np.isfinite(image).all():
        raise GeometryError(f"case {study.case_id!r}: preprocessing produced non-finite values")
    meta = {
        "case_id": study.case_id,
        "phases": all_phases,
        "phases_present": [p in phases for p in all_phases],
        "reference_phase": study.reference_phase,
        "modality": config.modality,
        "shape": list(image.shape),
        "roi_source": used,
        "crop": grid.to_dict(),
        "scale_mm": list(grid.scale_mm),
        "lesion_box_mm": {"lo": list(lesion.lo), "hi": list(lesion.hi)},
        "lesion_size_mm": [float(v) for v in lesion.extent[::-1]],
        "registration": {
            p: reg[p].to_dict() for p in phases if p != study.reference_phase and p not in own
        },
        "normalisation": norm,
        "reference_geometry": geometry_of(study.reference),
        "warnings": warnings,
        "timings": timings,
    }
    if own:  # each of these phases has its own crop grid, around its own box
        meta["phase_crops"] = {p: g.to_dict() for p, (_, g) in own.items()}
    if kinetics is not None:
        meta["kinetics"] = kinetics
    return PreprocessedStudy(study.case_id, image, mask, meta)


def _liver_references(
    raw: dict[str, np.ndarray],
    crops: dict[str, tuple[Box, CropGrid]],
    config: PreprocessConfig,
    warnings: list[str],
) -> dict[str, float]:
    """Per phase, the parenchyma level in its crop's margin ring (empty unless asked for)."""
    if config.intensity_reference != "liver":
        return {}
    ct = config.modality == "ct"
    refs: dict[str, float] = {}
    for p, values in raw.items():
        box, grid = crops[p]
        ref = ring_reference(values, outside_box(grid, box), PARENCHYMA_HU if ct else None)
        if ref is None or (not ct and ref <= 0):
            warnings.append(
                f"{p}: too little parenchyma in the crop margin; absolute intensities kept"
            )
        else:
            refs[p] = ref
    return refs


def _study_kinetics(
    study: Study,
    mask_box: Box,
    canon: dict[str, sitk.Image],
    phases: list[str],
    reg: dict[str, RegistrationResult],
    pads: dict[str, float | None],
    config: PreprocessConfig,
) -> dict[str, Any]:
    """Region means in HU (or signal), the kinetics baseline's features, on the mask's box (`mask_box`)
    plus the liver ring at `KINETICS_SPACING_MM`, phases registered: the same numbers whatever crop
    (margin, jitter, input size) the model uses."""
    assert study.mask is not None
    grid = spacing_grid(mask_box.expand(KINETICS_MARGIN_MM), KINETICS_SPACING_MM)
    transforms = {p: reg[p].transform for p in phases}
    values = phases_on_grid(canon, grid, transforms, phases, pads)
    mask = sitk.GetArrayFromImage(resample_to_grid(study.mask, grid, None, "nearest", 0))
    return measure_kinetics(
        values, mask, grid.scale_mm, phases, study.reference_phase, ct=config.modality == "ct"
    )
