"""Linear probe of a pretrained encoder: how linearly separable its pooled features make the classes.

Features: the encoder's deepest map of every present phase, global-average-pooled, averaged over
the present phases (the same pooling the two-view objectives train through). A logistic regression
(standardised features, L2, C = 1) is fitted in patient-grouped, label-stratified folds
(`data.splits.patient_folds`), and the out-of-fold probabilities of all labeled studies give one
AUC: binary, or the macro average of one-vs-rest AUCs for three or more classes. NaN when the
labels cannot support two folds (fewer than two patients in some class, or a single class).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from liverphase.data.dataset import CachedStudyDataset
from liverphase.data.splits import patient_folds


def pooled_features(
    encoder: torch.nn.Module, x: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """x (B, P, C, D, H, W), present (B, P) bool → (B, F): each present phase's deepest map averaged
    over space, then over the present phases (absent phases never reach the encoder)."""
    b, p = x.shape[:2]
    keep = present.reshape(-1).to(x.device)
    feats = encoder(x.flatten(0, 1)[keep]).mean(dim=(2, 3, 4))
    owner = torch.arange(b, device=x.device).repeat_interleave(p)[keep]
    sums = feats.new_zeros(b, feats.shape[1]).index_add(0, owner, feats)
    return sums / present.sum(dim=1, keepdim=True).clamp(min=1).to(sums)


def encode(
    encoder: torch.nn.Module, dataset: CachedStudyDataset, device: torch.device, batch_size: int
) -> np.ndarray:
    """Pooled features (N, F) of every study of `dataset` (un-augmented), in item order."""
    was_training = encoder.training
    encoder.eval()
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            x = batch["image"].to(device)
            present = batch.get("phase_mask")
            if present is None:
                present = torch.ones(x.shape[:2], dtype=torch.bool)
            out.append(pooled_features(encoder, x, present.to(device)).float().cpu().numpy())
    encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def probe_auc(
    features: np.ndarray,
    labels: Sequence[str],
    patients: Sequence[str],
    folds: int = 5,
    seed: int = 0,
) -> float:
    """Out-of-fold (patient-grouped) logistic-regression AUC of `features` for `labels`; macro
    one-vs-rest for 3+ classes; NaN when the labels cannot be split into two folds."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        return math.nan
    per_class = [
        len({p for p, lab in zip(patients, labels, strict=True) if lab == c}) for c in classes
    ]
    k = min(folds, min(per_class))
    if k < 2:
        return math.nan
    ids = [str(i) for i in range(len(labels))]
    y = np.array([classes.index(lab) for lab in labels])
    probs = np.zeros((len(labels), len(classes)))
    for fold in patient_folds(ids, list(patients), list(labels), k=k, seed=seed):
        tr = np.array([int(i) for i in fold["train"]])
        te = np.array([int(i) for i in fold["test"]])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(features[tr], y[tr])
        probs[np.ix_(te, clf.classes_)] = clf.predict_proba(features[te])
    if len(classes) == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    probs /= probs.sum(axis=1, keepdims=True)  # a fold missing a class leaves a row short of 1
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
