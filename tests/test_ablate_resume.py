"""`ablate` spread over sessions: an interrupted variant is continued in its own folder, never
another variant's, and a `cv` run made with a model's defaults counts as ablate's run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _predict_support import make_cohort
from liverphase.evaluate import ablate, ablate_runs
from liverphase.evaluate.ablate import experiment_tables
from liverphase.evaluate.ablate_runs import VARIANT_JSON, plan_run_dirs, variant_key
from liverphase.evaluate.cv import make_experiment, run_record
from liverphase.io.nifti import open_dataset


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


def test_run_ablate_marks_a_run_and_resumes_it_after_a_kill(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, bool]] = []

    class Killed(Exception):
        pass

    def killed_cv(dataset, run_dir, kwargs, **kw):  # noqa: ANN001, ANN003 - run_cv's signature
        calls.append((Path(run_dir).name, kw["resume"]))
        assert json.loads((Path(run_dir) / VARIANT_JSON).read_text())["model"] == "miff_spm"
        raise Killed

    monkeypatch.setattr(ablate_runs, "run_cv", killed_cv)
    for _ in range(2):
        with pytest.raises(Killed):
            ablate.run_ablate(
                dataset, tmp_path / "RUN", folds=2, epochs=2, tables=[4], log=lambda _: None
            )
    # the first attempt starts fresh, the second continues the same folder from its checkpoints
    assert calls == [("00_miff_spm", False), ("00_miff_spm", True)]
