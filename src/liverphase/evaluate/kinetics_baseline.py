"""The classical baseline the networks must beat: region kinetics into a logistic regression.

Features per phase (from the cached preprocessing meta, measured in HU on the phases registered and
resampled to 1 mm over the lesion box and its liver ring): mean of the lesion, its core and rim, the
liver around it, lesion minus liver, rim minus core and relative enhancement. A scikit-learn pipeline
(standardise → L2 logistic regression, C chosen by inner CV on the training fold only) is fitted per
fold on exactly the folds the networks use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from liverphase.errors import DatasetError
from liverphase.preprocess.kinetics import kinetics_feature_vector


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
) -> dict[str, np.ndarray]:
    """Out-of-fold class probabilities per case id from a logistic regression on kinetics features."""
    ids = list(items)
    x_all, _ = kinetics_features([items[c] for c in ids])
    labels = {c: items[c]["label"] for c in ids}
    return logistic_regression_cv(
        dict(zip(ids, x_all, strict=True)), labels, folds, class_names, seed
    )


def logistic_regression_cv(
    features: dict[str, np.ndarray],
    labels: dict[str, str],
    folds: Sequence[dict[str, Sequence[str]]],
    class_names: Sequence[str],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Out-of-fold class probabilities of a standardised L2 logistic regression (C tuned inside)."""
    index = {c: i for i, c in enumerate(class_names)}
    probs: dict[str, np.ndarray] = {}
    for fold in folds:
        train = list(fold["train"])
        y = np.array([index[labels[c]] for c in train])
        inner = max(2, min(5, int(np.bincount(y).min())))
        clf = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=10,
                cv=inner,
                max_iter=5000,
                scoring="neg_log_loss",
                random_state=seed,
                # plain L2, spelled out: scikit-learn 1.10 changes both defaults
                l1_ratios=(0.0,),
                use_legacy_attributes=False,
            ),
        )
        clf.fit(np.stack([features[c] for c in train]), y)
        test = list(fold["test"])
        for c, p in zip(
            test, clf.predict_proba(np.stack([features[c] for c in test])), strict=True
        ):
            probs[c] = p
    return probs
