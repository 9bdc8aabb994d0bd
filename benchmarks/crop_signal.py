"""How much of the label a cv RUN's cached crops carry in simple summaries (a probe, not a model).

For every case of the RUN's preprocessing (read from its cache; built when missing), these feature sets:
- `global`: the crop's mean per phase and channel (what global average pooling gives for free);
- `regions`: the first channel's mean per phase over the lesion core, its 2 mm rim and the 3–10 mm
  ring outside it (`preprocess.kinetics.lesion_regions`, the kinetics baseline's regions, here on the
  crop's grid), plus core−ring and rim−ring;
- `head`: the 36 numbers std_net's region-only class head reads (`models.heads.region_enhancement`),
  here through the true mask instead of the predicted lesion probability;
- `radial`: the first channel's mean per phase over the lesion cut by normalised depth (distance
  transform) into a centre (< 0.45), a middle and an outer band (> 0.75), each minus the 3–10 mm
  ring, plus `regions`' core−ring and rim−ring (so not a pure radial reading; `head radial` is);
- `head radial`: the 48 numbers of the head's `region_reading=radial` through the true mask.
Each goes through the kinetics baseline's logistic regression on the RUN's own folds; the pooled
out-of-fold AUC says whether the signal is in the input and whether it needs the lesion's regions.

`--predicted` (a RUN of a segmenting model) also reads the `head` features through each fold's own
predicted lesion probability (fold_k/bundle, no test-time augmentation; fold k's model for fold k's
training and test cases), the way the model's region-only head reads them: whether the class signal is
lost in the read-out or in the mask. It also reads the `regions` features through the predicted mask
at 0.5 (the kinetics baseline's 2 mm rim and 3–10 mm ring instead of the head's one-voxel bands), the
`radial` ones likewise and the `head radial` ones through the soft probability. It
prints the test-fold Dice of that mask (at 0.5), the AUC with the predicted mask, with one region
(core, rim, around) read through the true mask instead, and with
`--pool-module NAME` the lesion-weighted mean of the input of that submodule (`seg_out`: std_net's last
decoder features) alone and beside the `head` features: whether the segmentation's own features carry
class signal.

`--head-lrs 3e-4,1e-2` also trains one linear layer on the `head` features per fold the way the
trainer trains that head (AdamW, cosine to zero over `--epochs`, batch 4, all training cases) at each
learning rate: whether a read-out at the network's rate is underfitted (`train.head_lr_scale`).

Usage: python benchmarks/crop_signal.py RUN DATASET [--cache DIR] [--head-lrs LRS] [--epochs N]
       [--predicted [--pool-module NAME]]
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
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from liverphase.data.splits import splits_from_json
from liverphase.evaluate.compare import default_cache, run_items
from liverphase.evaluate.kinetics_baseline import logistic_regression_cv
from liverphase.evaluate.segmentation import segmentation_metrics
from liverphase.io.nifti import open_dataset
from liverphase.models.heads import region_enhancement
from liverphase.preprocess.kinetics import lesion_regions
from liverphase.train.bundle import load_bundle

REGIONS = ("core", "rim", "around")


def radial_bands(mask: np.ndarray, spacing_mm: Sequence[float]) -> dict[str, np.ndarray]:
    """The lesion cut by normalised depth (0 at its deepest point, 1 at its edge) into a centre
    (< 0.45: the generator's central region), a middle and an outer band (> 0.75)."""
    lesion = mask > 0
    inside = ndimage.distance_transform_edt(lesion, sampling=np.asarray(spacing_mm, float))
    depth = 1.0 - inside / max(float(inside.max()), 1e-6)
    bands = {
        "centre": lesion & (depth < 0.45),
        "middle": lesion & (depth >= 0.45) & (depth <= 0.75),
        "outer": lesion & (depth > 0.75),
    }
    return {k: (v if v.any() else lesion) for k, v in bands.items()}


FEATURE_SETS = ("global", "regions", "head", "radial", "head radial")


def crop_features(
    image: np.ndarray,
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    names: Sequence[str] = FEATURE_SETS,
) -> dict[str, np.ndarray]:
    """(P, C, D, H, W) crop, its (D, H, W) mask and (z, y, x) spacing → the named feature vectors."""
    out: dict[str, np.ndarray] = {}
    if "global" in names:
        out["global"] = image.mean(axis=(2, 3, 4)).ravel()
    wide = image[:, 0]
    if "regions" in names or "radial" in names:
        regions = lesion_regions(mask, spacing_mm)
        means = np.stack(
            [wide[:, regions[r]].mean(axis=1) for r in ("core", "rim", "surround")]
        )  # (3, P)
        contrasts = means[:2] - means[2:3]
        out["regions"] = np.concatenate([means.ravel(), contrasts.ravel()])
    if "radial" in names:
        bands = radial_bands(mask, spacing_mm)
        radial = np.stack([wide[:, b].mean(axis=1) for b in bands.values()]) - means[2:3]
        out["radial"] = np.concatenate([radial.ravel(), contrasts.ravel()])
    prob = torch.from_numpy((mask > 0).astype(np.float32))[None, None]
    x = torch.from_numpy(image.astype(np.float32))[None]
    for name, reading in (("head", "shells"), ("head radial", "radial")):
        if name in names:
            out[name] = region_enhancement(x, prob, reading=reading)[0].numpy()
    return {name: out[name] for name in names}


def binary_mask(prob: np.ndarray) -> np.ndarray:
    """The predicted lesion at 0.5, or its most likely half when nothing reaches 0.5."""
    mask = prob > 0.5
    return mask if mask.any() else prob >= 0.5 * prob.max()


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
                loss = F.cross_entropy(fc(train[batch]), target[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        with torch.no_grad():
            p = fc(torch.tensor(np.stack([x[c] for c in fold["test"]]))).softmax(1)[:, 1]
        out.update(zip(fold["test"], p.tolist(), strict=True))
    return out


@torch.no_grad()
def predicted_readings(
    bundle: Path, images: dict[str, torch.Tensor], pool_module: str | None
) -> dict[str, dict[str, np.ndarray]]:
    """Per case: the fold model's lesion probability (D, H, W) and, with `pool_module`, the
    lesion-weighted mean of that submodule's input (its channels)."""
    model, _ = load_bundle(bundle)
    taken: dict[str, torch.Tensor] = {}
    if pool_module:
        modules = dict(model.named_modules())
        if pool_module not in modules:
            raise SystemExit(f"{bundle}: the model has no submodule {pool_module!r}")
        modules[pool_module].register_forward_hook(lambda m, a, o: taken.update(x=a[0]))
    out = {}
    for case, x in images.items():
        prob = model(x).seg_logits.softmax(dim=1)[:, 1:2]
        row = {"prob": prob[0, 0].numpy()}
        if pool_module:
            w = F.interpolate(prob, size=taken["x"].shape[2:], mode="trilinear")
            row["pooled"] = ((taken["x"] * w).sum(dim=(2, 3, 4)) / (w.sum() + 1e-6))[0].numpy()
        out[case] = row
    return out


def pooled_auc(
    per_fold: Sequence[dict[str, np.ndarray]],
    labels: dict[str, str],
    folds: Sequence[Any],
    class_names: Sequence[str],
) -> float:
    """Pooled out-of-fold AUC of the logistic regression, fold k fitted on its own features."""
    probs: dict[str, np.ndarray] = {}
    for features, fold in zip(per_fold, folds, strict=True):
        probs.update(logistic_regression_cv(features, labels, [fold], class_names))
    ids = sorted(probs)
    return float(
        roc_auc_score([labels[c] == class_names[-1] for c in ids], [probs[c][-1] for c in ids])
    )


def print_predicted(
    run: Path,
    crops: dict[str, tuple[np.ndarray, np.ndarray, Sequence[float]]],
    true_head: dict[str, np.ndarray],
    labels: dict[str, str],
    folds: Sequence[Any],
    class_names: Sequence[str],
    pool_module: str | None,
) -> None:
    """The `--predicted` lines: the head features through each fold's predicted mask."""
    images = {c: torch.from_numpy(crop[0].astype(np.float32))[None] for c, crop in crops.items()}

    def head(case: str, prob: np.ndarray, reading: str = "shells") -> np.ndarray:
        p = torch.from_numpy(prob)[None, None]
        return region_enhancement(images[case], p, reading=reading)[0].numpy()

    sets: dict[str, list[dict[str, np.ndarray]]] = {}
    dice = []
    for k, fold in enumerate(folds):
        readings = predicted_readings(run / f"fold_{k}" / "bundle", images, pool_module)
        for c in fold["test"]:
            _, mask, spacing = crops[c]
            dice.append(segmentation_metrics(readings[c]["prob"] > 0.5, mask, spacing)["dice"])
        pred_head = {c: head(c, r["prob"]) for c, r in readings.items()}
        sets.setdefault("head, predicted mask", []).append(pred_head)
        sets.setdefault("head radial, predicted mask", []).append(
            {c: head(c, r["prob"], "radial") for c, r in readings.items()}
        )
        through = {
            c: crop_features(
                crops[c][0], binary_mask(r["prob"]), crops[c][2], ("regions", "radial")
            )
            for c, r in readings.items()
        }
        for name in ("regions", "radial"):
            sets.setdefault(f"{name}, predicted mask", []).append(
                {c: f[name] for c, f in through.items()}
            )
        for i, region in enumerate(REGIONS):
            mixed = {}
            for c, v in pred_head.items():
                # region_enhancement's layout: (phase, region, channel) flattened
                v = v.reshape(len(images[c][0]), len(REGIONS), -1).copy()
                v[:, i] = true_head[c].reshape(v.shape)[:, i]
                mixed[c] = v.ravel()
            sets.setdefault(f"head, predicted mask, true {region}", []).append(mixed)
        if pool_module:
            pooled = {c: r["pooled"] for c, r in readings.items()}
            both = {c: np.concatenate([pred_head[c], pooled[c]]) for c in pooled}
            sets.setdefault(f"lesion-pooled {pool_module} input", []).append(pooled)
            sets.setdefault(f"head, predicted mask + pooled {pool_module}", []).append(both)
    print(f"predicted mask: test-fold Dice {np.mean(dice):.3f} (median {np.median(dice):.3f})")
    for name, per_fold in sets.items():
        width = len(next(iter(per_fold[0].values())))
        print(
            f"{name}: {width} features, pooled AUC {pooled_auc(per_fold, labels, folds, class_names):.3f}"
        )


def main() -> None:
    """Print the pooled out-of-fold AUC of each feature set on the RUN's folds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--head-lrs", default="", help="comma-separated learning rates")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--predicted", action="store_true", help="read through the folds' masks")
    parser.add_argument("--pool-module", default=None, help="with --predicted: a submodule name")
    args = parser.parse_args()
    ds = open_dataset(args.dataset)
    items = run_items(args.run, ds, args.cache or default_cache(args.run))
    folds = splits_from_json(args.run / "splits.json")
    crops = {}
    for c, it in items.items():
        if it["mask"] is None:
            raise SystemExit(f"{args.dataset}: case {c} has no lesion mask, so no lesion regions")
        meta = json.loads((Path(it["image"]).parent / "meta.json").read_text())
        crops[c] = (np.load(it["image"]), np.load(it["mask"]), meta["scale_mm"])
    feats = {c: crop_features(*crop) for c, crop in crops.items()}
    labels = {c: it["label"] for c, it in items.items()}
    positive = ds.class_names[-1]
    for name in ("global", "regions", "head", "radial", "head radial"):
        x = {c: f[name] for c, f in feats.items()}
        auc = pooled_auc([x] * len(folds), labels, folds, ds.class_names)
        print(f"{name}: {len(x[next(iter(x))])} features, {len(x)} cases, pooled AUC {auc:.3f}")
    y = {c: int(label == positive) for c, label in labels.items()}
    x = {c: f["head"] for c, f in feats.items()}
    for lr in [float(v) for v in args.head_lrs.split(",") if v]:
        p = linear_head_probs(x, y, folds, lr, args.epochs)
        auc = roc_auc_score([y[c] for c in sorted(p)], [p[c] for c in sorted(p)])
        print(f"head, linear layer, AdamW lr {lr:g}, {args.epochs} epochs: pooled AUC {auc:.3f}")
    if args.predicted:
        print_predicted(args.run, crops, x, labels, folds, ds.class_names, args.pool_module)


if __name__ == "__main__":
    main()
