"""`ablate` spread over sessions: an interrupted variant is continued in its own folder, never
another variant's, and a `cv` run made with a model's defaults counts as ablate's run; a real run
broken off in its second row's second fold resumes without retraining what finished and ends where
an unbroken run ends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from _predict_support import make_cohort
from liverphase.evaluate import ablate, ablate_runs, cv
from liverphase.evaluate.ablate import experiment_tables
from liverphase.evaluate.ablate_runs import VARIANT_JSON, plan_run_dirs, variant_key
from liverphase.evaluate.cv import make_experiment, run_record
from liverphase.io.nifti import open_dataset
from liverphase.synth.ct import synth_ct_cohort
from liverphase.train.progress import FoldProgress


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("ablate_resume"), cases=4)


def _record(ds_root: Path, variant: dict) -> dict:
    exp = make_experiment(open_dataset(ds_root), profile="cpu", epochs=2, **variant)
    return run_record(exp, 2, 0)


def test_a_started_run_is_planned_for_its_own_variant_only(dataset: Path, tmp_path: Path) -> None:
    tables = experiment_tables(open_dataset(dataset).phases)
    full = tables["2. Components"]["+SPM+MIFF+MTL (full)"]
    backbone = tables["2. Components"]["Backbone"]
    runs = tmp_path / "runs"
    (runs / "00_miff_spm" / "fold_0").mkdir(parents=True)  # killed in its first fold
    (runs / "00_miff_spm" / VARIANT_JSON).write_text(json.dumps(_record(dataset, backbone)))
    plan = plan_run_dirs(runs, {variant_key(v): _record(dataset, v) for v in (full, backbone)})
    assert plan[variant_key(backbone)].name == "00_miff_spm"  # continued where it stopped
    assert plan[variant_key(full)].name == "01_miff_spm"
    # the full model alone must not take the backbone's half-trained folder
    alone = plan_run_dirs(runs, {variant_key(full): _record(dataset, full)})
    assert alone[variant_key(full)].name == "01_miff_spm"
    # a cv run that named no switch is ablate's full model (the model's defaults fill it in)
    (runs / "cv_run").mkdir()
    (runs / "cv_run" / "run.json").write_text(json.dumps(_record(dataset, {"model": "miff_spm"})))
    (runs / "cv_run" / "predictions.csv").write_text("case_id\n")
    again = plan_run_dirs(runs, {variant_key(full): _record(dataset, full)})
    assert again[variant_key(full)].name == "cv_run"


# std_net's phase table: three trained rows (4 phases, ART+PV+DL, ART+PV), tiny, 2 folds x 2 epochs
SMALL = {
    "preprocess_overrides": {"size": [8, 32, 32], "register": False},
    "batch_size": 2,
    "model_options": {"base_channels": 4, "scales": 3},
}
ROWS = ("00_std_net", "01_std_net", "02_std_net")
TIMED = ("step_s", "train_s", "step_timed_s", "run")  # a row's clock readings and its folder


class Interrupted(Exception):
    """Stands for a kill: raised after an epoch's checkpoint, as a kill between epochs leaves it."""


def _ablate(dataset: Path, out: Path) -> dict:
    return ablate.run_ablate(
        dataset,
        out,
        folds=2,
        epochs=2,
        suite="std_net",
        tables=[2],
        n_boot=20,
        shared=json.loads(json.dumps(SMALL)),
        time_steps=False,
        log=lambda _: None,
    )


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder` (its own relative path) → (mtime in ns, SHA-256)."""
    return {
        p.relative_to(folder).as_posix(): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _untimed(result: dict) -> dict:
    return {
        title: [{k: v for k, v in row.items() if k not in TIMED} for row in rows]
        for title, rows in result["tables"].items()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight tiny cases: two folds with both classes in each."""
    return synth_ct_cohort(tmp_path_factory.mktemp("resume") / "ds", cases=8, seed=3, preset="tiny")


def test_an_interrupted_row_resumes_where_it_stopped_and_ends_as_an_unbroken_run(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbroken = _ablate(cohort, tmp_path / "unbroken")
    run = tmp_path / "RUN"
    fits: list[str] = []  # every fold trained, as runs/<row>/fold_<k>
    epochs: list[tuple[str, int]] = []  # every epoch trained: (fold, epoch)
    cv_calls: list[tuple[str, bool]] = []  # every row's cross-validation: (row, resume)
    kill_at: list[tuple[str, int]] = [("01_std_net/fold_1", 1)]

    fit_fold, run_cv = cv._fit_fold, ablate_runs.run_cv

    def recorded_fit(exp, ds, items, train_ids, out, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        fits.append(Path(out).relative_to(run / "runs").as_posix())
        return fit_fold(exp, ds, items, train_ids, out, *args, **kwargs)

    def recorded_cv(dataset, run_dir, exp_kwargs, **kwargs):  # noqa: ANN001, ANN003
        cv_calls.append((Path(run_dir).name, kwargs["resume"]))
        return run_cv(dataset, run_dir, exp_kwargs, **kwargs)

    class Killer(FoldProgress):
        def __call__(self, epoch: int, record: dict) -> None:
            super().__call__(epoch, record)
            epochs.append((fits[-1], epoch))
            if (fits[-1], epoch) in kill_at:
                raise Interrupted

    monkeypatch.setattr(cv, "_fit_fold", recorded_fit)
    monkeypatch.setattr(cv, "FoldProgress", Killer)
    monkeypatch.setattr(ablate_runs, "run_cv", recorded_cv)

    with pytest.raises(Interrupted):
        _ablate(cohort, run)
    runs = run / "runs"
    # stopped in the second row's second fold, after its first epoch's checkpoint
    assert epochs[-1] == ("01_std_net/fold_1", 1) and len(epochs) == 7
    assert (runs / "00_std_net" / "predictions.csv").is_file()
    assert (runs / "01_std_net" / "fold_0" / "fold.json").is_file()
    assert (runs / "01_std_net" / VARIANT_JSON).is_file()
    assert not (runs / "01_std_net" / "predictions.csv").exists()
    assert not (runs / "01_std_net" / "fold_1" / "fold.json").exists()
    assert not (runs / "02_std_net").exists()
    finished = _files(runs / "00_std_net")
    first_fold = _files(runs / "01_std_net" / "fold_0")

    kill_at.clear()
    fits.clear()
    epochs.clear()
    resumed = _ablate(cohort, run)
    # nothing finished was trained again: the interrupted fold went on from epoch 2, then row 3
    assert epochs == [
        ("01_std_net/fold_1", 2),
        ("02_std_net/fold_0", 1),
        ("02_std_net/fold_0", 2),
        ("02_std_net/fold_1", 1),
        ("02_std_net/fold_1", 2),
    ]
    assert cv_calls == [
        ("00_std_net", False),
        ("01_std_net", False),
        ("01_std_net", True),
        ("02_std_net", False),
    ]
    assert _files(runs / "00_std_net") == finished  # not a byte rewritten
    assert _files(runs / "01_std_net" / "fold_0") == first_fold
    # the same results as the run nobody interrupted (training is deterministic on the CPU)
    for row in ROWS:
        got = (runs / row / "predictions.csv").read_text()
        assert got == (tmp_path / "unbroken" / "runs" / row / "predictions.csv").read_text(), row
    assert _untimed(resumed) == _untimed(unbroken)
