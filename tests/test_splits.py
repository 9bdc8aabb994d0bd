"""Patient-level folds: no leakage, full coverage, stratification, determinism, splits.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverphase.data.splits import (
    SplitError,
    check_folds,
    inner_validation_split,
    patient_folds,
    splits_from_json,
    splits_to_json,
    write_splits,
)
from liverphase.errors import DatasetError


@pytest.fixture
def cohort() -> tuple[list[str], list[str], list[str]]:
    """60 patients with 1–3 studies each, about a third ICC; labels constant per patient."""
    rng = np.random.default_rng(7)
    ids, patients, labels = [], [], []
    for p in range(60):
        label = "ICC" if rng.random() < 0.35 else "HCC"
        for s in range(int(rng.integers(1, 4))):
            ids.append(f"P{p:02d}_s{s}")
            patients.append(f"P{p:02d}")
            labels.append(label)
    return ids, patients, labels


def test_no_patient_on_both_sides_and_every_case_tested_once(cohort):
    ids, patients, labels = cohort
    folds = patient_folds(ids, patients, labels, k=5, seed=3)
    assert len(folds) == 5
    pid = dict(zip(ids, patients, strict=True))
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested) == sorted(ids)  # every case in exactly one test fold
    for f in folds:
        assert set(f["train"]) | set(f["test"]) == set(ids)
        assert not {pid[c] for c in f["train"]} & {pid[c] for c in f["test"]}
    check_folds(folds, ids, patients)  # the validator agrees


def test_stratification_roughly_holds(cohort):
    ids, patients, labels = cohort
    overall = np.mean([lab == "ICC" for lab in labels])
    lab = dict(zip(ids, labels, strict=True))
    for f in patient_folds(ids, patients, labels, k=5, seed=0):
        frac = np.mean([lab[c] == "ICC" for c in f["test"]])
        assert abs(frac - overall) < 0.12, (frac, overall)
        assert len(f["test"]) == pytest.approx(len(ids) / 5, rel=0.35)


def test_deterministic_by_seed_and_seed_matters(cohort):
    ids, patients, labels = cohort
    a = patient_folds(ids, patients, labels, k=4, seed=11)
    b = patient_folds(ids, patients, labels, k=4, seed=11)
    c = patient_folds(ids, patients, labels, k=4, seed=12)
    assert a == b
    assert [f["test"] for f in a] != [f["test"] for f in c]


def test_mappings_accepted_and_order_of_input_kept(cohort):
    ids, patients, labels = cohort
    by_list = patient_folds(ids, patients, labels, k=3, seed=0)
    by_map = patient_folds(
        ids, dict(zip(ids, patients, strict=True)), dict(zip(ids, labels, strict=True)), 3, 0
    )
    assert by_list == by_map
    order = {c: i for i, c in enumerate(ids)}
    assert all(f["test"] == sorted(f["test"], key=order.get) for f in by_list)


def test_too_many_folds_is_a_clear_value_error():
    ids = [f"c{i}" for i in range(12)]
    patients = [f"p{i // 2}" for i in range(12)]  # 6 patients
    labels = ["A"] * 8 + ["B"] * 4  # class B: 2 patients
    with pytest.raises(ValueError, match=r"class 'B' has only 2 patient.*--folds 2") as exc:
        patient_folds(ids, patients, labels, k=3)
    assert isinstance(exc.value, DatasetError)  # the CLI reports it as a user error
    folds = patient_folds(ids, patients, labels, k=2)
    assert all({"p4", "p5"} & {patients[ids.index(c)] for c in f["test"]} for f in folds)
    with pytest.raises(SplitError, match="at least 2 folds"):
        patient_folds(ids, patients, labels, k=1)
    with pytest.raises(SplitError, match="duplicate case ids"):
        patient_folds(["a", "a", "b", "c"], ["1", "1", "2", "3"], [0, 0, 1, 1], k=2)


def test_inner_validation_split_grouped_and_stratified(cohort):
    ids, patients, labels = cohort
    fold = patient_folds(ids, patients, labels, k=5, seed=0)[0]
    pid = dict(zip(ids, patients, strict=True))
    lab = dict(zip(ids, labels, strict=True))
    train, val = inner_validation_split(fold["train"], pid, lab, fraction=0.2, seed=5)
    assert sorted(train + val) == sorted(fold["train"]) and not set(train) & set(val)
    assert not {pid[c] for c in train} & {pid[c] for c in val}
    assert not set(val) & set(fold["test"])  # the test fold is never used for validation
    n_pat = len({pid[c] for c in fold["train"]})
    assert len({pid[c] for c in val}) == pytest.approx(0.2 * n_pat, abs=2)
    assert {lab[c] for c in val} == {"HCC", "ICC"}
    assert (train, val) == inner_validation_split(fold["train"], pid, lab, 0.2, 5)
    assert val != inner_validation_split(fold["train"], pid, lab, 0.2, 6)[1]


def test_inner_validation_split_tiny_class_keeps_one_in_training():
    ids = ["a", "b", "c", "d", "e"]
    train, val = inner_validation_split(ids, ["1", "2", "3", "4", "5"], [0, 0, 0, 1, 1], 0.2, 0)
    labels = dict(zip(ids, [0, 0, 0, 1, 1], strict=True))
    assert {labels[c] for c in val} == {0, 1}  # at least one per class with ≥ 2 patients
    assert {labels[c] for c in train} == {0, 1}  # and never all of a class
    with pytest.raises(SplitError, match="fraction"):
        inner_validation_split(ids, ["1", "2", "3", "4", "5"], [0, 0, 0, 1, 1], 1.5)


def test_splits_json_round_trip_and_validation(tmp_path, cohort):
    ids, patients, labels = cohort
    folds = patient_folds(ids, patients, labels, k=3, seed=0)
    obj = splits_to_json(folds)
    assert list(obj) == ["0", "1", "2"] and set(obj["0"]) == {"train", "test"}
    path = tmp_path / "splits.json"
    write_splits(path, folds)
    assert json.loads(path.read_text()) == obj
    assert splits_from_json(path) == folds == splits_from_json(obj)
    leaky = {"0": {"train": ["a", "b"], "test": ["b"]}}
    with pytest.raises(SplitError, match="in train and test"):
        splits_from_json(leaky)
    with pytest.raises(SplitError, match="fold keys"):
        splits_from_json({"1": {"train": [], "test": []}})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SplitError, match="cannot read splits") as exc:
        splits_from_json(tmp_path / "bad.json")
    assert exc.value.path == str(tmp_path / "bad.json")


def test_check_folds_catches_a_patient_leak(cohort):
    ids, patients, labels = cohort
    folds = patient_folds(ids, patients, labels, k=3, seed=0)
    # Move one study of a multi-study patient from test into train of the same fold.
    pid = dict(zip(ids, patients, strict=True))
    f = folds[0]
    victim = next(c for c in f["test"] if sum(pid[o] == pid[c] for o in f["test"]) > 1)
    f["test"].remove(victim)
    f["train"].append(victim)
    folds[1]["test"].append(victim)
    folds[1]["train"].remove(victim)
    with pytest.raises(SplitError, match="on both sides"):
        check_folds(folds, ids, patients)


def test_label_subset_keeps_a_share_of_each_class_by_patient():
    from liverphase.data.splits import label_subset

    ids = [f"c{i}" for i in range(40)]
    patients = [f"p{i // 2}" for i in range(40)]  # two studies per patient
    labels = ["a" if i < 20 else "b" for i in range(40)]
    kept = label_subset(ids, patients, labels, 0.3, seed=1)
    by_patient = {p for c, p in zip(ids, patients, strict=True) if c in kept}
    # 10 patients per class -> 3 each, and both studies of a kept patient come along
    assert len(by_patient) == 6 and len(kept) == 12
    assert sum(labels[ids.index(c)] == "a" for c in kept) == 6
    assert label_subset(ids, patients, labels, 0.3, seed=1) == kept
    assert label_subset(ids, patients, labels, 0.3, seed=2) != kept
    assert label_subset(ids, patients, labels, 1.0) == ids
    # at least two patients per class, however small the share
    assert (
        len(
            {
                p
                for c, p in zip(ids, patients, strict=True)
                if c in label_subset(ids, patients, labels, 0.01)
            }
        )
        == 4
    )
