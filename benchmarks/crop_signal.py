"""How much of the label a cv RUN's cached crops carry in simple summaries (a probe, not a model).

For every case of the RUN's preprocessing (read from its cache; built when missing), two feature sets:
- `global`: the crop's mean per phase and channel (what global average pooling gives for free);
- `regions`: the first channel's mean per phase over the lesion core, its 2 mm rim and the 3–10 mm
  ring outside it (`preprocess.kinetics.lesion_regions`, the kinetics baseline's regions, here on the
  crop's grid), plus core−ring and rim−ring;
- `head`: the 36 numbers std_net's region-only class head reads (`models.heads.region_enhancement`),
  here through the true mask instead of the predicted lesion probability.
Each goes through the kinetics baseline's logistic regression on the RUN's own folds; the pooled
out-of-fold AUC says whether the signal is in the input and whether it needs the lesion's regions.

`--head-lrs 3e-4,1e-2` also trains one linear layer on the `head` features per fold the way the
trainer trains that head (AdamW, cosine to zero over `--epochs`, batch 4, all training cases) at each
learning rate: whether a read-out at the network's rate is underfitted (`train.head_lr_scale`).

Usage: python benchmarks/crop_signal.py RUN DATASET [--cache DIR] [--head-lrs LRS] [--epochs N]
Prints one line per feature set (and learning rate); needs crops with a lesion mask.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from liverphase.data.splits import splits_from_json
from liverphase.evaluate.compare import default_cache, run_items
from liverphase.evaluate.kinetics_baseline import logistic_regression_cv
from liverphase.io.nifti import open_dataset
from liverphase.models.heads import region_enhancement
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
    prob = torch.from_numpy((mask > 0).astype(np.float32))[None, None]
    head = region_enhancement(torch.from_numpy(image.astype(np.float32))[None], prob)[0]
    return {
        "global": image.mean(axis=(2, 3, 4)).ravel(),
        "regions": np.concatenate([means.ravel(), contrasts.ravel()]),
        "head": head.numpy(),
    }


def linear_head_probs(
    x: dict[str, np.ndarray], y: dict[str, int], folds: Sequence[Any], lr: float, epochs: int
) -> dict[str, float]:
    """Out-of-fold positive-class probability of one linear layer trained per fold by AdamW."""
    out = {}
    for fold in folds:
        torch.manual_seed(0)
        fc = torch.nn.Linear(len(next(iter(x.values()))), 2)
        opt = torch.optim.AdamW(fc.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        train = torch.tensor(np.stack([x[c] for c in fold["train"]]))
        target = torch.tensor([y[c] for c in fold["train"]])
        for _ in range(epochs):
            for batch in torch.randperm(len(train)).split(4):
                loss = torch.nn.functional.cross_entropy(fc(train[batch]), target[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        with torch.no_grad():
            p = fc(torch.tensor(np.stack([x[c] for c in fold["test"]]))).softmax(1)[:, 1]
        out.update(zip(fold["test"], p.tolist(), strict=True))
    return out


def main() -> None:
    """Print the pooled out-of-fold AUC of each feature set on the RUN's folds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--head-lrs", default="", help="comma-separated learning rates")
    parser.add_argument("--epochs", type=int, default=20)
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
    for name in ("global", "regions", "head"):
        x = {c: f[name] for c, f in feats.items()}
        probs = logistic_regression_cv(x, labels, folds, ds.class_names)
        ids = sorted(probs)
        auc = roc_auc_score([labels[c] == positive for c in ids], [probs[c][-1] for c in ids])
        print(f"{name}: {len(x[ids[0]])} features, {len(ids)} cases, pooled AUC {auc:.3f}")
    y = {c: int(label == positive) for c, label in labels.items()}
    x = {c: f["head"] for c, f in feats.items()}
    for lr in [float(v) for v in args.head_lrs.split(",") if v]:
        p = linear_head_probs(x, y, folds, lr, args.epochs)
        auc = roc_auc_score([y[c] for c in sorted(p)], [p[c] for c in sorted(p)])
        print(f"head, linear layer, AdamW lr {lr:g}, {args.epochs} epochs: pooled AUC {auc:.3f}")


if __name__ == "__main__":
    main()
