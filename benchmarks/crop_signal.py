"""How much of the label a cv RUN's cached crops carry in simple summaries (a probe, not a model).

For every case of the RUN's preprocessing (read from its cache; built when missing), two feature sets:
- `global`: the crop's mean per phase and channel (what global average pooling gives for free);
- `regions`: the first channel's mean per phase over the lesion core, its 2 mm rim and the 3–10 mm
  ring outside it (`preprocess.kinetics.lesion_regions`, the kinetics baseline's regions, here on the
  crop's grid), plus core−ring and rim−ring.
Each goes through the kinetics baseline's logistic regression on the RUN's own folds; the pooled
out-of-fold AUC says whether the signal is in the input and whether it needs the lesion's regions.

Usage: python benchmarks/crop_signal.py RUN DATASET [--cache DIR]
Prints one line per feature set; needs crops with a lesion mask.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from liverphase.data.splits import splits_from_json
from liverphase.evaluate.compare import default_cache, run_items
from liverphase.evaluate.kinetics_baseline import logistic_regression_cv
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.kinetics import lesion_regions


def crop_features(
    image: np.ndarray, mask: np.ndarray, spacing_mm: Sequence[float]
) -> dict[str, np.ndarray]:
    """(P, C, D, H, W) crop, its (D, H, W) mask and (z, y, x) spacing → both feature vectors."""
    regions = lesion_regions(mask, spacing_mm)
    wide = image[:, 0]
    means = np.stack(
        [wide[:, regions[r]].mean(axis=1) for r in ("core", "rim", "surround")]
    )  # (3, P)
    contrasts = means[:2] - means[2:3]
    return {
        "global": image.mean(axis=(2, 3, 4)).ravel(),
        "regions": np.concatenate([means.ravel(), contrasts.ravel()]),
    }


def main() -> None:
    """Print the pooled out-of-fold AUC of each feature set on the RUN's folds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    ds = open_dataset(args.dataset)
    items = run_items(args.run, ds, args.cache or default_cache(args.run))
    folds = splits_from_json(args.run / "splits.json")
    feats = {}
    for c, it in items.items():
        if it["mask"] is None:
            raise SystemExit(f"{args.dataset}: case {c} has no lesion mask, so no lesion regions")
        meta = json.loads((Path(it["image"]).parent / "meta.json").read_text())
        feats[c] = crop_features(np.load(it["image"]), np.load(it["mask"]), meta["scale_mm"])
    labels = {c: it["label"] for c, it in items.items()}
    positive = ds.class_names[-1]
    for name in ("global", "regions"):
        x = {c: f[name] for c, f in feats.items()}
        probs = logistic_regression_cv(x, labels, folds, ds.class_names)
        ids = sorted(probs)
        auc = roc_auc_score([labels[c] == positive for c in ids], [probs[c][-1] for c in ids])
        print(f"{name}: {len(x[ids[0]])} features, {len(ids)} cases, pooled AUC {auc:.3f}")


if __name__ == "__main__":
    main()
