"""Where `predict` takes the lesion from: the mask or box the user gives, else the study's own (a
dataset case's label, its cases.csv box or per-phase boxes), else the model's coarse pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverphase.errors import ConfigError, LiverphaseError
from liverphase.inference import lesion
from liverphase.inference.context import study_path
from liverphase.io.nifti import read_image
from liverphase.io.study import Study

MASK_AND_BBOX = "give the lesion as a mask or as a box, not both (the box would be ignored)"
# where the lesion came from when a dataset case gives a box per phase (cases.csv bbox_<PHASE>)
PHASE_BOXES = "bbox per phase (cases.csv)"


def locate(
    study: Study,
    reference: sitk.Image,
    mask: str | Path | sitk.Image | None,
    bbox: Any,
    units: str,
    warnings: list[str],
    model_finds: bool,
    organ: bool,
    model_name: str,
) -> tuple[sitk.Image | None, lesion.Box6 | None, str]:
    """(lesion mask on the reference grid or None, voxel box in the canonical copy, source).
    `model_finds`: the model can locate the lesion itself (it segments, or reads the whole
    image); `organ`: it reads the whole liver, from a liver mask."""
    user_mask, source = None, ""
    if mask is not None and bbox is not None:
        raise ConfigError(MASK_AND_BBOX, "--mask / --bbox")
    if mask is not None:
        user_mask, source = (
            read_image(mask) if not isinstance(mask, sitk.Image) else mask,
            "mask",
        )
    elif bbox is not None:
        box = lesion.bbox_to_index(reference, bbox, units)
        if all(box[i + 3] - box[i] <= 1 for i in range(3)):
            warnings.append("lesion given as a point: the crop is the bundle's margin around it")
        return None, lesion.canonical_box(lesion.box_mask(reference, box)), f"bbox ({units})"
    elif study.mask is not None:
        user_mask, source = study.mask, "mask (dataset label)"
    elif study.bbox is not None:
        box_img = lesion.box_mask(reference, study.bbox)
        return None, lesion.canonical_box(box_img), "bbox (cases.csv)"
    elif study.phase_boxes:
        p = study.reference_phase if study.reference_phase in study.phase_boxes else None
        p = p or next(iter(study.phase_boxes))
        box_img, _ = lesion.conform_mask(
            lesion.box_mask(study.phases[p], study.phase_boxes[p]), reference
        )
        return None, lesion.canonical_box(box_img), PHASE_BOXES
    elif model_finds:
        return None, None, "model (coarse pass over the whole scan)"
    elif organ:
        raise LiverphaseError(
            f"study {study.case_id!r} has no liver mask: model {model_name!r} reads the "
            "whole liver; give --mask LIVER_MASK (liverphase ships no liver segmenter yet)",
            study_path(study),
        )
    else:
        raise LiverphaseError(
            f"no lesion location for study {study.case_id!r}: give a mask or a bbox "
            f"(model {model_name!r} does not segment)",
            study_path(study),
        )
    user_mask, note = lesion.conform_mask(user_mask, reference)
    if note:
        warnings.append(note)
    box = lesion.canonical_box(user_mask)
    if box is None:
        raise LiverphaseError("the lesion mask is empty (no voxel > 0)", study_path(study, mask))
    return user_mask, box, source
