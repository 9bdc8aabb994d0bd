"""How separable the synthetic cohort's classes are before any image is made (an upper bound, not a model).

The CT generator draws each study's lesion class, then its variant, kinetic parameters, shape and the
study's contrast; the image is a function of those draws plus anatomy, noise, blur and breathing that do
not depend on the class. So no model reading the images can separate the classes better than the best
classifier of the draws themselves. This script samples many lesions with the generator's own functions
(`synth.ct.sample_lesion_draws` for the lesion's profile and diameter, `synth.kinetics.sample_contrast`
and `lesion_region_hu`) and reports the cross-validated AUC (HCC vs ICC, 5 stratified folds
over the samples) of two feature sets:
- `regions`: each lesion sub-region's noise-free HU (centre, core, rim) minus the liver's in each of the
  four phases: the most a perfect reader of the lesion's region means could see;
- `all draws`: every sub-region's HU relative to the liver, the shape (lobulation, rim and capsule
  thickness, mosaic, nodules, ducts), the texture amplitude, diameter and the study's contrast.
Each through a logistic regression (what the kinetics baseline uses) and gradient-boosted trees (a
flexible classifier that estimates the best achievable from those numbers).

Usage: python benchmarks/kinetics_ceiling.py [--samples N] [--difficulty realistic|easy] [--seed S]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from liverphase.synth.anatomy import LESION_LABELS, T
from liverphase.synth.ct import CTSynthConfig, sample_lesion_draws
from liverphase.synth.kinetics import CLASSES_2, lesion_region_hu, sample_contrast

READ_REGIONS = (T.LESION_CENTER, T.LESION_CORE, T.LESION_RIM)
SHAPE = ("lobulation", "rim_mm", "capsule_mm", "mosaic", "nodules", "ducts", "center_frac")


def sample_draws(
    rng: np.random.Generator, label: str, config: CTSynthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One lesion's `regions` and `all draws` feature vectors, drawn as the generator draws them."""
    profile, diameter = sample_lesion_draws(rng, config, label)
    contrast = sample_contrast(rng, config.difficulty)
    liver = contrast.liver_nc + contrast.bolus * contrast.enhancement(T.LIVER)
    hu = lesion_region_hu(profile, contrast)
    regions = np.concatenate([hu[int(r)] - liver for r in READ_REGIONS])
    relative = np.concatenate([hu[r] - liver for r in LESION_LABELS if r in hu])
    shape = [float(getattr(profile.morph, k)) for k in SHAPE]
    study = [profile.texture_hu, diameter, contrast.bolus, contrast.timing, contrast.liver_nc]
    return regions, np.concatenate([relative, shape, study])


def cv_auc(x: np.ndarray, y: np.ndarray, classifier: object, seed: int) -> float:
    """Out-of-fold AUC over 5 stratified folds."""
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(classifier, x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def main() -> None:
    """Print the cross-validated AUC of each feature set and classifier."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000, help="lesions per class")
    parser.add_argument("--difficulty", default="realistic", choices=("realistic", "easy"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    config = CTSynthConfig(difficulty=args.difficulty)
    rng = np.random.default_rng(args.seed)
    rows, labels = [], []
    for k, label in enumerate(CLASSES_2):
        for _ in range(args.samples):
            rows.append(sample_draws(rng, label, config))
            labels.append(k)
    y = np.asarray(labels)
    sets = {"regions": np.stack([r[0] for r in rows]), "all draws": np.stack([r[1] for r in rows])}
    classifiers = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "gradient-boosted trees": HistGradientBoostingClassifier(random_state=args.seed),
    }
    print(
        f"{args.difficulty}: {args.samples} lesions per class ({', '.join(CLASSES_2)}), "
        f"atypical fraction {config.atypical_fraction}, seed {args.seed}"
    )
    for name, x in sets.items():
        for cname, clf in classifiers.items():
            auc = cv_auc(x, y, clf, args.seed)
            print(f"{name} ({x.shape[1]} numbers), {cname}: AUC {auc:.3f}")
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
