"""Published splits (cases.csv `split`): `cv --splits official`, `inspect`'s split report, and the
LLD-MMRI submission file (class order by name, the published format checked)."""

from __future__ import annotations

import copy
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_support import one_line_error
from conftest import blob_study
from liverphase.cli import app
from liverphase.errors import DatasetError
from liverphase.evaluate.official import challenge_score, run_official
from liverphase.evaluate.predictions import Predictions
from liverphase.evaluate.submission import (
    LLD_MMRI_CLASSES,
    SubmissionError,
    lld_image_id,
    lld_submission,
    validate_lld_submission,
)
from liverphase.io.cases_csv import read_cases_csv, write_cases_csv
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.synth.ct import synth_ct_cohort

RUNNER = CliRunner()
SMALL = {"preprocess_overrides": {"size": (8, 32, 32), "register": False}}
# synth seed 3, 12 cases: CT0000 and CT0001 are one patient (P0000); CT0008 HCC, CT0009 ICC
SPLIT = {
    **{f"CT000{i}": "train" for i in range(6)},
    "CT0006": "val",
    "CT0007": "val",
    "CT0008": "test",
    "CT0009": "test",
    "CT0010": "test",  # its label is withheld below
    "CT0011": "",  # outside the published split
}
# LLD-MMRI's classes in another order than the challenge's, so a by-index mapping would be wrong
SHUFFLED = ["HCC", "cyst", "FNH", "ICC", "abscess", "hemangioma", "metastasis"]


def set_column(root: Path, values: dict[str, str], **labels: str) -> None:
    """Rewrite cases.csv with `split` set per case (and `labels` overriding labels; '' withholds)."""
    records = read_cases_csv(root / "cases.csv")
    for r in records:
        r.extra["split"] = values.get(r.case_id, "")
        if r.case_id in labels:
            r.label = labels[r.case_id] or None
    write_cases_csv(root / "cases.csv", records)


def invoke(args: list[object]):  # noqa: ANN201
    """Run the CLI with string arguments."""
    return RUNNER.invoke(app, [str(a) for a in args])


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV's rows as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tiny CT cases with a published split: train 6 / val 2 / test 3 (one withheld) / none 1."""
    root = tmp_path_factory.mktemp("official") / "ds"
    synth_ct_cohort(root, cases=12, seed=3, preset="tiny")
    set_column(root, SPLIT, CT0010="")
    return root


@pytest.fixture
def private(cohort: Path, tmp_path: Path) -> Path:
    """A copy of the cohort for a test to change."""
    return Path(shutil.copytree(cohort, tmp_path / "ds"))


@pytest.fixture(scope="module")
def official_run(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`cv --splits official` through the CLI, 1 epoch at the smallest grid."""
    config = tmp_path_factory.mktemp("cfg") / "small.yaml"
    config.write_text(
        "train:\n  batch_size: 4\npreprocess:\n  size: [8, 32, 32]\n  register: false\n"
    )
    run = tmp_path_factory.mktemp("run") / "official"
    args = ["cv", cohort, "--out", run, "--splits", "official", "--model", "resnet2d_avg"]
    result = invoke([*args, "--epochs", "1", "--config", config])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return run, result.output


def test_official_split_trains_on_train_and_scores_test(official_run: tuple[Path, str]) -> None:
    run, output = official_run
    assert "official split: train 6, val 2, test 2 scored + 1 unscored" in output
    fold = json.loads((run / "splits.json").read_text())["0"]
    assert fold["kind"] == "official"
    assert fold["train"] == [f"CT000{i}" for i in range(6)]
    assert fold["validation"] == ["CT0006", "CT0007"]
    assert fold["test"] == ["CT0008", "CT0009"]
    assert fold["test_unscored"] == ["CT0010"]
    assert fold["outside"] == ["CT0011"]
    # the model saw the train split only, and selected its epoch on val
    split = json.loads((run / "fold_0" / "bundle" / "bundle.json").read_text())["split"]
    assert split["train"] == fold["train"] and split["validation"] == fold["validation"]
    assert [r["case_id"] for r in read_csv_rows(run / "predictions.csv")] == ["CT0008", "CT0009"]
    unlabeled = read_csv_rows(run / "predictions_unlabeled.csv")
    assert [(r["case_id"], r["label"]) for r in unlabeled] == [("CT0010", "")]
    assert sum(float(v) for k, v in unlabeled[0].items() if k.startswith("prob_")) == (
        pytest.approx(1.0, abs=1e-5)
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["splits"] == "official" and metrics["n_unscored"] == 1
    assert metrics["pooled"]["n_cases"] == 2 and metrics["pooled"]["auc_ci"] is not None
    assert json.loads((run / "run.json").read_text())["splits"] == "official"
    report = (run / "report.md").read_text()
    assert "published split" in report and "1 test case(s) with the label withheld" in report
    assert "No LLD-MMRI submission written" in report  # HCC/ICC are not the challenge's classes


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("two_splits", "patient 'P0000' is in two splits (train, test)"),
        ("no_column", "no 'split' column"),
        ("unknown", "split value 'training'"),
        ("no_train", "no labeled case in split 'train'"),
        ("no_test", "no case in split 'test'"),
    ],
)
def test_official_split_errors_are_one_line(private: Path, change: str, expected: str) -> None:
    values = dict(SPLIT)
    if change == "two_splits":
        values["CT0001"] = "test"  # CT0000 of the same patient stays in train
    elif change == "unknown":
        values["CT0003"] = "training"
    elif change == "no_train":
        values = {c: "test" if v == "train" else v for c, v in values.items()}
    elif change == "no_test":
        values = {c: "val" if v == "test" else v for c, v in values.items()}
    set_column(private, values)
    if change == "no_column":
        records = read_cases_csv(private / "cases.csv")
        for r in records:
            del r.extra["split"]
        write_cases_csv(private / "cases.csv", records)
    out = private.parent / "run"
    one_line_error(["cv", private, "--out", out, "--splits", "official", "--epochs", "1"], expected)
    assert not (out / "cache").exists()  # refused before any preprocessing


def test_unknown_splits_option(cohort: Path, tmp_path: Path) -> None:
    one_line_error(["cv", cohort, "--out", tmp_path / "r", "--splits", "random"], "--splits")


# -- LLD-MMRI submission ---------------------------------------------------------------------------
def test_submission_maps_classes_by_name() -> None:
    # known answer: each row's largest probability sits on a different class name
    probs = np.array(
        [
            [0.40, 0.10, 0.10, 0.10, 0.10, 0.10, 0.10],  # HCC
            [0.05, 0.05, 0.05, 0.05, 0.10, 0.60, 0.10],  # hemangioma
            [0.10, 0.30, 0.10, 0.20, 0.10, 0.10, 0.10],  # cyst
        ]
    )
    entries = lld_submission(["MR210196", "MR-411388", "mr7"], probs, SHUFFLED)
    validate_lld_submission(entries)
    assert [e["image_id"] for e in entries] == ["MR210196", "MR411388", "MR7"]
    order = list(LLD_MMRI_CLASSES)
    assert (
        [e["prediction"] for e in entries]
        == [
            order.index("HCC"),
            order.index("hemangioma"),
            order.index("cyst"),
        ]
        == [6, 0, 4]
    )
    # score[j] is the probability of the challenge's class j, wherever the dataset put it
    for entry, row in zip(entries, probs, strict=True):
        expected = [row[SHUFFLED.index(name)] for name in LLD_MMRI_CLASSES]
        assert entry["score"] == pytest.approx(expected)
        assert set(entry) == {"image_id", "prediction", "score"}
    # the dataset's own order (a class list equal to the challenge's) maps to itself
    same = lld_submission(["MR1"], probs[:1], list(LLD_MMRI_CLASSES))
    assert same[0]["score"] == pytest.approx(list(probs[0])) and same[0]["prediction"] == 0


def test_challenge_score_is_mean_of_macro_f1_and_cohen_kappa() -> None:
    from sklearn.metrics import cohen_kappa_score, f1_score

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(7), 4)
    probs = rng.dirichlet(np.ones(7), size=y.size)
    probs[::2, :] = 0.02  # every other case confidently right, the rest at random
    probs[np.arange(0, y.size, 2), y[::2]] = 0.88
    n = y.size
    preds = Predictions(
        [f"MR{i}" for i in range(n)], [f"P{i}" for i in range(n)], [0] * n, y, probs, SHUFFLED
    )
    out = challenge_score(preds, n_boot=50, seed=0)
    pred = probs.argmax(1)
    # the challenge's score: unweighted κ, not the quadratic one of ordered stages
    expected = (f1_score(y, pred, average="macro") + cohen_kappa_score(y, pred)) / 2
    assert out["challenge_score"] == pytest.approx(expected)
    lo, hi = out["challenge_score_ci"]
    assert lo <= out["challenge_score"] <= hi


@pytest.mark.parametrize(
    "names",
    [
        ["HCC", "ICC"],
        [*LLD_MMRI_CLASSES[:6], "CHCC"],
        [*LLD_MMRI_CLASSES, "other"],
    ],
)
def test_submission_refuses_other_classes(names: list[str]) -> None:
    with pytest.raises(DatasetError, match="not LLD-MMRI's seven"):
        lld_submission(["MR1"], np.full((1, len(names)), 1 / len(names)), names)


@pytest.mark.parametrize("case_id", ["CT0001", "MR", "MR12a", "XMR12"])
def test_submission_refuses_other_ids(case_id: str) -> None:
    with pytest.raises(DatasetError, match="not an LLD-MMRI id"):
        lld_image_id(case_id)


def _valid() -> list[dict]:
    return [
        {"image_id": "MR1", "prediction": 6, "score": [0.1] * 6 + [0.4]},
        {"image_id": "MR2", "prediction": 0, "score": [1.0] + [0.0] * 6},
    ]


def _set(path: tuple, value: object):  # noqa: ANN202
    def change(sub: list[dict]) -> object:
        if not path:
            return value
        target = sub
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return sub

    return change


def _drop_key(sub: list[dict]) -> list[dict]:
    del sub[0]["score"]
    return sub


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set((), {"image_id": "MR1"}), "non-empty JSON list"),
        (_set((), []), "non-empty JSON list"),
        (_set((0,), ["MR1", 0]), "exactly the keys"),
        (_drop_key, "exactly the keys"),
        (_set((0, "extra"), 1), "exactly the keys"),
        (_set((0, "image_id"), "MR-1"), "not 'MR' + digits"),
        (_set((0, "image_id"), "mr1"), "not 'MR' + digits"),
        (_set((0, "image_id"), 1), "not 'MR' + digits"),
        (_set((1, "image_id"), "MR1"), "appears twice"),
        (_set((0, "prediction"), 7), "not an int 0-6"),
        (_set((0, "prediction"), -1), "not an int 0-6"),
        (_set((0, "prediction"), 6.0), "not an int 0-6"),
        (_set((1, "prediction"), False), "not an int 0-6"),
        (_set((0, "prediction"), 1), "not the argmax"),
        (_set((0, "score"), [0.5, 0.5]), "list of 7 numbers"),
        (_set((0, "score"), "0.1"), "list of 7 numbers"),
        (_set((0, "score", 0), "0.1"), "list of 7 numbers"),
        (_set((0, "score", 0), True), "list of 7 numbers"),
        (_set((0, "score", 0), float("nan")), "finite, in [0, 1]"),
        (_set((0, "score", 0), -0.1), "finite, in [0, 1]"),
        (_set((1, "score"), [1.2, -0.2, 0, 0, 0, 0, 0]), "finite, in [0, 1]"),
        (_set((0, "score", 0), 0.2), "sum to"),
    ],
)
def test_validate_rejects_malformed(change, message: str) -> None:  # noqa: ANN001
    validate_lld_submission(_valid())
    bad = change(copy.deepcopy(_valid()))
    with pytest.raises(SubmissionError, match=re.escape(message)):
        validate_lld_submission(bad)


def test_validate_allows_rounding_and_ties() -> None:
    entries = _valid()
    entries[0]["score"] = [0.1] * 6 + [0.40005]  # within 1e-4 of 1
    entries[1]["score"] = [0.5, 0.5, 0, 0, 0, 0, 0]  # a tie: either class is the argmax
    entries[1]["prediction"] = 1
    validate_lld_submission(entries)


@pytest.fixture(scope="module")
def lld_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """28 tiny 2-phase studies of LLD-MMRI's classes (listed in SHUFFLED order), ids MR + digits
    (one written MR-411388): per class 2 train, 1 val, 1 test; two test labels withheld."""
    root = tmp_path_factory.mktemp("lld") / "ds"
    writer = NnUNetWriter(root, ["ART", "PV"], reference_phase="PV", class_names=SHUFFLED)
    k = 0
    for c, name in enumerate(SHUFFLED):
        for split in ("train", "train", "val", "test"):
            cid = "MR-411388" if k == 27 else f"MR{1000 + k}"
            study = blob_study(cid, label=name, seed=k)
            study.label = None if split == "test" and c in (0, 6) else name
            writer.add(study, extra={"split": split})
            k += 1
    writer.close()
    return root


def test_official_run_writes_lld_submission(lld_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    kwargs = {"model": "resnet2d_avg", "epochs": 1, "batch_size": 8, **SMALL}
    result = run_official(lld_dataset, run, kwargs, n_boot=20, progress=False)
    path = run / "submission_lld-mmri.json"
    assert result["submission"] == path
    entries = json.loads(path.read_text())
    validate_lld_submission(entries)
    records = read_cases_csv(lld_dataset / "cases.csv")
    test_ids = [r.case_id for r in records if r.extra["split"] == "test"]
    assert "MR-411388" in test_ids
    assert [e["image_id"] for e in entries] == [c.replace("-", "") for c in test_ids]
    rows = read_csv_rows(run / "predictions.csv") + read_csv_rows(run / "predictions_unlabeled.csv")
    assert len(rows) == 7 and {r["case_id"] for r in rows} == set(test_ids)
    by_id = {r["case_id"].replace("-", ""): r for r in rows}
    for e in entries:  # the score is the predictions' row, reordered by class name
        row = by_id[e["image_id"]]
        expected = [float(row[f"prob_{name}"]) for name in LLD_MMRI_CLASSES]
        assert e["score"] == pytest.approx(expected, abs=1e-6)
    pooled = result["metrics"]["pooled"]
    assert pooled["n_cases"] == 5 and result["metrics"]["n_unscored"] == 2
    if pooled.get("f1") is not None and pooled.get("kappa") is not None:
        assert pooled["challenge_score"] == pytest.approx((pooled["f1"] + pooled["kappa"]) / 2)
    report = (run / "report.md").read_text()
    assert "## Challenge score" in report and "submission_lld-mmri.json" in report
    assert "2 test case(s) with the label withheld" in report

    # `evaluate --submission` on the same dataset writes the same cases from the run's bundle
    out = tmp_path / "eval"
    result = invoke(
        ["evaluate", run, "--data", lld_dataset, "--out", out, "--submission", "lld-mmri"]
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    again = json.loads((out / "submission_lld-mmri.json").read_text())
    validate_lld_submission(again)
    # scored: the labeled test studies only (train and val are the bundle's training data)
    assert json.loads((out / "metrics.json").read_text())["pooled"]["n_cases"] == 5
    assert "21 studies that were training data" in result.output
    assert [e["image_id"] for e in again] == [e["image_id"] for e in entries]


def test_evaluate_submission_refuses_other_classes(official_run, cohort: Path, tmp_path) -> None:  # noqa: ANN001
    run, _ = official_run
    args = ["evaluate", run, "--data", cohort, "--out", tmp_path / "e", "--submission"]
    one_line_error([*args, "lld-mmri"], "not LLD-MMRI's seven")
    one_line_error([*args, "kaggle"], "unknown submission format 'kaggle'")


# -- inspect ---------------------------------------------------------------------------------------
def test_inspect_reports_split_counts(cohort: Path) -> None:
    result = invoke(["inspect", cohort])
    assert result.exit_code == 0, result.output  # an empty split is outside it, not a problem
    assert "  train: 6 cases, 5 patients (HCC 3, ICC 3)" in result.output
    assert "  test: 3 cases, 3 patients ((unlabeled) 1, HCC 1, ICC 1)" in result.output
    assert "  (none: outside the published split): 1 cases" in result.output
    summary = json.loads(invoke(["inspect", cohort, "--json"]).output)
    assert summary["splits"]["val"] == {"cases": 2, "patients": 2, "labels": {"HCC": 1, "ICC": 1}}
    assert list(summary["splits"]) == ["train", "val", "test", ""]


def test_inspect_flags_split_problems(private: Path) -> None:
    set_column(private, {**SPLIT, "CT0001": "val", "CT0004": "training", "CT0005": "Test"})
    result = invoke(["inspect", private])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    problems = [ln for ln in result.output.splitlines() if ln.startswith("problem:")]
    assert len(problems) == 3, result.output
    assert any("patient 'P0000' is in two splits (train, val)" in p for p in problems)
    assert any("split value 'training' (case(s) CT0004)" in p for p in problems)
    assert any("split value 'Test' (case(s) CT0005)" in p for p in problems)
