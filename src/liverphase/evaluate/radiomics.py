"""The radiomics baseline for cirrhosis staging, cross-validated on the folds of a cv RUN.

Features (preprocess/radiomics.py: liver shape, normalised first-order statistics and GLCM texture
per sequence) go into a scikit-learn pipeline: median imputation with missing-value indicators (a
scan lacking a sequence has NaN features for it) → standardisation → multinomial L2 logistic
regression. Its C is chosen per outer fold from `C_GRID` by an inner cross-validation on the
training fold only, grouped by patient and stratified by stage, scored by log-loss: a proper
scoring rule of the probabilities every metric of the report is computed from, smooth in C, where
balanced accuracy is a step function that ties across C on inner folds of a few patients.
The RUN folder it writes reads like a cv RUN (predictions.csv, splits.json, metrics.json,
report.md, run.json), plus features.csv: the case × feature table, reused by the next call.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from liverphase.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from liverphase.data.splits import splits_from_json
from liverphase.errors import ConfigError, DatasetError
from liverphase.evaluate.predictions import Predictions
from liverphase.evaluate.report import markdown_table, write_cv_report
from liverphase.evaluate.slices import staging_results
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.pool import process_pool
from liverphase.preprocess.radiomics import SETTINGS, case_features, feature_names, worker_init

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_INNER_FOLDS = 5
FEATURES_CSV = "features.csv"
CLASSIFIER = (
    "SimpleImputer(median, add_indicator) -> StandardScaler -> LogisticRegression(multinomial, L2)"
)


# ---------------------------------------------------------------- features


def _case_key(ds: NnUNetDataset, case_id: str, sequences: Sequence[str]) -> str:
    """What a case's features depend on: its files (name, size, mtime), sequences and settings."""
    files = []
    for path in ds.case_files(case_id):
        if path.is_file():
            st = path.stat()
            files.append([path.name, st.st_size, st.st_mtime_ns])
    payload = {"files": files, "sequences": list(sequences), "settings": SETTINGS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_features_csv(path: str | Path) -> tuple[list[str], dict[str, tuple[str, np.ndarray]]]:
    """features.csv as (feature names, case id → (cache key, values)); empty when absent."""
    path = Path(path)
    if not path.is_file():
        return [], {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows = list(reader)
    if header[:2] != ["case_id", "key"]:
        return [], {}
    names = header[2:]
    table = {}
    for row in rows:
        if len(row) == len(header):
            table[row[0]] = (row[1], np.array([float(v) if v else math.nan for v in row[2:]]))
    return names, table


def write_features_csv(
    path: str | Path, names: Sequence[str], rows: dict[str, tuple[str, np.ndarray]]
) -> None:
    """Write features.csv atomically: case_id, key (inputs' fingerprint), one column per feature
    (empty = NaN: the sequence is absent), at full precision so a reread fits the same model."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "key", *names])
        for case, (key, values) in rows.items():
            w.writerow([case, key, *("" if math.isnan(v) else repr(float(v)) for v in values)])


def extract_features(
    ds: NnUNetDataset,
    case_ids: Sequence[str],
    sequences: Sequence[str],
    cache: str | Path | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Feature matrix (cases in `case_ids` order × feature_names(sequences)), reusing the rows of
    `cache` (a features.csv) whose inputs are unchanged and rewriting it; stats: computed, reused,
    seconds_per_case (of the computed cases, reading included)."""
    names = feature_names(sequences)
    keys = {c: _case_key(ds, c, sequences) for c in case_ids}
    cached_names, cached = read_features_csv(cache) if cache else ([], {})
    rows = {}
    if cached_names == names:
        rows = {c: cached[c] for c in case_ids if c in cached and cached[c][0] == keys[c]}
    todo = [c for c in case_ids if c not in rows]
    seconds: list[float] = []
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="radiomics", unit="case", disable=not progress or not todo)
    try:
        if workers <= 1 or len(todo) <= 1:
            results = (case_features(str(ds.root), c, sequences) for c in todo)
            for c, (values, sec) in zip(todo, results, strict=True):
                rows[c] = (keys[c], np.array(values))
                seconds.append(sec)
                bar.update(1)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            with process_pool(workers, worker_init, (threads,)) as pool:
                futures = [pool.submit(case_features, str(ds.root), c, sequences) for c in todo]
                for c, fut in zip(todo, futures, strict=True):
                    values, sec = fut.result()
                    rows[c] = (keys[c], np.array(values))
                    seconds.append(sec)
                    bar.update(1)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    if cache:
        write_features_csv(cache, names, {c: rows[c] for c in case_ids})
    stats = {
        "computed": len(todo),
        "reused": len(case_ids) - len(todo),
        "seconds": round(wall, 3),
        "seconds_per_case": round(float(np.mean(seconds)), 4) if seconds else None,
    }
    return np.stack([rows[c][1] for c in case_ids]), names, stats


# ---------------------------------------------------------------- classifier


def make_classifier(c: float = 1.0, seed: int = 0) -> Pipeline:
    """Median imputation (+ missing indicators) → standardisation → multinomial L2 logistic regression."""
    return Pipeline(
        [
            # a feature no training case has (a sequence absent from the whole fold) is kept, as 0
            (
                "impute",
                SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            ),
            ("scale", StandardScaler()),
            # lbfgs fits a multinomial model for more than two classes; l1_ratio 0 is plain L2
            ("logreg", LogisticRegression(C=c, l1_ratio=0.0, max_iter=5000, random_state=seed)),
        ]
    )


def full_probs(model: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba spread onto all `n_classes` columns (a class absent from training gets 0)."""
    probs = np.zeros((len(x), n_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def _neg_log_loss(n_classes: int) -> Callable[[Pipeline, np.ndarray, np.ndarray], float]:
    """A scorer of minus the log-loss over all `n_classes` (an inner fold may lack a class)."""

    def score(model: Pipeline, x: np.ndarray, y: np.ndarray) -> float:
        return -log_loss(
            y, np.clip(full_probs(model, x, n_classes), 1e-15, 1), labels=range(n_classes)
        )

    return score


def inner_splits(
    y: np.ndarray, groups: Sequence[str], seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds of a training fold: stratified by class, grouped by patient; [] when a class
    has fewer than two patients (then C is not tuned)."""
    y, groups = np.asarray(y), np.asarray(groups, dtype=str)
    per_class = [np.unique(groups[y == k]).size for k in np.unique(y)]
    k = min(MAX_INNER_FOLDS, min(per_class))
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros((len(y), 1)), y, groups))


def fit_fold(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str], n_classes: int, seed: int = 0
) -> tuple[Pipeline, float]:
    """The classifier fitted on one training fold, C chosen by patient-grouped inner CV (log-loss)."""
    splits = inner_splits(y, groups, seed)
    if not splits:
        return make_classifier(1.0, seed).fit(x, y), 1.0
    search = GridSearchCV(
        make_classifier(1.0, seed),
        {"logreg__C": list(C_GRID)},
        scoring=_neg_log_loss(n_classes),
        cv=splits,
        refit=True,
    )
    search.fit(x, y)
    return search.best_estimator_, float(search.best_params_["logreg__C"])


# ---------------------------------------------------------------- cross-validation


def _ordered_cases(
    ds: NnUNetDataset, folds: Sequence[dict[str, list[str]]], path: Path
) -> list[str]:
    """The splits' cases in dataset order (as cv writes them), every one known and labelled."""
    listed = {c for f in folds for c in (*f["train"], *f["test"])}
    known = {c.case_id for c in ds.cases}
    unknown = sorted(listed - known)
    if unknown:
        raise DatasetError(f"splits name case(s) {unknown[:5]} the dataset does not have", path)
    unlabelled = sorted(c for c in listed if ds.case(c).label not in ds.class_names)
    if unlabelled:
        raise DatasetError(f"case(s) {unlabelled[:5]} in the splits have no stage label", path)
    return [c.case_id for c in ds.cases if c.case_id in listed]


def radiomics_cv(
    dataset: str | Path,
    reference_run: str | Path,
    out: str | Path,
    sequences: Sequence[str] | None = None,
    n_boot: int = 1000,
    workers: int = 1,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Radiomics + logistic regression on a cv RUN's folds, written as a cv-like RUN at `out`.

    `sequences` restricts the features to those sequences (default: the dataset's); `seed` (default:
    the reference run's) seeds the inner folds and the bootstrap. Returns metrics, predictions, run.
    """
    start = time.perf_counter()
    ds = open_dataset(dataset)
    ref, out = Path(reference_run), Path(out)
    splits_path = ref / "splits.json"
    folds = splits_from_json(splits_path)
    ref_info = json.loads((ref / "run.json").read_text()) if (ref / "run.json").is_file() else {}
    seed = int(ref_info.get("seed", 0)) if seed is None else int(seed)
    sequences = list(sequences or ds.phases)
    unknown = [s for s in sequences if s not in ds.phases]
    if unknown:
        raise ConfigError(
            f"sequences {unknown} are not in the dataset (it has {ds.phases})", "--sequences"
        )
    ids = _ordered_cases(ds, folds, splits_path)
    out.mkdir(parents=True, exist_ok=True)
    x_all, names, feat_stats = extract_features(
        ds, ids, sequences, out / FEATURES_CSV, workers, progress
    )
    row = {c: i for i, c in enumerate(ids)}
    classes = ds.class_index
    y_all = np.array([classes[ds.case(c).label] for c in ids])
    patients = [ds.case(c).patient_id for c in ids]
    probs = np.zeros((len(ids), len(ds.class_names)))
    fold_of = np.full(len(ids), -1)
    chosen = []
    for k, fold in enumerate(folds):
        tr = np.array([row[c] for c in fold["train"]], dtype=int)
        te = np.array([row[c] for c in fold["test"]], dtype=int)
        model, c_value = fit_fold(
            x_all[tr], y_all[tr], [patients[i] for i in tr], len(ds.class_names), seed
        )
        chosen.append(c_value)
        probs[te] = full_probs(model, x_all[te], len(ds.class_names))
        fold_of[te] = k
    tested = fold_of >= 0  # a case only ever in training folds has no out-of-fold prediction
    preds = Predictions(
        case_ids=[c for c, t in zip(ids, tested, strict=True) if t],
        patient_ids=[p for p, t in zip(patients, tested, strict=True) if t],
        folds=fold_of[tested],
        labels=y_all[tested],
        probs=probs[tested],
        class_names=list(ds.class_names),
    )
    atomic_write_bytes(out / "splits.json", splits_path.read_bytes())
    classifier = {
        "pipeline": CLASSIFIER,
        "C_grid": list(C_GRID),
        "inner_cv": f"StratifiedGroupKFold by patient, up to {MAX_INNER_FOLDS} folds, on the training fold only",
        "scoring": "neg_log_loss",
        "chosen_C": chosen,
    }
    # the same ordinal block and staging section as a network's cv run (no slices: per scan only)
    staging, staging_sections = staging_results(out, ds.ordinal, {}, {}, {}, preds, n_boot, seed)
    metrics = write_cv_report(
        out,
        preds,
        title=f"radiomics (logistic regression): {len(folds)}-fold patient-level cross-validation",
        dataset=str(ds.root),
        model="radiomics",
        seed=seed,
        n_boot=n_boot,
        extra_pooled=staging,
        sections=[
            *staging_sections,
            _method_section(sequences, names, classifier, feat_stats, ref),
        ],
    )
    run_info = {
        "model": "radiomics",
        "features": names,
        "sequences": sequences,
        "folds": len(folds),
        "seed": seed,
        "classifier": classifier,
        "feature_settings": SETTINGS,
        "reference_run": str(ref.resolve()),
        "feature_extraction": feat_stats,
        "seconds": round(time.perf_counter() - start, 1),
    }
    atomic_write_json(out / "run.json", run_info)
    return {"metrics": metrics, "predictions": preds, "run": run_info}


def _method_section(
    sequences: Sequence[str],
    names: Sequence[str],
    classifier: dict[str, Any],
    feat_stats: dict[str, Any],
    ref: Path,
) -> str:
    """report.md's account of the features, the classifier and the C chosen per fold."""
    per_case = feat_stats["seconds_per_case"]
    timing = (
        f"{per_case:.2f} s per case" if per_case is not None else "all reused from features.csv"
    )
    rows = [{"fold": k, "C": c} for k, c in enumerate(classifier["chosen_C"])]
    return (
        "## Features and classifier\n\n"
        f"Folds of `{ref}` (splits.json copied). {len(names)} features (features.csv): liver "
        f"shape from the mask, and per sequence ({', '.join(sequences)}) first-order statistics "
        "of the signal divided by the median liver signal and GLCM texture (32 levels between "
        "the liver's 1st and 99th percentiles, 1.5 mm in-plane, distances 1 and 2, 4 directions, "
        f"averaged over axial slices). Extraction: {feat_stats['computed']} computed "
        f"({timing}), {feat_stats['reused']} reused.\n\n"
        f"Classifier: {classifier['pipeline']}; C from {classifier['C_grid']} by inner "
        "cross-validation on the training fold only (stratified, grouped by patient), scored "
        "by log-loss.\n\n" + markdown_table(rows, [("fold", "Fold", "d"), ("C", "Chosen C", "g")])
    )
