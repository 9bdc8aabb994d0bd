"""Runs that know their data (issue 35): run.json and bundles record the dataset's fingerprint and
their training cases; `evaluate` refuses a dataset sharing studies or patients with them (judged on
image content: every synthetic seed names its cases CT0000...); `compare` refuses runs on other
data or folds; `ablate` reuses no row trained on other data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_support import one_line_error
from liverphase.cli import app
from liverphase.evaluate.ablate_runs import plan_runs
from liverphase.evaluate.cv import run_cv
from liverphase.evaluate.provenance import (
    CaseContent,
    DatasetContent,
    check_runs_data,
    dataset_content,
    find_overlap,
)
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.cache import FileHasher
from liverphase.synth.ct import synth_ct_cohort

RUNNER = CliRunner()
TRAIN = {
    "model": "resnet2d_avg",
    "epochs": 1,
    "batch_size": 4,
    "preprocess_overrides": {"size": (8, 32, 32), "register": False},
}


def invoke(args: list[object]):  # noqa: ANN201
    """Run the CLI with string arguments."""
    return RUNNER.invoke(app, [str(a) for a in args])


def ok(args: list[object]) -> str:
    """The CLI must exit 0; its output."""
    result = invoke(args)
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


def brighten(image: Path) -> None:
    """Rewrite a NIfTI with every voxel 1 higher (same grid)."""
    img = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1.0, img.affine), image)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Cohorts of seeds 3 and 4 (8 tiny cases each, both named CT0000-CT0007) and 2-fold cv runs:
    `a` and `a1` on seed 3 (fold seeds 0 and 5: other folds), `b` on seed 4."""
    root = tmp_path_factory.mktemp("run_data")
    paths = {"A": root / "A", "B": root / "B"}
    synth_ct_cohort(paths["A"], cases=8, seed=3, preset="tiny")
    synth_ct_cohort(paths["B"], cases=8, seed=4, preset="tiny")
    for name, data, seed in (("a", "A", 0), ("a1", "A", 5), ("b", "B", 0)):
        paths[name] = root / name
        run_cv(paths[data], paths[name], TRAIN, folds=2, seed=seed, n_boot=20, progress=False)
    return paths


def test_runs_and_bundles_record_their_data(work: dict[str, Path], tmp_path: Path) -> None:
    info = json.loads((work["a"] / "run.json").read_text())
    content = dataset_content(open_dataset(work["A"]))
    # stable: recomputed (no memo) and recorded by another run of the same data, it is the same
    assert info["data_fingerprint"] == content.fingerprint
    again = json.loads((work["a1"] / "run.json").read_text())["data_fingerprint"]
    assert again == content.fingerprint
    assert json.loads((work["b"] / "run.json").read_text())["data_fingerprint"] != again
    assert info["data"]["train_cases"] == [f"CT000{i}" for i in range(8)]
    assert "P0000" in info["data"]["train_patients"]
    for k in (0, 1):
        meta = json.loads((work["a"] / f"fold_{k}" / "bundle" / "bundle.json").read_text())
        trained = {*meta["split"]["train"], *meta["split"]["validation"]}
        assert set(meta["data"]["cases"]) == trained  # the fold's training cases, not its test
        assert meta["data"]["fingerprint"] == content.fingerprint
        one = meta["data"]["cases"][sorted(trained)[0]]
        assert len(one["images"]) == 4 and one["patient"].startswith("P")
    # one changed image changes the fingerprint; a copy elsewhere keeps it
    copy = Path(shutil.copytree(work["A"], tmp_path / "copy"))
    assert dataset_content(open_dataset(copy)).fingerprint == content.fingerprint
    brighten(copy / "imagesTr" / "CT0003_0001.nii.gz")
    assert dataset_content(open_dataset(copy)).fingerprint != content.fingerprint


def test_evaluate_refuses_the_training_cohort(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ev"
    line = one_line_error(
        ["evaluate", work["a"], "--data", work["A"], "--out", out],
        "8 of the 8 studies to evaluate overlap",
        "8 share image content",
        "(CT0000, CT0001, CT0002, ...)",
        "--allow-overlap",
    )
    assert "7 patient(s) were trained on (P0000, P0001, P0002, ...)" in line
    assert not out.exists()  # refused before any preprocessing
    # a copy with one study's images changed is another dataset: the other 7 studies still overlap
    copy = Path(shutil.copytree(work["A"], tmp_path / "copy"))
    for image in (copy / "imagesTr").glob("CT0005_*.nii.gz"):
        brighten(image)
    one_line_error(
        ["evaluate", work["a"], "--data", copy, "--out", out],
        "8 of the 8 studies to evaluate overlap",  # CT0005 by its patient (its other phases, too)
        "7 share image content",
    )


def test_evaluate_runs_on_another_seed_with_the_same_ids(
    work: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ev"
    ok(["evaluate", work["a"], "--data", work["B"], "--out", out])
    report = (out / "report.md").read_text()
    assert "## Training data" in report
    assert "None of the 8 evaluated studies is training data" in report
    assert json.loads((out / "metrics.json").read_text())["pooled"]["n_cases"] == 8


def test_allow_overlap_evaluates_and_says_so(work: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ev"
    output = ok(["evaluate", work["a"], "--data", work["A"], "--out", out, "--allow-overlap"])
    assert (
        "warning: evaluated with --allow-overlap: 8 of the 8 studies to evaluate overlap" in output
    )
    report = (out / "report.md").read_text()
    assert "**This evaluation includes training data** (`--allow-overlap`)" in report
    assert "optimistic" in report


def test_bundles_without_training_data_warn(work: dict[str, Path], tmp_path: Path) -> None:
    from liverphase.evaluate.external import evaluate_run

    old = Path(shutil.copytree(work["a"] / "fold_0" / "bundle", tmp_path / "old" / "bundle"))
    meta = json.loads((old / "bundle.json").read_text())
    del meta["data"]
    (old / "bundle.json").write_text(json.dumps(meta))
    result = evaluate_run(tmp_path / "old", work["A"], tmp_path / "ev", n_boot=20, progress=False)
    assert result["metrics"]["pooled"]["n_cases"] == 8
    assert "overlap with the training data cannot be checked: 1 bundle(s)" in result["note"]
    assert "could not be checked" in (tmp_path / "ev" / "report.md").read_text()


def test_compare_refuses_other_data_and_other_folds(
    work: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = ["--data", work["A"], "--out", tmp_path / "cmp", "--no-kinetics", "--no-time-steps"]
    one_line_error(["compare", work["a"], work["b"], *base], "'resnet2d_avg [b]'", "other data")
    splits = [json.loads((work[r] / "splits.json").read_text()) for r in ("a", "a1")]
    assert splits[0] != splits[1]
    one_line_error(["compare", work["a"], work["a1"], *base], "[a1]' used other folds")
    # a run recorded before fingerprints: today's check on folds only, with a warning
    old = Path(
        shutil.copytree(work["a"], tmp_path / "old", ignore=shutil.ignore_patterns("fold_*"))
    )
    info = json.loads((old / "run.json").read_text())
    del info["data_fingerprint"]
    (old / "run.json").write_text(json.dumps(info))
    ds = open_dataset(work["A"])
    with caplog.at_level(logging.WARNING):
        check_runs_data({"old": old, "new": work["a"]}, ds)  # the one recorded matches
    assert any("'old' record no dataset fingerprint" in r.getMessage() for r in caplog.records)


def test_ablate_reuses_no_row_of_other_data(work: dict[str, Path], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    done = Path(
        shutil.copytree(
            work["a"], runs / "00_resnet2d_avg", ignore=shutil.ignore_patterns("fold_*")
        )
    )
    info = json.loads((done / "run.json").read_text())
    keys = ("model", "model_options", "folds", "seed", "training", "preprocessing")
    record = {k: info[k] for k in (*keys, "data_fingerprint")}
    assert plan_runs(runs, {"row": record})["row"] == (done, "finished")
    other = {
        **record,
        "data_fingerprint": json.loads((work["b"] / "run.json").read_text())["data_fingerprint"],
    }
    assert plan_runs(runs, {"row": other})["row"] == (runs / "01_resnet2d_avg", "new")


def _content(cases: dict[str, tuple[str, list[str]]], fingerprint: str) -> DatasetContent:
    """A DatasetContent from case -> (patient, image digests)."""
    made = {
        c: CaseContent(p, "HCC", {f"P{i}": d for i, d in enumerate(ds)}, None)
        for c, (p, ds) in cases.items()
    }
    return DatasetContent(Path("ds"), fingerprint, made, FileHasher())


def test_patients_are_compared_within_one_namespace_only() -> None:
    trained = [{"fingerprint": "f0", "cases": {"S1": {"patient": "P1", "images": ["x1", "y1"]}}}]
    # a new export holding the training study (by content) and a follow-up of its patient
    linked = _content(
        {"S1": ("P1", ["x1", "y1"]), "S9": ("P1", ["x9"]), "S2": ("P2", ["x2"])}, "f1"
    )
    overlap = find_overlap(trained, linked, ["S9", "S2"])
    assert overlap.cases == ["S9"] and overlap.patients == ["P1"] and overlap.studies == []
    # re-pseudonymised: the patient follows the matched study, not its id
    renamed = _content({"T1": ("Q7", ["x1"]), "T2": ("Q7", ["x3"]), "T3": ("P1", ["x4"])}, "f2")
    assert find_overlap(trained, renamed, ["T2", "T3"]).cases == ["T2"]
    # another cohort with the same ids: nothing shared by content, so P1 is someone else
    other = _content({"S1": ("P1", ["z1"]), "S9": ("P1", ["z9"])}, "f3")
    assert find_overlap(trained, other, ["S1", "S9"]).cases == []
    assert not find_overlap([None], other, ["S1"]).checked
