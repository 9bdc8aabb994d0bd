"""LLD-MMRI end to end on the miniature: import (CLI), preprocess with per-sequence boxes, 2-fold
cv of a classifier over all eight sequences and seven classes with macro F1 and Cohen's kappa,
prediction of a case located by its boxes, and a segmenting model refused without masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

import _lld_support as lld
from liverphase.cli import app
from liverphase.errors import DatasetError
from liverphase.evaluate.cv import run_cv
from liverphase.evaluate.official import run_official
from liverphase.evaluate.predictions import read_predictions
from liverphase.evaluate.submission import validate_lld_submission
from liverphase.inference.predictor import PHASE_BOXES, Predictor
from liverphase.io.importers.lld_mmri import CLASSES, SEQUENCES
from liverphase.io.nifti import open_dataset

RUNNER = CliRunner()
GRID = {"preprocess_overrides": {"size": (4, 16, 16), "register": False}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    src = tmp_path_factory.mktemp("lld_src")
    lld.make_lld(src)
    out = tmp_path_factory.mktemp("lld") / "ds"
    res = RUNNER.invoke(app, ["import", "lld-mmri", str(src), str(out)])
    assert res.exit_code == 0, res.output
    assert "warning [duplicated_slices]" in res.output and "cases: 29" in res.output
    return out


@pytest.fixture(scope="module")
def cv_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    kwargs = {"model": "cirrhosis_msa", "epochs": 1, "batch_size": 4, **GRID}
    result = run_cv(dataset, out, kwargs, folds=2, seed=0, n_boot=50, progress=False)
    return out, result


def test_cv_eight_sequences_seven_classes_macro_f1_and_kappa(dataset, cv_run):
    out, result = cv_run
    pooled = result["metrics"]["pooled"]
    preds = read_predictions(out / "predictions.csv")
    assert preds.class_names == list(CLASSES)
    labeled = [c for c in open_dataset(dataset).cases if c.label]
    assert sorted(preds.case_ids) == sorted(c.case_id for c in labeled)  # withheld left out
    y, pred = preds.labels, preds.probs.argmax(1)
    assert pooled["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert pooled["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    for key in ("f1", "kappa"):
        lo, hi = pooled[f"{key}_ci"]
        assert lo <= pooled[key] <= hi
    assert pooled["f1_kappa_mean"] == pytest.approx((pooled["f1"] + pooled["kappa"]) / 2)
    report = (out / "report.md").read_text()
    assert "Cohen's κ" in report and "Mean of macro F1 and κ" in report


def test_predict_locates_the_lesion_by_its_boxes(dataset, cv_run, tmp_path):
    out, _ = cv_run
    ds = open_dataset(dataset)
    study = ds.load_study(lld.MISSING_IN_PHASE)
    pred = Predictor(out / "fold_0" / "bundle").predict_study(
        study, tmp_path / "p", occlusion=False, cam=False, report=False
    )
    assert pred["lesion"]["source"].startswith(PHASE_BOXES)
    assert pred["phases_present"] == [s for s in SEQUENCES if s != "In Phase"]
    probs = np.array(list(pred["probabilities"].values()))
    assert probs.shape == (7,) and probs.sum() == pytest.approx(1.0, abs=1e-4)


def test_segmenting_model_refused_without_masks(dataset, tmp_path):
    with pytest.raises(DatasetError, match="boxes only"):
        run_cv(dataset, tmp_path / "r", {"model": "std_net", "epochs": 1, **GRID}, folds=2)


def test_model_table_says_which_models_take_boxes_and_missing_sequences():
    res = RUNNER.invoke(app, ["models", "--names", "std_net,cirrhosis_msa,early_fusion"])
    assert res.exit_code == 0, res.output
    rows = {line.split("|")[1].strip(): line for line in res.output.splitlines() if "|" in line}
    assert "mask (segments it)" in rows["std_net"]
    assert (
        "mask or box" in rows["cirrhosis_msa"] and "predicted without it" in rows["cirrhosis_msa"]
    )
    assert "refused at predict" in rows["early_fusion"]


def test_official_split_trains_on_train_scores_test_and_writes_the_submission(dataset, tmp_path):
    out = tmp_path / "official"
    kwargs = {"model": "cirrhosis_msa", "epochs": 1, "batch_size": 4, **GRID}
    run_official(dataset, out, kwargs, seed=0, progress=False, n_boot=50)
    split = json.loads((out / "splits.json").read_text())["0"]
    planted = {p.replace("MR-", "MR"): s for p, _, s in lld.patients()}
    assert sorted(split["train"]) == sorted(c for c, s in planted.items() if s == "train")
    assert sorted(split["validation"]) == sorted(c for c, s in planted.items() if s == "val")
    assert sorted([*split["test"], *split["test_unscored"]]) == sorted(
        c for c, s in planted.items() if s == "test"
    )
    assert split["test_unscored"] == [lld.WITHHELD]
    scored = read_predictions(out / "predictions.csv")
    assert sorted(scored.case_ids) == sorted(split["test"])
    submission = json.loads((out / "submission_lld-mmri.json").read_text())
    validate_lld_submission(submission)
    assert sorted(e["image_id"] for e in submission) == sorted([*split["test"], lld.WITHHELD])
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"f1", "kappa", "f1_ci", "kappa_ci"} <= set(metrics["pooled"])


CLASSIFIERS = ["miff_spm", "resnet2d_avg", "stic", "early_fusion", "resnet3d18", "cirrhosis_msa"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_classifier_takes_eight_sequences_and_seven_classes(cv_run, name):
    """The cv run's own cached inputs (8 sequences, 1 channel each) through every model that takes
    a box: seven class probabilities per study, a missing sequence zero-filled."""
    import torch

    from liverphase.models.registry import create_model

    out, _ = cv_run
    images = sorted((out / "cache").rglob("image.npy"))[:2]
    x = torch.from_numpy(np.stack([np.load(p) for p in images]))
    assert tuple(x.shape[1:3]) == (8, 1)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, phases=list(SEQUENCES), in_channels=1).eval()
    with torch.no_grad():
        logits = model(x).logits
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
