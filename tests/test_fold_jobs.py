"""Folds and ablation rows as independent jobs: `cv --fold K` in separate processes then `--merge`
equals one `cv` call exactly; merges refuse missing folds and folds trained otherwise; `ablate
--plan` prints commands whose runs `ablate` reuses; two processes filling one cache at once leave
it as one process would."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from liverphase.atomic import atomic_dir
from liverphase.cli import app
from liverphase.preprocess import cache as cache_mod
from liverphase.preprocess.cache import CHECKSUMS, PreprocessCache
from liverphase.synth.ct import synth_ct_cohort

RUNNER = CliRunner()
CV = ["--model", "resnet2d_avg", "--folds", "3", "--epochs", "1", "--seed", "0"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(args: list, code: int = 0, stdout: bool = False) -> str:
    """The command's output (stdout alone if asked), after checking its exit code."""
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"{args}: {result.output}\n{result.exception!r}"
    return result.stdout if stdout else result.output


def _start(args: list) -> subprocess.Popen:
    """`python -m liverphase.cli ARGS` as a process of its own."""
    cmd = [sys.executable, "-m", "liverphase.cli", *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        output = proc.communicate(timeout=300)[0].decode()
        assert proc.returncode == 0, output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_ct_cohort(tmp_path_factory.mktemp("jobs") / "ds", cases=12, seed=3, preset="tiny")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(
        "train:\n  batch_size: 4\npreprocess:\n  size: [8, 32, 32]\n  register: false\n"
    )
    return path


@pytest.fixture(scope="module")
def runs(cohort: Path, small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(one `cv` call's RUN, a RUN of three `cv --fold K` processes run at once, then --merge)."""
    root = tmp_path_factory.mktemp("runs")
    whole, jobs = root / "whole", root / "jobs"
    args = ["cv", cohort, "--out", jobs, *CV, "--config", small]
    procs = [_start([*args, "--fold", k]) for k in range(3)]  # they fill jobs/cache together
    # the whole call in a process of its own too: the same thread count (ENV), so the same sums
    procs.append(_start(["cv", cohort, "--out", whole, *CV, "--config", small]))
    _wait(procs)
    assert not (jobs / "predictions.csv").exists()  # a fold job pools nothing
    assert "pooled AUC" in _cli(["cv", cohort, "--out", jobs, "--merge"])
    return whole, jobs


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _same_results(a: Path, b: Path) -> None:
    rows_a, rows_b = _rows(a), _rows(b)
    assert [r["case_id"] for r in rows_a] == [r["case_id"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["fold"] == rb["fold"] and ra["label"] == rb["label"]
        probs = [k for k in ra if k.startswith("prob_")]
        assert np.allclose([float(ra[k]) for k in probs], [float(rb[k]) for k in probs], atol=1e-6)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (a, b)]
    assert metrics[0] == metrics[1]


def test_fold_jobs_merge_to_exactly_one_cv_call(runs: tuple[Path, Path]) -> None:
    whole, jobs = runs
    _same_results(whole, jobs)
    assert (whole / "splits.json").read_text() == (jobs / "splits.json").read_text()
    for k in range(3):  # a whole cv leaves each fold as a job does
        for name in ("bundle/bundle.json", "oof.npz", "fold.json", "log.csv"):
            assert (whole / f"fold_{k}" / name).is_file() and (jobs / f"fold_{k}" / name).is_file()
    run = json.loads((jobs / "run.json").read_text())
    assert run["model"] == "resnet2d_avg" and run["folds"] == 3 and run["training"]["epochs"] == 1
    assert "3-fold" in (jobs / "report.md").read_text()


def test_plain_cv_on_finished_folds_pools_without_training(
    runs: tuple[Path, Path], cohort: Path, small: Path, tmp_path: Path
) -> None:
    _, jobs = runs
    run = tmp_path / "again"
    shutil.copytree(jobs, run)
    for name in ("predictions.csv", "metrics.json", "report.md", "run.json"):
        (run / name).unlink()
    stamps = {k: (run / f"fold_{k}" / "log.csv").stat().st_mtime_ns for k in range(3)}
    _cli(["cv", cohort, "--out", run, *CV, "--config", small])
    assert stamps == {k: (run / f"fold_{k}" / "log.csv").stat().st_mtime_ns for k in range(3)}
    _same_results(jobs, run)


def test_merge_names_missing_folds_and_folds_trained_otherwise(
    runs: tuple[Path, Path], cohort: Path, small: Path, tmp_path: Path
) -> None:
    _, jobs = runs
    run = tmp_path / "run"
    shutil.copytree(jobs, run)
    (run / "fold_1" / "fold.json").unlink()
    out = _cli(["cv", cohort, "--out", run, "--merge"], code=2)
    assert "1 of 3 folds not finished (fold_1)" in out and len(out.strip().splitlines()) == 1
    # fold 1 again, with another epoch count (the last --epochs wins): trained, never pooled
    args = ["cv", cohort, "--out", run, *CV, "--config", small]
    _cli([*args, "--epochs", "2", "--fold", "1"])
    out = _cli(["cv", cohort, "--out", run, "--merge"], code=2)
    assert "fold_1" in out and "training.epochs" in out and "2 vs 1" in out
    # the folds must be the RUN's: another --folds is refused before anything is trained
    out = _cli([*args, "--folds", "2", "--fold", "0"], code=2)
    assert "splits.json" in out and "other folds" in out
    out = _cli([*args, "--fold", "3"], code=2)
    assert "--fold" in out and "0-2" in out


def test_merge_refuses_folds_of_other_data(
    runs: tuple[Path, Path], cohort: Path, tmp_path: Path
) -> None:
    """One image changed, same cases, labels and folds: the folds were not trained on this data."""
    _, jobs = runs
    run, data = tmp_path / "run", tmp_path / "ds"
    shutil.copytree(jobs, run)
    shutil.copytree(cohort, data)
    image = data / "imagesTr" / "CT0000_0000.nii.gz"
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    changed = sitk.GetImageFromArray(pixels + 1)
    changed.CopyInformation(sitk.ReadImage(str(image)))
    sitk.WriteImage(changed, str(image))
    out = _cli(["cv", data, "--out", run, "--merge"], code=2)
    assert "fold_0 was trained on other data (inputs" in out


def test_ablate_plan_commands_are_the_rows_ablate_reuses(
    cohort: Path, small: Path, tmp_path: Path
) -> None:
    out = tmp_path / "abl"
    args = ["ablate", cohort, "--out", out, "--suite", "std_net", "--tables", "3", "--folds", "2"]
    args += ["--epochs", "1", "--config", small, "-o", "scales=3", "--no-time-steps"]
    commands = _cli([*args, "--plan"], stdout=True).strip().splitlines()
    assert len(commands) == 1 and commands[0].startswith("liverphase cv ")
    assert not (out / "runs" / "00_std_net" / "run.json").exists()  # planned, not trained
    argv = shlex.split(commands[0])
    assert argv[argv.index("--out") + 1] == str((out / "runs" / "00_std_net").resolve())
    assert _cli([*args, "--plan"], stdout=True).strip().splitlines() == commands  # same folder
    _cli(argv[1:])  # the job, run wherever
    log = out / "runs" / "00_std_net" / "fold_0" / "log.csv"
    stamp = log.stat().st_mtime_ns
    assert _cli([*args, "--plan"], stdout=True).strip() == ""  # nothing left to train
    output = _cli(args)
    assert "00_std_net: reused" in output and log.stat().st_mtime_ns == stamp
    assert (out / "report.md").is_file()


def test_every_planned_row_of_the_paper_suite_is_the_row_ablate_records(
    cohort: Path, small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phases, channels, λ, switches, shared -o and --config: each printed command, parsed by the
    CLI, builds exactly the run record ablate matches the row's folder by (nothing trained)."""
    from liverphase.evaluate import cv
    from liverphase.io.nifti import open_dataset

    out = tmp_path / "abl"
    args = ["ablate", cohort, "--out", out, "--folds", "2", "--epochs", "1", "--config", small]
    commands = (
        _cli([*args, "-o", "region_kinetics=true", "--plan"], stdout=True).strip().splitlines()
    )
    calls: list[tuple] = []
    monkeypatch.setattr(cv, "run_cv", lambda *a, **kw: calls.append((a, kw)) or {"metrics": 0})
    ds = open_dataset(cohort)
    for command in commands:
        RUNNER.invoke(app, shlex.split(command)[1:])  # stops after run_cv: its result is a stub
        (_, run_dir, kwargs), kw = calls[-1]
        record = cv.run_record(cv.make_experiment(ds, seed=kw["seed"], **kwargs), kw["folds"], 0)
        variant = json.loads((Path(run_dir) / "variant.json").read_text())
        assert record == {k: variant[k] for k in record}, run_dir
    # the suite's trained networks, each once: tables 1-5 less the kinetics baseline and repeats
    assert len(commands) == len(calls) == len(list((out / "runs").iterdir())) >= 10
    assert {Path(c[0][1]).parent for c in calls} == {(out / "runs").resolve()}


def _entries(root: Path) -> dict[str, dict]:
    """Each cache entry: its arrays' bytes and its meta.json without the build's timings."""

    def plain(meta: object) -> object:
        if isinstance(meta, dict):
            return {k: plain(v) for k, v in meta.items() if k not in ("timings", "seconds")}
        return meta

    cache = PreprocessCache(root)
    out = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        assert not d.name.startswith("."), f"left over: {d}"  # no temporary or displaced folder
        assert cache.problem(d.name) is None
        meta = json.loads((d / "meta.json").read_text())
        arrays = {n: (d / n).read_bytes() for n in meta[CHECKSUMS]}
        out[d.name] = {"meta": plain(meta), "arrays": arrays}
    return out


def test_two_processes_fill_one_cache_as_one_process_would(
    cohort: Path, small: Path, tmp_path: Path
) -> None:
    shared, single = tmp_path / "shared", tmp_path / "single"
    args = ["preprocess", cohort, "--model", "resnet2d_avg", "--config", small]
    _wait([_start([*args, "--out", shared]) for _ in range(2)])
    _cli([*args, "--out", single])
    assert len(_entries(single)) == 12
    assert _entries(shared) == _entries(single)
    index = [json.loads((r / "index.json").read_text()) for r in (shared, single)]
    assert index[0] == index[1]


def test_a_writer_keeps_the_entry_another_published_and_replaces_a_damaged_one(
    tmp_path: Path,
) -> None:
    """The two orders of a race, made deterministic: the entry is never absent while a sound
    copy exists, and a damaged one is replaced."""
    target = tmp_path / "key"
    with atomic_dir(target, keep=lambda p: (p / "ok").is_file()) as tmp:
        (tmp / "ok").write_text("mine")
        target.mkdir()  # another process publishes the same key meanwhile
        (target / "ok").write_text("theirs")
        inode = target.stat().st_ino
    assert (target / "ok").read_text() == "theirs" and target.stat().st_ino == inode
    (target / "ok").unlink()  # damaged
    with atomic_dir(target, keep=lambda p: (p / "ok").is_file()) as tmp:
        (tmp / "ok").write_text("mine")
    assert (target / "ok").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]

    def vanishes(path: Path) -> bool:  # another writer sets the damaged folder aside first
        shutil.rmtree(path)
        return False

    (target / "ok").unlink()
    with atomic_dir(target, keep=vanishes) as tmp:
        (tmp / "ok").write_text("again")
    assert (target / "ok").read_text() == "again"


def test_clean_temp_keeps_a_fresh_folder_of_another_host(tmp_path: Path) -> None:
    """A shared cache: another machine's writer cannot be checked from here, only aged out."""
    cache = PreprocessCache(tmp_path)
    theirs = tmp_path / ".abc.x1.tmp"
    theirs.mkdir()
    (theirs / ".owner").write_text(f"not-{cache_mod.socket.gethostname()} 1\n")
    assert cache.clean_temp() == 0 and theirs.exists()
    assert cache.clean_temp(min_age_s=-1) == 1 and not theirs.exists()
