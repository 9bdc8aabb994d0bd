"""The kinetics baseline's features measured on grids of different voxel size (a probe, not a model).

For every case of a cv RUN (its folds, its cache for the recorded registration transforms), the lesion
core, rim and liver ring are measured on the phases resampled onto the mask's box plus the ring at: each
scan's own voxel size, 1 mm, 0.63 x 0.63 x 2.5 mm (the crops' median) and 2 mm; plus the scan's grid with
the mask resampled linearly (> 0.5) and the crops' 20-feature set (core, rim, liver, core-liver,
rim-liver) on the scan's grid. Each goes through the kinetics baseline's logistic regression on the
RUN's folds and prints its pooled out-of-fold AUC.

Usage: python benchmarks/kinetics_grid.py RUN DATASET CACHE   (13 min for 240 cases beside a training run)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from liverphase.data.splits import splits_from_json
from liverphase.evaluate.compare import run_items
from liverphase.evaluate.kinetics_baseline import logistic_regression_cv
from liverphase.io.nifti import open_dataset
from liverphase.preprocess import roi as R
from liverphase.preprocess.geometry import to_canonical
from liverphase.preprocess.kinetics import (
    KINETICS_MARGIN_MM,
    kinetics_feature_vector,
    measure_kinetics,
)
from liverphase.preprocess.register import transform_from_dict

SPACINGS = {
    "native": None,
    "1 mm iso": (1.0, 1.0, 1.0),
    "0.63x0.63x2.5 (crop-like)": (0.63, 0.63, 2.5),
    "2 mm iso": (2.0, 2.0, 2.0),
}


def crop_style_features(k: dict) -> np.ndarray:
    """The crops' 20 region features (crop_signal's `regions`) from a kinetics dict."""
    per = k["per_phase"]
    means = [per[p][r] for r in ("core", "rim", "liver") for p in k["phases"]]
    contrasts = [per[p][r] - per[p]["liver"] for r in ("core", "rim") for p in k["phases"]]
    return np.nan_to_num(np.array(means + contrasts))


def main() -> None:
    """Print the pooled AUC of the baseline's features per measuring grid."""
    run, ds, cache = Path(sys.argv[1]), open_dataset(sys.argv[2]), Path(sys.argv[3])
    items = run_items(run, ds, cache)
    folds = splits_from_json(run / "splits.json")
    labels = {c: it["label"] for c, it in items.items()}
    names = [*SPACINGS, "native, mask linear>0.5", "native, the crops' 20 features"]
    feats: dict[str, dict[str, np.ndarray]] = {k: {} for k in names}
    for c, it in items.items():
        meta = json.loads((Path(it["image"]).parent / "meta.json").read_text())
        study = ds.load_study(c)
        phases, ref = meta["phases"], study.reference_phase
        canon = {p: to_canonical(study.phases[p]) for p in phases}
        reg = meta["registration"]
        tx = {p: transform_from_dict(reg[p]) if p in reg else None for p in phases}
        pads = {p: float(sitk.GetArrayViewFromImage(canon[p])[::2, ::2, ::2].min()) for p in phases}
        box = R.box_from_mask(study.mask, R.frame_of(study.reference)).expand(KINETICS_MARGIN_MM)
        for name, sp in SPACINGS.items():
            spacing = canon[ref].GetSpacing() if sp is None else sp
            grid = R.spacing_grid(box, spacing, 128 if sp is None else 256)
            vals = R.phases_on_grid(canon, grid, tx, phases, pads)
            mask = sitk.GetArrayFromImage(R.resample_to_grid(study.mask, grid, None, "nearest", 0))
            k = measure_kinetics(vals, mask, grid.scale_mm, phases, ref)
            feats[name][c] = kinetics_feature_vector(k)[0]
            if sp is None:
                feats["native, the crops' 20 features"][c] = crop_style_features(k)
                mf = sitk.Cast(study.mask, sitk.sitkFloat32)
                linear = R.resample_to_grid(mf, grid, None, "linear", 0.0)
                ml = (sitk.GetArrayFromImage(linear) > 0.5).astype(np.uint8)
                k = measure_kinetics(vals, ml, grid.scale_mm, phases, ref)
                feats["native, mask linear>0.5"][c] = kinetics_feature_vector(k)[0]
    positive = ds.class_names[-1]
    for name, x in feats.items():
        p = logistic_regression_cv(x, labels, folds, ds.class_names, 0)
        ids = sorted(p)
        auc = roc_auc_score([labels[c] == positive for c in ids], [p[c][-1] for c in ids])
        print(f"{name}: AUC {auc:.3f}", flush=True)


if __name__ == "__main__":
    main()
