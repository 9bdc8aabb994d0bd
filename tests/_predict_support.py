"""Shared makers for the predict tests: a tiny synthetic cohort with one DICOM study, tiny bundles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch

from liverphase.models.registry import create_model
from liverphase.preprocess.config import PreprocessConfig
from liverphase.synth.ct import synth_ct_cohort
from liverphase.train.bundle import load_bundle, save_bundle

PHASES = ["NC", "ART", "PV", "DL"]
SIZE = (16, 32, 32)
SEG_OPTIONS = {"base_channels": 4, "scales": 3}


def make_cohort(root: Path, cases: int = 2) -> Path:
    """A `tiny` synthetic CT cohort whose first case is also a DICOM study (OUT/dicom/CT0000)."""
    return synth_ct_cohort(root / "ds", cases=cases, seed=3, dicom=1, preset="tiny")


def make_bundle(
    folder: Path,
    model: str = "resnet2d_avg",
    options: dict | None = None,
    seed: int = 0,
    phases: list[str] | None = None,
    **preprocess: object,
) -> Path:
    """A bundle with random (seeded) weights and a tiny preprocessing grid, registration on."""
    phases = phases or PHASES
    torch.manual_seed(seed)
    config = PreprocessConfig(size=SIZE, phases=tuple(phases), **preprocess)
    net = create_model(model, 2, phases, in_channels=config.n_channels, **(options or {}))
    meta = {
        "model": model,
        "model_options": options or {},
        "class_names": ["HCC", "ICC"],
        "reference_phase": "PV",
        "preprocessing": config.to_dict(),
    }
    return save_bundle(folder, net, meta)


def phi_of(dicom_folder: Path) -> tuple[str, str]:
    """(PatientName, PatientBirthDate) as written in the synthetic DICOM study."""
    first = next(p for p in sorted(dicom_folder.rglob("*")) if p.is_file())
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return str(ds.PatientName), str(ds.PatientBirthDate)


def tune_lesion_fraction(bundle: Path, study, bbox, fraction: float = 0.2) -> None:
    """Shift a random segmenting bundle's lesion-logit bias so about `fraction` of the crop of
    `study` (located by the voxel `bbox`) is segmented: a random net otherwise marks all or nothing."""
    from liverphase.inference import lesion
    from liverphase.inference.predictor import Predictor

    pred = Predictor(bundle)
    present = [p for p in pred.phases if p in study.phases]
    canon = {p: lesion.snap(study.phases[p]) for p in present}
    box = lesion.canonical_box(lesion.box_mask(study.phases["PV"], bbox))
    pre = pred._preprocess(
        study.case_id, canon, present, "PV", box, {"register": 0, "preprocess": 0}
    )
    x, _ = pred._input(pre, present)
    with torch.no_grad():
        seg = pred.model(x).seg_logits[0]
    diff = (seg[1] - seg[0]).numpy()
    model, meta = load_bundle(bundle)
    with torch.no_grad():
        model.seg_out.conv.conv.bias[1] -= float(np.quantile(diff, 1 - fraction))
    keep = ("model", "model_options", "class_names", "reference_phase", "preprocessing")
    save_bundle(bundle, model, {k: meta[k] for k in keep})
