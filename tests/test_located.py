"""`cv --locate auto`: every test study is predicted with its location removed, none is dropped,
the true-location row is the run's own, the fold locators are shared and reused, and `predict`
uses a bundle's locator for an unmarked study."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.evaluate.located import read_rows
from liverphase.inference.predictor import LOCATOR_SOURCE, Predictor
from liverphase.io.nifti import open_dataset
from liverphase.synth.ct import synth_ct_cohort

RUNNER = CliRunner()
CONFIG = """\
train:
  batch_size: 4
preprocess:
  size: [16, 32, 32]
  register: false
locator:
  epochs: 2
  canvas: [8, 16, 16]
  channels: [8, 16, 32]
"""


def _cli(args: list, code: int = 0) -> str:
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def located(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, str]:
    """(dataset, RUN, cache, cv output) of a 12-case cv with --locate auto."""
    root = tmp_path_factory.mktemp("located")
    ds = synth_ct_cohort(root / "ds", cases=12, seed=3, preset="tiny")
    config = root / "small.yaml"
    config.write_text(CONFIG)
    run, cache = root / "run", root / "cache"
    args = ["cv", ds, "--out", run, "--model", "unet_channels", "--recipe", "default"]
    args += ["--folds", "3", "--epochs", "1", "--config", config, "--cache", cache]
    out = _cli([*args, "--locate", "auto"])
    return ds, run, cache, out


def test_every_test_study_is_scored_blind(located: tuple[Path, Path, Path, str]) -> None:
    ds, run, _, out = located
    assert "located automatically: detection" in out
    rows = read_rows(run / "located" / "predictions.csv")
    splits = json.loads((run / "splits.json").read_text())
    tests = sorted(c for fold in splits.values() for c in fold["test"])
    assert sorted(r["case_id"] for r in rows) == tests  # a missed lesion is not dropped
    for r in rows:
        assert r["case_id"] in splits[str(r["fold"])]["test"]
        assert r["detected"] in (0, 1) and 0.0 <= r["dice"] <= 1.0
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    metrics = json.loads((run / "located" / "metrics.json").read_text())
    auto = metrics["rows"][1]
    assert auto["n"] == len(rows)
    assert auto["detection"] == pytest.approx(np.mean([r["detected"] for r in rows]))
    assert auto["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
    # the true-location row is the cv run's own predictions on the same studies
    given = {}
    for line in (run / "predictions.csv").read_text().splitlines()[1:]:
        case, _, _, label, _, p_icc = line.split(",")
        given[case] = (label == "ICC", float(p_icc))
    y = [given[r["case_id"]][0] for r in rows]
    assert metrics["rows"][0]["auc"] == pytest.approx(
        roc_auc_score(y, [given[r["case_id"]][1] for r in rows])
    )
    assert auto["auc"] == pytest.approx(roc_auc_score(y, [r["probabilities"]["ICC"] for r in rows]))
    report = (run / "located" / "report.md").read_text()
    assert "true lesion location" in report and "automatic (--locate auto)" in report


def test_locators_are_reused_not_retrained(located: tuple[Path, Path, Path, str]) -> None:
    ds, run, cache, _ = located
    stores = sorted((cache / "locators").iterdir())
    assert len(stores) == 3  # one per fold: each trained on that fold's training cases only
    for k in range(3):
        meta = json.loads((run / f"fold_{k}" / "bundle" / "locator" / "locator.json").read_text())
        splits = json.loads((run / "splits.json").read_text())
        assert sorted(meta["data"]["cases"]) == sorted(splits[str(k)]["train"])
        assert not set(meta["data"]["cases"]) & set(splits[str(k)]["test"])
    stamps = {p: p.stat().st_mtime_ns for s in stores for p in s.iterdir()}
    before = (run / "located" / "predictions.csv").read_text()
    config = run.parent / "small.yaml"
    args = ["cv", ds, "--out", run, "--merge", "--cache", cache, "--locate", "auto"]
    _cli([*args, "--config", config])
    assert sorted((cache / "locators").iterdir()) == stores
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (run / "located" / "predictions.csv").read_text() == before


def test_predict_uses_the_bundles_locator_for_an_unmarked_study(
    located: tuple[Path, Path, Path, str], tmp_path: Path
) -> None:
    ds_root, run, _, _ = located
    ds = open_dataset(ds_root)
    splits = json.loads((run / "splits.json").read_text())
    case = splits["0"]["test"][0]
    study = ds.load_study(case)
    blind = dataclasses.replace(study, mask=None, bbox=None, phase_boxes={})
    pred = Predictor(run / "fold_0" / "bundle").predict_study(
        blind, tmp_path / "p", cam=False, occlusion=False, report=False
    )
    assert pred["crop"]["roi_source"] == LOCATOR_SOURCE
    assert 0.0 <= pred["crop"]["locator"]["peak_probability"] <= 1.0
    found = sitk.ReadImage(str(tmp_path / "p" / "locator_mask.nii.gz"))
    reference = study.phases[study.reference_phase]
    assert found.GetSize() == reference.GetSize()
    assert np.allclose(found.GetOrigin(), reference.GetOrigin())
    assert sitk.GetArrayViewFromImage(found).any()
    # and the same study through --locate auto's row gives the same probabilities
    rows = {r["case_id"]: r for r in read_rows(run / "located" / "predictions.csv")}
    for name, p in pred["probabilities"].items():
        assert rows[case]["probabilities"][name] == pytest.approx(p, abs=1e-6)


def test_bad_locate_settings_exit_2_in_one_line(tmp_path: Path) -> None:
    ds = tmp_path / "none"
    result = RUNNER.invoke(app, ["cv", str(ds), "--out", str(tmp_path / "r"), "--locate", "x"])
    assert result.exit_code == 2 and "--locate must be one of" in result.output
    assert "Traceback" not in result.output
    config = tmp_path / "bad.yaml"
    config.write_text("locator:\n  canvas: [10, 16, 16]\n")
    args = ["cv", str(ds), "--out", str(tmp_path / "r"), "--locate", "auto", "--config", config]
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "multiple of 8" in result.output
    assert str(config) in result.output and result.output.count("\n") == 1


def test_compare_puts_the_automatic_row_beside_the_run(
    located: tuple[Path, Path, Path, str],
) -> None:
    from liverphase.evaluate.compare import AUTO_LABEL, compare_runs, table_columns

    ds, run, cache, _ = located
    rows = compare_runs(
        {"unet": run}, ds, "unet", kinetics=False, cache_root=cache, n_boot=50, time_steps=False
    )
    by_model = {r["model"]: r for r in rows}
    auto = by_model[f"unet {AUTO_LABEL}"]
    metrics = json.loads((run / "located" / "metrics.json").read_text())
    assert auto["auc"] == pytest.approx(metrics["rows"][1]["auc"])
    assert auto["detection"] == pytest.approx(metrics["rows"][1]["detection"])
    assert auto["study_dice"] == pytest.approx(metrics["rows"][1]["dice"])
    assert by_model["unet"]["auc"] == pytest.approx(metrics["rows"][0]["auc"])
    assert "detection" in [c[0] for c in table_columns(rows)]


def test_locate_auto_refuses_a_dataset_without_masks_before_training(tmp_path: Path) -> None:
    ds = synth_ct_cohort(tmp_path / "ds", cases=4, seed=3, preset="tiny")
    label = sorted((ds / "labelsTr").iterdir())[0]
    label.unlink()  # a labeled case with a box in cases.csv but no mask
    args = ["cv", ds, "--out", tmp_path / "run", "--model", "resnet2d_avg", "--locate", "auto"]
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2 and "have none in labelsTr/" in result.output
    assert not (tmp_path / "run").exists()  # nothing trained


def test_a_retrained_fold_is_predicted_again(located: tuple[Path, Path, Path, str]) -> None:
    ds, run, cache, _ = located
    stamp = run / "fold_1" / "located.json"
    recorded = json.loads(stamp.read_text())
    assert recorded["model_weights"]  # the fold's weights the rows came from
    # as if fold 1 had been retrained since: its rows no longer stand for its bundle
    stamp.write_text(json.dumps({**recorded, "model_weights": "0" * 64}))
    rows_before = (run / "fold_1" / "located.csv").stat().st_mtime_ns
    untouched = (run / "fold_0" / "located.csv").stat().st_mtime_ns
    config = run.parent / "small.yaml"
    args = ["cv", ds, "--out", run, "--merge", "--cache", cache, "--locate", "auto"]
    _cli([*args, "--config", config])
    assert json.loads(stamp.read_text())["model_weights"] == recorded["model_weights"]
    assert (run / "fold_1" / "located.csv").stat().st_mtime_ns != rows_before
    assert (run / "fold_0" / "located.csv").stat().st_mtime_ns == untouched
