"""Cirrhosis staging end to end on a tiny T1W/T2W cohort: cv per scan and per slice, ablate's
cirrhosis suite against radiomics, and predict on a study with one sequence."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from liverphase.errors import LiverphaseError
from liverphase.evaluate.ablate import run_ablate
from liverphase.evaluate.cv import run_cv
from liverphase.inference.predictor import Predictor
from liverphase.io.nifti import open_dataset
from liverphase.synth.cirrhosis import synth_cirrhosis_cohort

GRID = {"preprocess_overrides": {"size": (8, 32, 32), "register": False}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cirrhosis") / "data"
    return synth_cirrhosis_cohort(root, cases=12, seed=3, healthy=3, preset="tiny")


@pytest.fixture(scope="module")
def cv_run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    kwargs = {"model": "cirrhosis_msa", "epochs": 1, "batch_size": 4, **GRID}
    result = run_cv(cohort, out, kwargs, folds=2, seed=0, n_boot=50, progress=False)
    return out, result


def test_cv_scores_scans_and_slices(cohort, cv_run):
    out, result = cv_run
    pooled = result["metrics"]["pooled"]
    ds = open_dataset(cohort)
    ordinal = pooled["ordinal"]
    assert ordinal["n"] == len(ds.cases) and ordinal["class_names"] == ds.class_names
    assert np.array(ordinal["confusion"]).sum() == len(ds.cases)
    # per-slice accuracy is recomputable from slice_predictions.csv: organ slices only
    with open(out / "slice_predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["case_id"] for r in rows} == {c.case_id for c in ds.cases}
    organ = [r for r in rows if int(r["organ_voxels"]) > 0]
    assert 0 < len(organ) <= len(rows) == 8 * len(ds.cases)
    acc = np.mean([r["pred"] == r["label"] for r in organ])
    assert pooled["slices"]["slice_acc"] == pytest.approx(acc)
    assert pooled["slices"]["n_slices"] == len(organ)
    report = (out / "report.md").read_text()
    assert "## Staging (ordered classes)" in report and "Per-slice accuracy" in report


def test_predict_study_with_one_sequence(cohort, cv_run, tmp_path):
    out, _ = cv_run
    ds = open_dataset(cohort)
    case = next(c.case_id for c in ds.cases if ds.present_phases(c.case_id) == ["T2W"])
    study = ds.load_study(case)
    pred = Predictor(out / "fold_0" / "bundle").predict_study(
        study, tmp_path / "p", occlusion=False
    )
    assert pred["lesion"] is None and pred["kinetics"] is None
    assert pred["phases_present"] == ["T2W"]
    staging = pred["staging"]
    assert staging["stage"] == pred["label"] in ds.class_names
    probs = np.array(list(pred["probabilities"].values()))
    assert staging["expected_stage_index"] == pytest.approx(np.arange(probs.size) @ probs, abs=1e-3)
    # attention over the crop's slices of the sequence the study has, summing to one
    assert list(staging["slice_attention"]) == ["T2W"]
    assert sum(staging["slice_attention"]["T2W"]) == pytest.approx(1.0, abs=1e-3)
    # the organ figures are the liver mask's
    mask = study.mask
    voxel_ml = np.prod(mask.GetSpacing()) / 1000.0
    import SimpleITK as sitk

    volume = float((sitk.GetArrayViewFromImage(mask) > 0).sum()) * voxel_ml
    assert pred["organ"]["volume_ml"] == pytest.approx(volume, rel=1e-3)
    html = (tmp_path / "p" / "report.html").read_text()
    assert "Liver (whole-organ input)" in html and "Enhancement kinetics" not in html
    assert (tmp_path / "p" / "cam_T2W.nii.gz").is_file()
    assert not (tmp_path / "p" / "cam_T1W.nii.gz").exists()


def test_predict_without_liver_mask_is_a_clear_error(cohort, cv_run, tmp_path):
    out, _ = cv_run
    ds = open_dataset(cohort)
    study = ds.load_study(ds.cases[0].case_id)
    study.mask = None
    with pytest.raises(LiverphaseError, match="no liver mask"):
        Predictor(out / "fold_0" / "bundle").predict_study(study, tmp_path / "p")


def test_cirrhosis_suite_compares_with_radiomics_on_the_same_folds(cohort, tmp_path):
    out = tmp_path / "abl"
    result = run_ablate(
        cohort,
        out,
        folds=2,
        epochs=1,
        tables=[3],
        n_boot=50,
        suite="cirrhosis",
        log=lambda _: None,
        time_steps=False,
        shared=GRID,
    )
    (table,) = result["tables"].values()
    rows = {r["row"].split(" (")[0]: r for r in table}
    assert set(rows) == {"cirrhosis_msa", "radiomics"}
    assert len(table) == 3 and all(r["n"] == 15 for r in table)
    ref = next(r for r in table if r["row"].startswith("radiomics"))
    nets = [r for r in table if r is not ref]
    assert ref.get("acc_p") is None and all(0.0 <= r["acc_p"] <= 1.0 for r in nets)
    # only the slice-wise model has a per-slice accuracy
    assert [r["slice_acc"] is not None for r in nets] == [True, False]
    splits = {p.parent.name: p.read_text() for p in (out / "runs").glob("*/splits.json")}
    assert len(set(splits.values())) == 1 and len(splits) == 3
    report = (out / "report.md").read_text()
    assert "p acc vs radiomics" in report and "Per-stage accuracy" in report
    assert json.loads((out / "staging.json").read_text())["tables"]
