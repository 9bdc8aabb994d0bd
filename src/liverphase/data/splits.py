"""Patient-level folds: stratified by label, grouped by patient, seeded, and their splits.json form."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from liverphase.atomic import atomic_write_json
from liverphase.errors import SplitError

Fold = dict[str, list[str]]


def _aligned(values: Sequence[Any] | Mapping[str, Any], ids: Sequence[str], what: str) -> list:
    """Values per case id: a mapping is looked up, a sequence must match `ids` in length."""
    if isinstance(values, Mapping):
        missing = [c for c in ids if c not in values]
        if missing:
            raise SplitError(f"no {what} for case(s) {missing[:5]}")
        return [values[c] for c in ids]
    values = list(values)
    if len(values) != len(ids):
        raise SplitError(f"{len(ids)} case ids but {len(values)} {what} values")
    return values


def _patient_labels(patients: list[Hashable], labels: list[Hashable]) -> dict[Hashable, Hashable]:
    """One label per patient for stratification: its most frequent case label (ties: smallest)."""
    per_patient: dict[Hashable, Counter] = {}
    for pid, lab in zip(patients, labels, strict=True):
        per_patient.setdefault(pid, Counter())[lab] += 1
    return {
        pid: min(c.items(), key=lambda kv: (-kv[1], str(kv[0])))[0]
        for pid, c in per_patient.items()
    }


def _patients_per_class(patients: list[Hashable], labels: list[Hashable]) -> dict[Hashable, int]:
    """Number of distinct patients having at least one case of each label."""
    seen: dict[Hashable, set] = {}
    for pid, lab in zip(patients, labels, strict=True):
        seen.setdefault(lab, set()).add(pid)
    return {lab: len(pids) for lab, pids in seen.items()}


def patient_folds(
    case_ids: Sequence[str],
    patient_ids: Sequence[Hashable] | Mapping[str, Hashable],
    labels: Sequence[Hashable] | Mapping[str, Hashable],
    k: int = 5,
    seed: int = 0,
) -> list[Fold]:
    """K folds of case ids, stratified by label and grouped by patient (no patient on both sides)."""
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = [c for c, n in Counter(ids).items() if n > 1]
        raise SplitError(f"duplicate case ids {dup[:5]}")
    patients = _aligned(patient_ids, ids, "patient_id")
    labs = _aligned(labels, ids, "label")
    if k < 2:
        raise SplitError(f"cross-validation needs at least 2 folds, got k={k}")
    per_class = _patients_per_class(patients, labs)
    smallest = min(per_class, key=lambda lab: per_class[lab])
    if per_class[smallest] < 2:
        # "--folds 1 or fewer" would be no advice: cross-validation needs 2 folds at least
        raise SplitError(
            f"class {smallest!r} has only {per_class[smallest]} patient(s): cross-validation "
            f"needs at least 2 patients of every class; add patients of class {smallest!r}"
        )
    if k > per_class[smallest]:
        raise SplitError(
            f"k={k} folds but class {smallest!r} has only {per_class[smallest]} patient(s): "
            f"every test fold needs a patient of every class; use --folds {per_class[smallest]} "
            f"or fewer, or add patients of class {smallest!r}"
        )
    # Encode labels and groups as integers so mixed types sort and stratify consistently.
    y = np.unique(np.asarray([str(v) for v in labs]), return_inverse=True)[1]
    groups = np.unique(np.asarray([str(v) for v in patients]), return_inverse=True)[1]
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = []
    for train_idx, test_idx in splitter.split(np.zeros(len(ids)), y, groups):
        folds.append(
            {
                "train": [ids[i] for i in sorted(train_idx)],
                "test": [ids[i] for i in sorted(test_idx)],
            }
        )
    return folds


def inner_validation_split(
    train_ids: Sequence[str],
    patient_ids: Sequence[Hashable] | Mapping[str, Hashable],
    labels: Sequence[Hashable] | Mapping[str, Hashable],
    fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split training cases into (train, val) by patient, about `fraction` of each class's patients."""
    ids = [str(c) for c in train_ids]
    patients = _aligned(patient_ids, ids, "patient_id")
    labs = _aligned(labels, ids, "label")
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"validation fraction must be in (0, 1), got {fraction}")
    by_label = _patient_labels(patients, labs)
    if len(by_label) < 2:
        raise SplitError(f"a validation split needs at least 2 patients, got {len(by_label)}")
    rng = np.random.default_rng(seed)
    val_patients: set = set()
    # Per class, a seeded draw of round(fraction * n) patients; at least one when the class has
    # two or more patients, so validation sees every class that training keeps.
    for lab in sorted({str(v) for v in by_label.values()}):
        members = sorted((p for p, v in by_label.items() if str(v) == lab), key=str)
        n_val = int(round(fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen = rng.permutation(len(members))[:n_val]
        val_patients.update(members[i] for i in chosen)
    if not val_patients:
        # Every class has a single patient: give validation one of them.
        val_patients.add(sorted(by_label, key=str)[int(rng.integers(len(by_label)))])
    train = [c for c, p in zip(ids, patients, strict=True) if p not in val_patients]
    val = [c for c, p in zip(ids, patients, strict=True) if p in val_patients]
    return train, val


def check_folds(
    folds: Sequence[Fold],
    case_ids: Sequence[str] | None = None,
    patient_ids: Sequence[Hashable] | Mapping[str, Hashable] | None = None,
) -> None:
    """Raise SplitError unless test folds partition the cases and no patient sits on both sides."""
    seen: Counter = Counter()
    for i, fold in enumerate(folds):
        train, test = set(fold["train"]), set(fold["test"])
        if train & test:
            raise SplitError(f"fold {i}: case(s) {sorted(train & test)[:5]} in train and test")
        seen.update(test)
    twice = [c for c, n in seen.items() if n > 1]
    if twice:
        raise SplitError(f"case(s) {sorted(twice)[:5]} in more than one test fold")
    if case_ids is not None:
        ids = [str(c) for c in case_ids]
        missing = sorted(set(ids) - set(seen))
        extra = sorted(set(seen) - set(ids))
        if missing or extra:
            raise SplitError(
                f"test folds miss cases {missing[:5]} / hold unknown cases {extra[:5]}"
            )
        if patient_ids is not None:
            pid = dict(zip(ids, _aligned(patient_ids, ids, "patient_id"), strict=True))
            for i, fold in enumerate(folds):
                shared = {pid[c] for c in fold["train"]} & {pid[c] for c in fold["test"]}
                if shared:
                    raise SplitError(
                        f"fold {i}: patient(s) {sorted(map(str, shared))[:5]} on both sides"
                    )


def splits_to_json(folds: Sequence[Fold]) -> dict[str, Fold]:
    """Folds as the splits.json object: {"0": {"train": [...], "test": [...]}, ...}."""
    return {
        str(i): {"train": [str(c) for c in f["train"]], "test": [str(c) for c in f["test"]]}
        for i, f in enumerate(folds)
    }


def splits_from_json(obj: Mapping[str, Any] | str | Path) -> list[Fold]:
    """Folds from a splits.json object or file, validated (keys 0..k-1, disjoint train/test)."""
    path = None
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SplitError(f"cannot read splits: {exc}", path) from exc
    if not isinstance(obj, Mapping) or not obj:
        raise SplitError("splits must be a non-empty object keyed by fold index", path)
    keys = sorted(obj, key=lambda s: int(s) if str(s).isdigit() else -1)
    if keys != [str(i) for i in range(len(keys))]:
        raise SplitError(f"fold keys must be '0'..'{len(keys) - 1}', got {list(obj)}", path)
    folds = []
    for key in keys:
        fold = obj[key]
        if not isinstance(fold, Mapping) or not all(
            isinstance(fold.get(s), list) for s in ("train", "test")
        ):
            raise SplitError(f"fold {key} needs 'train' and 'test' lists", path)
        folds.append(
            {"train": [str(c) for c in fold["train"]], "test": [str(c) for c in fold["test"]]}
        )
    try:
        check_folds(folds)
    except SplitError as exc:
        raise SplitError(exc.problem, path) from None
    return folds


def write_splits(path: str | Path, folds: Sequence[Fold]) -> None:
    """Write folds to splits.json atomically."""
    atomic_write_json(path, splits_to_json(folds))


def label_subset(
    train_ids: Sequence[str],
    patient_ids: Sequence[Hashable] | Mapping[str, Hashable],
    labels: Sequence[Hashable] | Mapping[str, Hashable],
    fraction: float,
    seed: int = 0,
) -> list[str]:
    """The cases of a seeded `fraction` of each class's patients (at least two per class), for a
    label-efficiency curve: the training fold keeps only these labels, the test fold is untouched."""
    ids = [str(c) for c in train_ids]
    if not 0.0 < fraction <= 1.0:
        raise SplitError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return ids
    patients = _aligned(patient_ids, ids, "patient_id")
    by_label = _patient_labels(patients, _aligned(labels, ids, "label"))
    rng = np.random.default_rng([seed, 7])
    kept: set = set()
    for lab in sorted({str(v) for v in by_label.values()}):
        members = sorted((p for p, v in by_label.items() if str(v) == lab), key=str)
        n = min(len(members), max(2, int(round(fraction * len(members)))))
        kept.update(members[i] for i in rng.permutation(len(members))[:n])
    return [c for c, p in zip(ids, patients, strict=True) if p in kept]
