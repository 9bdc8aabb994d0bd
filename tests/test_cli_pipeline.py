"""The CLI end to end on a tiny synthetic cohort: synth → inspect → cv → evaluate → predict → ablate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverphase.cli import app

RUNNER = CliRunner()


def _ok(args: list[str]) -> str:
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "ds"
    _ok(["synth", str(root), "--cases", "12", "--seed", "3", "--preset", "tiny", "--dicom", "1"])
    return root


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(
        "train:\n  batch_size: 4\npreprocess:\n  size: [8, 32, 32]\n  register: false\n"
    )
    return path


@pytest.fixture(scope="module")
def cv_run(cohort: Path, small_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "cv"
    out = _ok(
        [
            "cv",
            str(cohort),
            "--model",
            "resnet2d_avg",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--out",
            str(run),
            "--config",
            str(small_config),
        ]
    )
    assert "pooled AUC" in out
    return run


def test_inspect_synthetic_cohort_is_clean(cohort: Path) -> None:
    out = _ok(["inspect", str(cohort), "--json"])
    info = json.loads(out)
    assert info["n_cases"] == 12 and info["problems"] == []


def test_cv_run_folder_contract(cv_run: Path, cohort: Path) -> None:
    metrics = json.loads((cv_run / "metrics.json").read_text())
    for key in ("auc", "auc_ci", "acc", "f1", "npv", "sensitivity", "specificity"):
        assert key in metrics["pooled"], key
    assert len(metrics["folds"]) == 2
    pre = json.loads((cv_run / "run.json").read_text())["preprocessing"]
    assert pre["margin_mm"] == 10.0 and pre["roi_source"] == "mask"  # the paper's crop
    splits = json.loads((cv_run / "splits.json").read_text())
    with open(cohort / "cases.csv", newline="") as fh:
        patient = {r["case_id"]: r["patient_id"] for r in csv.DictReader(fh)}
    tests = [c for s in splits.values() for c in s["test"]]
    assert sorted(tests) == sorted(patient)
    for s in splits.values():
        assert not {patient[c] for c in s["train"]} & {patient[c] for c in s["test"]}
    with open(cv_run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and {
        "case_id",
        "patient_id",
        "fold",
        "label",
        "prob_HCC",
        "prob_ICC",
    } <= set(rows[0])
    for row in rows:  # each case predicted by the fold that held it out
        assert row["case_id"] in splits[row["fold"]]["test"]
        assert abs(float(row["prob_HCC"]) + float(row["prob_ICC"]) - 1) < 1e-5
    for k in (0, 1):
        meta = json.loads((cv_run / f"fold_{k}" / "bundle" / "bundle.json").read_text())
        assert meta["model"] == "resnet2d_avg" and meta["preprocessing"]["size"] == [8, 32, 32]
        assert set(meta["split"]["test"]) == set(splits[str(k)]["test"])
        assert not set(meta["split"]["train"]) & set(meta["split"]["test"])
    assert (cv_run / "roc.png").stat().st_size > 1000 and "AUC" in (
        cv_run / "report.md"
    ).read_text()


def test_evaluate_on_a_dataset(cv_run: Path, cohort: Path, tmp_path: Path) -> None:
    # the run's own cohort: every study is training data, so evaluate needs --allow-overlap
    # (tests/test_run_data.py checks the refusal); this test checks the bundles' averaging
    args = ["evaluate", str(cv_run), "--data", str(cohort), "--out", str(tmp_path / "ev")]
    out = _ok([*args, "--allow-overlap"])
    assert "AUC" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["pooled"]["n_cases"] == 12
    # the mean of the fold bundles, each with the test-time flips its recipe names (as cv and predict)
    import numpy as np
    import torch

    from liverphase.evaluate.compare import oof_probs
    from liverphase.evaluate.cv import cached_items
    from liverphase.io.nifti import open_dataset
    from liverphase.models.tta import predict_with_flips
    from liverphase.preprocess.config import PreprocessConfig
    from liverphase.train.bundle import load_bundle

    ids, got = oof_probs(tmp_path / "ev")
    flipped, plain = [], []
    for bundle in sorted(cv_run.glob("fold_*/bundle")):
        model, meta = load_bundle(bundle)
        axes = tuple(meta["training"]["tta_flip_axes"])
        assert axes == (1, 2)
        pre = PreprocessConfig.from_dict(meta["preprocessing"])
        items = cached_items(open_dataset(cohort), tmp_path / "ev" / "cache", pre, 1, False)
        x = torch.stack([torch.from_numpy(np.load(items[c]["image"])) for c in ids])
        with torch.no_grad():
            flipped.append(predict_with_flips(model, x, axes)[0].numpy())
            plain.append(predict_with_flips(model, x, ())[0].numpy())
    np.testing.assert_allclose(got, np.mean(flipped, axis=0), atol=1e-4)
    assert np.abs(np.mean(plain, axis=0) - np.mean(flipped, axis=0)).max() > 1e-4


def test_predict_held_out_dicom_study(cv_run: Path, cohort: Path, tmp_path: Path) -> None:
    study = sorted(p for p in (cohort / "dicom").iterdir() if p.is_dir())[0]
    splits = json.loads((cv_run / "splits.json").read_text())
    fold = next(k for k, s in splits.items() if study.name in s["test"])
    out = _ok(
        [
            "predict",
            str(study),
            "--bundle",
            str(cv_run / f"fold_{fold}" / "bundle"),
            "--out",
            str(tmp_path / "p"),
            "--mask",
            str(cohort / "dicom" / f"{study.name}_mask.nii.gz"),
        ]
    )
    assert "report:" in out
    pred = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert set(pred["probabilities"]) == {"HCC", "ICC"} and pred["lesion"]["volume_ml"] > 0


def test_user_errors_exit_2_with_one_line(cohort: Path, small_config: Path, tmp_path: Path) -> None:
    cases = [
        ["cv", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
        ["cv", str(cohort), "--model", "no_such_model", "--out", str(tmp_path / "r")],
        ["cv", str(cohort), "--folds", "9", "--out", str(tmp_path / "r"), "--epochs", "1"],
        [
            "predict",
            str(cohort),
            "--bundle",
            str(tmp_path / "nobundle"),
            "--out",
            str(tmp_path / "p"),
        ],
        ["ablate", str(cohort), "--out", str(tmp_path / "a"), "--tables", "7"],
        ["ablate", str(cohort), "--out", str(tmp_path / "a"), "-o", "temporl=mean"],
        ["preprocess", str(cohort), "--out", str(tmp_path / "c"), "--profile", "gpu"],
    ]
    for args in cases:
        result = RUNNER.invoke(app, args)
        assert result.exit_code == 2, f"{args}: {result.output}"
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    # the trainer refuses a crop std_net (5 scales: multiples of 16) cannot halve, before a step
    # (after the crops' progress bar: the error is the one line that follows it)
    args = ["cv", str(cohort), "--model", "std_net", "--config", str(small_config)]
    result = RUNNER.invoke(
        app, [*args, "--folds", "2", "--epochs", "1", "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 2, result.output
    assert result.output.rstrip().splitlines()[-1].startswith("error:")
    assert "divisible by 16" in result.output and "Traceback" not in result.output


def test_preprocess_builds_the_entries_cv_reads(
    cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    from liverphase.evaluate.cv import make_experiment
    from liverphase.io.nifti import open_dataset
    from liverphase.preprocess.build import preprocess_dataset
    from liverphase.train.options import experiment_kwargs

    cache = tmp_path / "cache"
    # a segmenting model on three phases: its own ROI source, margin and phases, all in the key
    args = ["--model", "std_net", "--phases", "ART,PV,DL", "--config", str(small_config)]
    first = _ok(["preprocess", str(cohort), "--out", str(cache), *args])
    assert "built 12, reused 0" in first
    assert "built 0, reused 12" in _ok(["preprocess", str(cohort), "--out", str(cache), *args])
    kwargs = experiment_kwargs("std_net", "cpu", small_config, phases="ART,PV,DL")
    exp = make_experiment(open_dataset(cohort), **kwargs)
    stats = preprocess_dataset(cohort, cache, exp.preprocess, progress=False)
    assert (stats["built"], stats["reused"]) == (0, 12)
    # the classifier's entries (mask ROI, 10 mm margin, four phases) are other entries
    other = _ok(["preprocess", str(cohort), "--out", str(cache), "--config", str(small_config)])
    assert "built 12, reused 0" in other


def test_compare_runs_on_same_folds_with_delong_and_kinetics(
    cv_run: Path, cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    other = tmp_path / "ef"
    _ok(
        [
            "cv",
            str(cohort),
            "--model",
            "early_fusion",
            "--folds",
            "2",
            "--epochs",
            "1",
            "--out",
            str(other),
            "--config",
            str(small_config),
            "--cache",
            str(cv_run / "cache"),
        ]
    )
    out = _ok(
        ["compare", str(cv_run), str(other), "--data", str(cohort), "--out", str(tmp_path / "cmp")]
    )
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"resnet2d_avg", "early_fusion", "kinetics regression (true mask)"}
    assert by_model["resnet2d_avg"]["delong_p"] is None
    assert 0.0 <= by_model["early_fusion"]["delong_p"] <= 1.0
    assert by_model["early_fusion"]["params"] > 0 and by_model["early_fusion"]["step_s"] > 0
    # each network timed side by side in this sitting; the baseline trains nothing
    assert (
        by_model["early_fusion"]["step_timed_s"] > 0
        and by_model["resnet2d_avg"]["step_timed_s"] > 0
    )
    assert by_model["kinetics regression (true mask)"]["step_timed_s"] is None
    epochs = [r for f in other.glob("fold_*/log.csv") for r in csv.DictReader(open(f, newline=""))]
    assert len(epochs) == 2 and by_model["early_fusion"]["train_s"] == pytest.approx(
        sum(float(r["seconds"]) for r in epochs)
    )
    assert "Step s (timed)" in out and "Step s (logs)" in out
    assert len(by_model["kinetics regression (true mask)"]["auc_ci"]) == 2
    assert "DeLong p" in out
    # the footnote names the test: clustered by patient when the cohort has follow-up studies
    from liverphase.evaluate.stats import auc_test_name

    with open(cv_run / "predictions.csv", newline="") as fh:
        patients = [r["patient_id"] for r in csv.DictReader(fh)]
    assert by_model["early_fusion"]["delong_method"] == auc_test_name(patients)
    assert auc_test_name(patients) in (tmp_path / "cmp" / "comparison.md").read_text()
    # a run cached elsewhere (--cache) records where: compare finds it without being told
    assert json.loads((other / "run.json").read_text())["cache"] == str(
        (cv_run / "cache").resolve()
    )
    c2 = ["compare", str(other), str(cv_run), "--data", str(cohort), "--out", str(tmp_path / "c2")]
    assert "Step s (timed)" not in _ok([*c2, "--no-time-steps"])
    assert not (other / "cache").exists()
    assert all(
        r["step_timed_s"] is None
        for r in json.loads((tmp_path / "c2" / "comparison.json").read_text())
    )


def test_ablate_tables_cover_the_papers_experiments() -> None:
    from liverphase.evaluate.ablate import experiment_tables, full_model

    tables = experiment_tables(["NC", "ART", "PV", "DL"])
    assert len(tables) == 5
    full = full_model()
    for rows in tables.values():  # every table holds the reference model for DeLong
        assert full in rows.values()
    components = list(tables["2. Components"].values())
    assert components[0]["model_options"] == {"miff": False, "spm": False, "mtl_lambda": 1.0}
    lambdas = [v["model_options"]["mtl_lambda"] for v in tables["3. Multi-task weight λ"].values()]
    assert lambdas == [0.0, 0.25, 0.5, 0.75]
    assert [v.get("phases") for v in tables["5. Phases"].values()][1:] == [
        ["NC", "ART", "PV"],
        ["NC", "ART", "DL"],
    ]
    assert tables["4. Input channels"]["1 raw channel"]["in_channels"] == 1
    region = tables["1. MIFF+SPM vs other networks and the kinetics baseline"][
        "miff_spm + region reading"
    ]
    assert region["model_options"] == {**full["model_options"], "region_kinetics": True}


def test_ablate_std_net_suite_tables() -> None:
    from liverphase.errors import ConfigError
    from liverphase.evaluate.ablate import experiment_tables, full_model

    tables = experiment_tables(["NC", "ART", "PV", "DL"], suite="std_net")
    full = full_model("std_net")
    assert full["model"] == "std_net" and full["model_options"] == {"temporal": "transformer"}
    for rows in tables.values():
        assert full in rows.values()
    temporal = tables["1. Temporal module"]
    modes = [
        v["model_options"].get("temporal") for v in temporal.values() if v["model"] == "std_net"
    ]
    assert modes == ["transformer", "gru", "mean", "concat"]
    assert temporal["unet_channels (phases as channels)"]["model"] == "unet_channels"
    assert [v.get("phases") for v in tables["2. Phases"].values()] == [
        None,
        ["ART", "PV", "DL"],
        ["ART", "PV"],
    ]
    # the published three phases as the dataset: the 2-phase row remains, the 3-phase one is the full
    three = experiment_tables(["ART", "PV", "DL"], suite="std_net")["2. Phases"]
    assert list(three) == ["3 phases", "ART+PV"]
    missing = tables["3. A phase missing at inference"]
    assert list(missing) == [
        "all phases (full)",
        *(f"without {p}" for p in ("NC", "ART", "PV", "DL")),
    ]
    assert [v.get("missing_phase") for v in missing.values()] == [None, "NC", "ART", "PV", "DL"]
    with pytest.raises(ConfigError):
        experiment_tables(["NC"], suite="nope")


def test_ablate_shared_options_reach_only_the_models_that_take_them() -> None:
    """-o on ablate: each row's model gets the options it takes; a row's own options win."""
    from liverphase.errors import ConfigError
    from liverphase.evaluate.ablate import (
        check_shared_options,
        experiment_tables,
        with_shared_options,
    )
    from liverphase.evaluate.compare import KINETICS

    options = {"region_kinetics": True, "region_reading": "radial", "temporal": "gru"}
    temporal = experiment_tables(["ART", "PV", "DL"], suite="std_net")["1. Temporal module"]
    shared = {row: with_shared_options(v, options) for row, v in temporal.items()}
    assert shared["mean"]["model_options"] == {
        "region_kinetics": True,
        "region_reading": "radial",
        "temporal": "mean",
    }
    unet = shared["unet_channels (phases as channels)"]["model_options"]
    assert unet == {"region_kinetics": True, "region_reading": "radial"}  # no temporal module
    paper = experiment_tables(["NC", "ART", "PV", "DL"])[
        "1. MIFF+SPM vs other networks and the kinetics baseline"
    ]
    assert (
        with_shared_options(paper["resnet3d18"], {"region_reading": "radial"})
        == paper["resnet3d18"]
    )
    assert with_shared_options(paper[KINETICS], options) == paper[KINETICS]
    miff = with_shared_options(paper["miff_spm"], {"region_reading": "radial"})
    assert miff["model_options"] == {
        **paper["miff_spm"]["model_options"],
        "region_reading": "radial",
    }
    check_shared_options(options, {"std_net", "unet_channels"})
    with pytest.raises(ConfigError, match="temporal"):  # no paper-suite model has a temporal module
        check_shared_options({"temporal": "gru"}, {"miff_spm", "resnet3d18"})


def test_cv_of_a_segmenting_model_writes_per_case_dice_and_compare_tests_it(
    cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    runs = {}
    for mode in ("transformer", "mean"):
        runs[mode] = tmp_path / mode
        _ok(
            [
                "cv",
                str(cohort),
                "--model",
                "std_net",
                "--recipe",  # the plain network: this test is about the segmentation outputs
                "default",
                "--folds",
                "2",
                "--epochs",
                "1",
                "--out",
                str(runs[mode]),
                "--config",
                str(small_config),
                "--cache",
                str(tmp_path / "cache"),
                *("-o", "base_channels=4", "-o", "scales=3", "-o", f"temporal={mode}"),
            ]
        )
    # segmenting models crop the jittered box with a 3 mm margin, classifiers the paper's 10 mm
    pre = json.loads((runs["mean"] / "run.json").read_text())["preprocessing"]
    assert pre["margin_mm"] == 3.0 and pre["roi_source"] == "mask_jitter"
    with open(runs["mean"] / "segmentation.csv", newline="") as fh:
        seg = list(csv.DictReader(fh))
    assert sorted(r["case_id"] for r in seg) == sorted(
        r["case_id"] for r in csv.DictReader(open(cohort / "cases.csv", newline=""))
    )
    dice = [float(r["dice"]) for r in seg]
    assert all(0.0 <= d <= 1.0 for d in dice)
    pooled = json.loads((runs["mean"] / "metrics.json").read_text())["pooled"]
    assert pooled["dice"] == pytest.approx(sum(dice) / len(dice))
    assert all(float(r["true_volume_ml"]) > 0 for r in seg)
    report = (runs["mean"] / "report.md").read_text()
    assert "## Segmentation" in report and "True volume (ml)" in report
    # the same predictions on each study's own grid, as predict writes the mask
    with open(runs["mean"] / "segmentation_study.csv", newline="") as fh:
        study = list(csv.DictReader(fh))
    assert [r["case_id"] for r in study] == [r["case_id"] for r in seg]
    assert [r["fold"] for r in study] == [r["fold"] for r in seg] and {r["fold"] for r in seg} == {
        "0",
        "1",
    }
    study_dice = [float(r["dice"]) for r in study]
    assert pooled["study_dice"] == pytest.approx(sum(study_dice) / len(study_dice))
    assert pooled["study_dice_ci"][0] <= pooled["study_dice"] <= pooled["study_dice_ci"][1]
    # true volumes agree across grids (the crop grid resamples the label map: within 35%)
    for crop_row, study_row in zip(seg, study, strict=True):
        ratio = float(crop_row["true_volume_ml"]) / float(study_row["true_volume_ml"])
        assert 0.65 < ratio < 1.35
    assert "### On the study grid" in report and "Dice, study grid" in report
    out_dir = tmp_path / "cmp"
    _ok(["compare", *(str(r) for r in runs.values()), "--data", str(cohort), "--out", str(out_dir)])
    rows = {r["model"]: r for r in json.loads((out_dir / "comparison.json").read_text())}
    first, second = (r for k, r in rows.items() if k.startswith("std_net"))
    assert first["dice"] == pytest.approx(
        json.loads((runs["transformer"] / "metrics.json").read_text())["pooled"]["dice"]
    )
    assert "dice_p" not in first and 0.0 <= second["dice_p"] <= 1.0
    assert first["study_dice"] == pytest.approx(
        json.loads((runs["transformer"] / "metrics.json").read_text())["pooled"]["study_dice"]
    )
    assert 0.0 <= second["study_dice_p"] <= 1.0
    assert "Dice, study grid (95% CI)" in (out_dir / "comparison.md").read_text()
    assert rows["kinetics regression (true mask)"].get("dice") is None
    assert "Dice (95% CI)" in (out_dir / "comparison.md").read_text()
    _check_missing_phases(runs["transformer"], runs["mean"], cohort, tmp_path)
    # evaluate: the fold bundles' mean lesion probability, thresholded, scored per case
    ev = tmp_path / "ev"
    _ok(["evaluate", str(runs["mean"]), "--data", str(cohort), "--out", str(ev), "--allow-overlap"])
    with open(ev / "segmentation.csv", newline="") as fh:
        ev_dice = [float(r["dice"]) for r in csv.DictReader(fh)]
    assert len(ev_dice) == 12 and all(0.0 <= d <= 1.0 for d in ev_dice)
    ev_pooled = json.loads((ev / "metrics.json").read_text())["pooled"]
    assert ev_pooled["dice"] == pytest.approx(sum(ev_dice) / 12)
    assert ev_pooled["dice_ci"][0] <= ev_pooled["dice"] <= ev_pooled["dice_ci"][1]
    assert "## Segmentation" in (ev / "report.md").read_text()
    assert (ev / "segmentation_study.csv").is_file() and "study_dice" in ev_pooled


def _check_missing_phases(run: Path, other: Path, cohort: Path, tmp_path: Path) -> None:
    """Withholding nothing re-predicts the run exactly; withholding a phase changes its predictions,
    and compare tests each withheld phase against the full run on the same cases."""
    from liverphase.evaluate.compare import oof_probs
    from liverphase.evaluate.missing_phase import missing_phase_run

    ids, probs = oof_probs(run)
    same = missing_phase_run(run, cohort, None, tmp_path / "none", n_boot=50)
    same_ids, same_probs = oof_probs(same)
    assert same_ids == ids and abs(same_probs - probs).max() < 1e-5
    dice = [r["dice"] for r in csv.DictReader(open(run / "segmentation.csv", newline=""))]
    assert [r["dice"] for r in csv.DictReader(open(same / "segmentation.csv", newline=""))] == dice
    out = tmp_path / "missing"
    _ok(
        ["compare", str(run), str(other), "--data", str(cohort), "--out", str(out)]
        + ["--missing-phases", "--no-kinetics"]
    )
    rows = [r["model"] for r in json.loads((out / "comparison.json").read_text())]
    full = "std_net (base_channels=4, scales=3, temporal=transformer)"
    assert rows == [
        full,
        *(f"{full} without {p}" for p in ("NC", "ART", "PV", "DL")),
        "std_net (base_channels=4, scales=3, temporal=mean)",
    ]
    table = {r["model"]: r for r in json.loads((out / "comparison.json").read_text())}
    for p in ("NC", "ART", "PV", "DL"):
        row, folder = table[f"{full} without {p}"], out / f"missing_{p}"
        assert json.loads((folder / "run.json").read_text())["missing_phase"] == p
        assert (folder / "splits.json").read_bytes() == (run / "splits.json").read_bytes()
        assert 0.0 <= row["delong_p"] <= 1.0 and 0.0 <= row["dice_p"] <= 1.0
    changed = [
        abs(oof_probs(out / f"missing_{p}")[1] - probs).max() for p in ("NC", "ART", "PV", "DL")
    ]
    assert min(changed) > 1e-6


def test_missing_phases_need_a_model_with_a_phase_mask(
    cv_run: Path, cohort: Path, tmp_path: Path
) -> None:
    result = RUNNER.invoke(
        app,
        ["compare", str(cv_run), "--data", str(cohort), "--out", str(tmp_path / "c")]
        + ["--missing-phases"],
    )
    assert result.exit_code == 2
    assert "cannot predict with a phase missing" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_writes_a_bundle_over_all_cases(
    cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    run = tmp_path / "train"
    out = _ok(
        [
            "train",
            str(cohort),
            "--model",
            "early_fusion",
            "--epochs",
            "1",
            "--out",
            str(run),
            "--config",
            str(small_config),
        ]
    )
    assert "bundle:" in out
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    split = meta["split"]
    assert split["test"] == [] and len(split["train"]) + len(split["validation"]) == 12
    assert meta["training"]["epochs"] == 1 and meta["preprocessing"]["size"] == [8, 32, 32]
    assert (run / "bundle" / "model.safetensors").stat().st_size > 1000


@pytest.mark.parametrize("suite", ["paper", "std_net"])
def test_every_ablate_variant_builds_a_consistent_experiment(cohort: Path, suite: str) -> None:
    """Each row's settings make a model whose λ is the loss's λ (table 2/3 once failed here)."""
    from liverphase.evaluate.ablate import experiment_tables
    from liverphase.evaluate.cv import make_experiment
    from liverphase.io.nifti import open_dataset
    from liverphase.train.recipe import check_model_config, model_factory_from_config

    ds = open_dataset(cohort)
    for rows in experiment_tables(ds.phases, suite).values():
        for variant in rows.values():
            if variant["model"] == "kinetics" or "missing_phase" in variant:
                continue  # not trained: a baseline, or the full model re-predicted
            exp = make_experiment(ds, profile="cpu", **variant)
            lam = variant["model_options"].get("mtl_lambda")
            if lam is not None:
                assert exp.train.mtl_lambda == lam
            phases = variant.get("phases") or ds.phases
            model = model_factory_from_config(exp.train, 2, phases, exp.preprocess.n_channels)()
            check_model_config(model, exp.train, exp.preprocess.roi_channel)


def test_ablate_reuses_a_run_only_when_its_settings_match(cohort: Path, tmp_path: Path) -> None:
    """A RUN grown table by table: finished runs are matched by run.json, never by position."""
    from liverphase.evaluate.ablate import experiment_tables
    from liverphase.evaluate.ablate_runs import plan_run_dirs, variant_key
    from liverphase.evaluate.cv import make_experiment, run_record
    from liverphase.io.nifti import open_dataset

    ds = open_dataset(cohort)
    tables = experiment_tables(ds.phases)
    one_channel = tables["4. Input channels"]["1 raw channel"]
    backbone = tables["2. Components"]["Backbone"]
    full = tables["2. Components"]["+SPM+MIFF+MTL (full)"]

    def record(variant: dict, **over: object) -> dict:
        exp = make_experiment(ds, profile="cpu", epochs=3, **variant, **over)
        return run_record(exp, 3, 0)

    runs = tmp_path / "runs"
    # an earlier `--tables 4` run: the full model as 00 and the 1-channel variant as 01
    for name, variant in (("00_miff_spm", full), ("01_miff_spm", one_channel)):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(json.dumps({**record(variant), "seconds": 1.0}))
        (runs / name / "predictions.csv").write_text("case_id\n")
    plan = plan_run_dirs(
        runs,
        {variant_key(v): record(v) for v in (full, backbone, one_channel)},
    )
    assert plan[variant_key(full)].name == "00_miff_spm"
    assert plan[variant_key(one_channel)].name == "01_miff_spm"
    assert plan[variant_key(backbone)].name == "02_miff_spm"  # not the finished 1-channel run at 01
    # the same variant with other training settings is a new run too
    other = plan_run_dirs(runs, {variant_key(full): record(full, lr=1e-2)})
    assert other[variant_key(full)].name == "02_miff_spm"
    # a run recorded before a setting existed ran with its default: still the same run
    old = json.loads((runs / "00_miff_spm" / "run.json").read_text())
    del old["training"]["augment_params"]["phase_dropout_prob"]
    (runs / "00_miff_spm" / "run.json").write_text(json.dumps(old))
    assert (
        plan_run_dirs(runs, {variant_key(full): record(full)})[variant_key(full)].name
        == "00_miff_spm"
    )
    dropout = record(full)
    dropout["training"]["augment_params"]["phase_dropout_prob"] = 0.5
    assert (
        plan_run_dirs(runs, {variant_key(full): dropout})[variant_key(full)].name == "02_miff_spm"
    )
    old["training"]["retired_setting"] = 1  # a setting this version no longer knows
    (runs / "00_miff_spm" / "run.json").write_text(json.dumps(old))
    assert (
        plan_run_dirs(runs, {variant_key(full): record(full)})[variant_key(full)].name
        == "02_miff_spm"
    )
    (runs / "00_miff_spm" / "run.json").write_text(json.dumps({**record(full), "seconds": 1.0}))
    (runs / "01_miff_spm" / "predictions.csv").unlink()  # unfinished: its name is free again
    again = plan_run_dirs(runs, {variant_key(v): record(v) for v in (full, backbone)})
    assert again[variant_key(backbone)].name == "01_miff_spm"
    # `cv --model miff_spm` names no switch: its defaults are ablate's full model, the same run;
    # naming a switch off is not
    plain = {"model": "miff_spm"}
    (runs / "00_miff_spm" / "run.json").write_text(json.dumps(record(plain)))
    assert (
        plan_run_dirs(runs, {variant_key(full): record(full)})[variant_key(full)].name
        == "00_miff_spm"
    )
    assert record(plain)["model_options"] != record(full)["model_options"]
    no_spm = {"model": "miff_spm", "model_options": {"spm": False}}
    (runs / "00_miff_spm" / "run.json").write_text(json.dumps(record(no_spm)))
    assert (
        plan_run_dirs(runs, {variant_key(full): record(full)})[variant_key(full)].name
        != "00_miff_spm"
    )


def test_ablate_std_net_missing_phase_table_end_to_end(
    cohort: Path, small_config: Path, tmp_path: Path
) -> None:
    """`ablate --suite std_net --tables 3` trains only the full model and re-predicts it per phase;
    --config and -o reach the trained run."""
    out = tmp_path / "abl"
    args = ["ablate", str(cohort), "--out", str(out), "--suite", "std_net", "--tables", "3"]
    shared = ["--config", str(small_config), "-o", "region_kinetics=true", "-o", "scales=3"]
    _ok([*args, "--folds", "2", "--epochs", "1", *shared, "-o", "region_reading=radial"])
    assert [d.name for d in (out / "runs").iterdir()] == ["00_std_net"]
    record = json.loads((out / "runs" / "00_std_net" / "run.json").read_text())
    assert record["model_options"]["region_reading"] == "radial"
    assert record["model_options"]["temporal"] == "transformer"  # the row's own, kept
    assert record["model_options"]["scales"] == 3
    assert record["preprocessing"]["size"] == [8, 32, 32] and record["training"]["batch_size"] == 4
    assert "region_reading" in (out / "report.md").read_text()  # the shared settings are stated
    rows = json.loads((out / "ablation.json").read_text())["tables"][
        "3. A phase missing at inference"
    ]
    assert [r["model"] for r in rows] == [
        "all phases (full)",
        *(f"without {p}" for p in ("NC", "ART", "PV", "DL")),
    ]
    full = json.loads((out / "runs" / "00_std_net" / "metrics.json").read_text())["pooled"]
    assert rows[0]["auc"] == pytest.approx(full["auc"]) and rows[0]["dice"] == pytest.approx(
        full["dice"]
    )
    for row in rows[1:]:
        phase = row["model"].split()[-1]
        run = json.loads((out / "missing" / phase / "run.json").read_text())
        assert run["missing_phase"] == phase and 0.0 <= row["delong_p"] <= 1.0
        assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["dice_p"] <= 1.0
    assert "## 3. A phase missing at inference" in (out / "report.md").read_text()
    # one network behind every row (the phase is withheld at inference): timed once, one figure
    assert rows[0]["step_timed_s"] > 0 and {r["step_timed_s"] for r in rows} == {
        rows[0]["step_timed_s"]
    }
    assert "Step s (timed)" in (out / "report.md").read_text()
    # the wall time of training, every sitting: the one trained run's epochs, summed once
    logs = (out / "runs" / "00_std_net").glob("fold_*/log.csv")
    epoch_s = [float(r["seconds"]) for f in logs for r in csv.DictReader(open(f, newline=""))]
    assert len(epoch_s) == 2 and rows[0]["train_s"] == pytest.approx(sum(epoch_s))
    summary = json.loads((out / "ablation.json").read_text())
    assert summary["train_seconds"] == pytest.approx(sum(epoch_s), abs=0.1)
    assert all(r["train_s"] is None for r in rows[1:])  # withheld phases train nothing
