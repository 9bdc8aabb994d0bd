"""Figures, metric blocks, markdown tables, the CV report and the model comparison table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from matplotlib.image import imread

from liverphase.errors import InputFileError
from liverphase.evaluate.metrics import auc_score, classification_metrics
from liverphase.evaluate.plots import plot_calibration, plot_confusion, plot_roc, plot_roc_ovr
from liverphase.evaluate.predictions import Predictions, read_predictions, write_predictions
from liverphase.evaluate.report import (
    COMPARISON_COLUMNS,
    comparison_note,
    comparison_table,
    format_ci,
    format_p,
    markdown_table,
    metrics_block,
    write_cv_report,
)
from liverphase.evaluate.stats import bootstrap_roc_band, clustered_delong_test, delong_test

NAMES = ["HCC", "ICC"]


@pytest.fixture
def oof() -> Predictions:
    """Out-of-fold predictions: 40 patients × 2 studies, 4 folds, a decent but imperfect model."""
    rng = np.random.default_rng(0)
    n_pat = 40
    y = np.repeat((np.arange(n_pat) % 5 < 2).astype(int), 2)
    patients = list(np.repeat([f"P{i:02d}" for i in range(n_pat)], 2))
    folds = np.repeat(np.arange(n_pat) % 4, 2)
    p1 = 1 / (1 + np.exp(-(2.0 * y + rng.normal(0, 1, y.size) - 1.0)))
    ids = [f"{p}_{i % 2}" for i, p in enumerate(patients)]
    return Predictions(ids, patients, folds, y, np.c_[1 - p1, p1], NAMES)


def _png_ok(path, shape=(500, 500)) -> None:
    img = imread(path)
    assert img.shape[:2] == shape and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # something was drawn
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # no temp file left


def test_plots_write_valid_pngs(tmp_path, oof):
    y, s = oof.labels, oof.probs[:, 1]
    band = bootstrap_roc_band(y, s, oof.patient_ids, n=200, seed=0)
    per_fold = [(y[oof.folds == k], s[oof.folds == k]) for k in range(4)]
    out = plot_roc((y, s), per_fold, band, tmp_path / "roc.png", "test", auc_ci=(0.8, 0.9))
    assert out == tmp_path / "roc.png"
    _png_ok(out)
    _png_ok(plot_calibration(y, oof.probs, tmp_path / "cal.png"))
    _png_ok(plot_confusion(y, oof.probs.argmax(1), NAMES, tmp_path / "cm.png"))
    rng = np.random.default_rng(1)
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet([1, 1, 1], 60)
    _png_ok(plot_roc_ovr(y3, p3, ["F0", "F1", "F2"], tmp_path / "ovr.png"))


def test_format_ci_p_and_markdown_table():
    assert format_ci(0.9123, (0.8711, 0.948)) == "0.912 (0.871–0.948)"
    assert format_ci(0.5, None) == "0.500" and format_ci(None, (0.1, 0.2)) == "—"
    assert format_ci(0.5, [None, None], digits=2) == "0.50"
    assert format_p(0.0342) == "0.034" and format_p(1e-5) == "<0.001" and format_p(None) == "—"
    rows = [
        {"model": "a|b", "auc": 0.9, "auc_ci": [0.85, 0.95], "p": None, "n": 3},
        {"model": "c", "auc": float("nan"), "p": 0.2, "n": 4},
    ]
    cols = [("model", "Model", ""), ("auc", "AUC", "ci"), ("p", "p", "p"), ("n", "N", "d")]
    assert markdown_table(rows, cols) == (
        "| Model | AUC | p | N |\n"
        "|---|---|---|---|\n"
        "| a\\|b | 0.900 (0.850–0.950) | — | 3 |\n"
        "| c | — | 0.200 | 4 |\n"
    )


def test_metrics_block_binary(oof):
    block = metrics_block(oof.labels, oof.probs, oof.patient_ids, NAMES, n_boot=500, seed=0)
    json.dumps(block, allow_nan=False)  # plain JSON: no NaN, no numpy types
    point = classification_metrics(oof.labels, oof.probs, NAMES)
    for key in (
        "auc",
        "acc",
        "f1",
        "npv",
        "ppv",
        "sensitivity",
        "specificity",
        "balanced_accuracy",
    ):
        assert block[key] == pytest.approx(point[key])
        lo, hi = block[f"{key}_ci"]
        assert lo <= block[key] <= hi
    assert block["ece"] == pytest.approx(point["ece"]) and "brier" in block
    assert (block["n_cases"], block["n_patients"]) == (80, 40)
    assert block["class_counts"] == {"HCC": 48, "ICC": 32}
    assert block["n_boot"] == 500 and block["n_boot_used"] == 500
    assert block["positive_class"] == "ICC" and "kappa" not in block


def test_metrics_block_multiclass_has_kappa_and_nan_becomes_none():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet([1, 1, 1], 90) + 0.8 * np.eye(3)[y]
    probs /= probs.sum(1, keepdims=True)
    block = metrics_block(y, probs, None, ["F1", "F2", "F3"], n_boot=200, seed=1)
    assert block["kappa_ci"][0] <= block["kappa"] <= block["kappa_ci"][1]
    assert block["n_patients"] == 90 and "npv" not in block and "auc_F2" in block
    single = metrics_block(np.zeros(4, int), np.full((4, 2), 0.5), None, NAMES, n_boot=0)
    assert single["auc"] is None and single["sensitivity"] is None and "auc_ci" not in single


def test_write_cv_report(tmp_path, oof):
    metrics = write_cv_report(
        tmp_path / "run",
        oof,
        title="CV of m",
        dataset="synth-ct",
        model="m",
        seed=3,
        n_boot=300,
        extra_pooled={"dice": 0.8, "dice_ci": (0.7, 0.9)},
        sections=["## Training\n\nprofile cpu\n"],
    )
    run = tmp_path / "run"
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    pooled = on_disk["pooled"]
    assert pooled["auc"] == pytest.approx(auc_score(oof.labels, oof.probs[:, 1]))
    assert pooled["dice_ci"] == [0.7, 0.9] and pooled["n_boot"] == 300
    assert [f["fold"] for f in on_disk["folds"]] == [0, 1, 2, 3]
    for f in on_disk["folds"]:
        mask = oof.folds == f["fold"]
        assert f["auc"] == pytest.approx(auc_score(oof.labels[mask], oof.probs[mask, 1]))
        assert f["n_patients"] == 10 and "auc_ci" not in f
    _png_ok(run / "roc.png")
    back = read_predictions(run / "predictions.csv")
    assert back.case_ids == oof.case_ids and back.class_names == NAMES
    np.testing.assert_allclose(back.probs, oof.probs, rtol=1e-8)
    assert (back.labels == oof.labels).all() and (back.folds == oof.folds).all()
    md = (run / "report.md").read_text()
    assert md.startswith("# CV of m\n")
    for text in (
        "80 cases from 40 patients",
        "4-fold cross-validation at patient level",
        "seed 3",
        "300 resamples",
        "Positive class: ICC",
        "![ROC",
        "(roc.png)",
        "| mean ± sd |",
        "## Training",
        "| Dice | 0.800 (0.700–0.900) |",
        format_ci(pooled["auc"], pooled["auc_ci"]),
    ):
        assert text in md, text


def test_predictions_csv_errors(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("case_id,fold\nc1,0\n")
    with pytest.raises(InputFileError, match="columns") as exc:
        read_predictions(bad)
    assert exc.value.path == str(bad)
    bad.write_text("case_id,patient_id,fold,label,prob_A,prob_B\nc1,p1,x,A,0.1,0.9\n")
    with pytest.raises(InputFileError, match="bad value"):
        read_predictions(bad)
    with pytest.raises(InputFileError, match="cannot read"):
        read_predictions(tmp_path / "missing.csv")
    preds = Predictions(["c1", "c2"], ["p1", "p2"], [0, 1], [0, 1], [[0.7, 0.3], [0.2, 0.8]], NAMES)
    write_predictions(tmp_path / "ok.csv", preds)
    lines = (tmp_path / "ok.csv").read_text().splitlines()
    assert lines[0] == "case_id,patient_id,fold,label,prob_HCC,prob_ICC"
    assert lines[1] == "c1,p1,0,HCC,0.7,0.3"


def test_comparison_table(oof):
    rng = np.random.default_rng(5)
    worse = np.clip(oof.probs[:, 1] + rng.normal(0, 0.3, oof.labels.size), 0, 1)
    models = {"full": oof.probs, "ablated": np.c_[1 - worse, worse]}
    rows = comparison_table(models, oof.labels, oof.patient_ids, "full", NAMES, n_boot=200)
    assert [r["model"] for r in rows] == ["full", "ablated"]
    assert rows[0]["delong_p"] is None and rows[0]["delta_auc"] is None
    # 40 patients × 2 studies: the clustered test, not DeLong's (which would count 80 patients)
    auc1, auc2, z, p = clustered_delong_test(oof.labels, worse, oof.probs[:, 1], oof.patient_ids)
    assert rows[1]["delong_p"] == pytest.approx(p) and rows[1]["delong_z"] == pytest.approx(z)
    assert delong_test(oof.labels, worse, oof.probs[:, 1])[3] != pytest.approx(p)
    method = "clustered DeLong (Obuchowski 1997), 40 patients / 80 studies"
    assert rows[0]["delong_method"] is None and rows[1]["delong_method"] == method
    assert method in comparison_note(rows) and "bootstrap over patients" in comparison_note(rows)
    # one study per patient: plain DeLong, named so
    one = comparison_table(models, oof.labels, oof.case_ids, "full", NAMES, n_boot=0)
    assert one[1]["delong_p"] == pytest.approx(delong_test(oof.labels, worse, oof.probs[:, 1])[3])
    assert one[1]["delong_method"] == "DeLong" and "DeLong's test" in comparison_note(one)
    assert rows[1]["delta_auc"] == pytest.approx(auc1 - auc2) and rows[1]["auc"] == pytest.approx(
        auc1
    )
    table = markdown_table(rows, COMPARISON_COLUMNS)
    assert table.splitlines()[0].startswith("| Model | AUC (95% CI) | DeLong p |")
    assert f"| ablated | {format_ci(rows[1]['auc'], rows[1]['auc_ci'])} | {format_p(p)} |" in table
    with pytest.raises(ValueError, match="reference model"):
        comparison_table(models, oof.labels, None, "nope", NAMES, n_boot=0)
