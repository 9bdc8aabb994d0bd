"""The classical baseline the networks must beat: region kinetics into a logistic regression.

Features per phase (from the cached preprocessing meta, measured in HU on the phases registered and
resampled to 1 mm over the lesion box and its liver ring): mean of the lesion, its core and rim, the
liver around it, lesion minus liver, rim minus core and relative enhancement. The features are read
through the true lesion mask, so every table names the baseline `KINETICS_LABEL` ("kinetics
regression (true mask)"): it is given the lesion the networks have to find. A scikit-learn pipeline
(standardise → L2 logistic regression) is fitted per fold on exactly the folds the networks use, C
chosen by log-loss over inner folds of the training fold only, stratified by class and grouped by
patient (a patient's studies never on both sides of an inner split). When a class of a training fold
has fewer than two patients no grouped inner split exists: C is then fixed at 1, with a warning, and
the fold's record says so.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from liverphase.errors import DatasetError
from liverphase.preprocess.kinetics import kinetics_feature_vector

# The baseline's name in every generated table: it reads the lesion through the true mask.
KINETICS_LABEL = "kinetics regression (true mask)"
MAX_INNER_FOLDS = 5
FALLBACK_C = 1.0


def kinetics_features(items: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Feature matrix (N, F) of cached items, read from each entry's meta.json."""
    rows, names = [], []
    for item in items:
        meta_path = Path(item["image"]).parent / "meta.json"
        meta = json.loads(meta_path.read_text())
        if "kinetics" not in meta:
            raise DatasetError(
                f"case {item['case_id']!r} has no lesion mask, so no kinetics", meta_path
            )
        vec, names = kinetics_feature_vector(meta["kinetics"])
        rows.append(vec)
    return np.stack(rows), names


def kinetics_baseline_cv(
    items: dict[str, dict[str, Any]],
    folds: Sequence[dict[str, Sequence[str]]],
    class_names: Sequence[str],
    seed: int = 0,
    record: list[dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Out-of-fold class probabilities per case id from a logistic regression on kinetics features
    (true mask), C chosen by patient-grouped inner CV; `record` collects each fold's choice."""
    ids = list(items)
    x_all, _ = kinetics_features([items[c] for c in ids])
    labels = {c: items[c]["label"] for c in ids}
    missing = [c for c in ids if "patient_id" not in items[c]]
    if missing:
        raise DatasetError(f"case(s) {missing[:3]} have no patient id to group the inner folds")
    groups = {c: str(items[c]["patient_id"]) for c in ids}
    return logistic_regression_cv(
        dict(zip(ids, x_all, strict=True)), labels, folds, class_names, seed, groups, record
    )


def inner_patient_splits(
    y: np.ndarray, groups: Sequence[str] | np.ndarray, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds of a training fold, stratified by class and grouped by patient; [] when a class
    has fewer than two patients (or fewer than two splits keep every class in training)."""
    y, groups = np.asarray(y), np.asarray(groups).astype(str)
    per_class = [np.unique(groups[y == k]).size for k in np.unique(y)]
    k = min(MAX_INNER_FOLDS, min(per_class))
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    classes = np.unique(y)
    splits = [
        (train, val)
        for train, val in splitter.split(np.zeros((y.size, 1)), y, groups)
        if val.size and np.array_equal(np.unique(y[train]), classes)
    ]
    return splits if len(splits) >= 2 else []


def _classifier(splits: list[tuple[np.ndarray, np.ndarray]], seed: int) -> Pipeline:
    """Standardise → L2 logistic regression; C tuned over `splits`, fixed at FALLBACK_C without."""
    if not splits:
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(C=FALLBACK_C, l1_ratio=0.0, max_iter=5000, random_state=seed),
        )
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(
            Cs=10,
            cv=splits,
            max_iter=5000,
            scoring="neg_log_loss",
            random_state=seed,
            # plain L2, spelled out: scikit-learn 1.10 changes both defaults
            l1_ratios=(0.0,),
            use_legacy_attributes=False,
        ),
    )


def logistic_regression_cv(
    features: dict[str, np.ndarray],
    labels: dict[str, str],
    folds: Sequence[dict[str, Sequence[str]]],
    class_names: Sequence[str],
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    record: list[dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Out-of-fold class probabilities of a standardised L2 logistic regression, C tuned on inner
    folds grouped by `groups` (patient per case id; None: every case its own patient)."""
    index = {c: i for i, c in enumerate(class_names)}
    probs: dict[str, np.ndarray] = {}
    for k, fold in enumerate(folds):
        train = list(fold["train"])
        y = np.array([index[labels[c]] for c in train])
        patients = [groups[c] if groups is not None else c for c in train]
        splits = inner_patient_splits(y, patients, seed)
        if not splits:
            warnings.warn(
                f"fold {k}: a class has fewer than two patients in training, so no patient-grouped "
                f"inner split exists; C fixed at {FALLBACK_C:g}",
                stacklevel=2,
            )
        clf = _classifier(splits, seed)
        clf.fit(np.stack([features[c] for c in train]), y)
        if record is not None:
            last = clf[-1]
            record.append(
                {
                    "fold": k,
                    "C": float(last.C_ if splits else last.C),
                    "inner_folds": len(splits),
                    "inner_cv": "StratifiedGroupKFold by patient" if splits else "none (C fixed)",
                }
            )
        test = list(fold["test"])
        for c, p in zip(
            test, clf.predict_proba(np.stack([features[c] for c in test])), strict=True
        ):
            probs[c] = p
    return probs
