"""`liverphase ablate --plan`: each row still to train as one `liverphase cv` command, so rows run
as jobs on other machines (a SLURM array, any scheduler) and the next `ablate` picks them up.

A command writes exactly where `ablate` looks for the row (RUN/runs/NN_model, marked with its
variant.json now, so the next plan and `ablate` name the same folder), into ablate's cache, with
the row's settings: model, profile, folds, seed, phases and channels as flags, everything else
(training, preprocessing, model options) in RUN/plan/NN_model.yaml given as --config, and
`--recipe default` so no model recipe adds settings ablate's rows do not have. A command may be
split further with `--fold K` per fold, then the same command without it pools them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from liverphase.atomic import atomic_write_text
from liverphase.evaluate.ablate import run_ablate
from liverphase.evaluate.ablate_runs import RowsPlanned

# a row's keywords that are `cv` flags; the rest go to its YAML's sections
_FLAGS = ("model", "profile", "phases", "in_channels")


def row_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The YAML (sections train, preprocess, model_options) holding a row's settings that are not
    flags; JSON-normalised (tuples as lists), empty sections left out."""
    rest = {k: v for k, v in kwargs.items() if k not in _FLAGS}
    sections = {
        "preprocess": rest.pop("preprocess_overrides", None) or {},
        "model_options": rest.pop("model_options", None) or {},
        "train": rest,
    }
    return json.loads(json.dumps({k: v for k, v in sections.items() if v}))


def row_command(
    dataset: Path,
    run_dir: Path,
    kwargs: dict[str, Any],
    config: Path | None,
    folds: int,
    seed: int,
    cache: Path,
    workers: int,
) -> str:
    """The `liverphase cv` command training one row into `run_dir` (absolute paths)."""
    args = ["liverphase", "cv", str(dataset), "--out", str(run_dir), "--model", kwargs["model"]]
    args += ["--recipe", "default", "--profile", str(kwargs["profile"])]
    args += ["--folds", str(folds), "--seed", str(seed)]
    if kwargs.get("phases"):
        args += ["--phases", ",".join(kwargs["phases"])]
    if kwargs.get("in_channels") is not None:
        args += ["--in-channels", str(kwargs["in_channels"])]
    if config is not None:
        args += ["--config", str(config)]
    # --resume: a job killed and submitted again goes on from its folds' last checkpoints (a
    # fresh folder has none, and finished folds are reused either way)
    args += ["--cache", str(cache), "--workers", str(workers), "--resume"]
    return shlex.join(args)


def plan_ablation(
    dataset: str | Path, out: str | Path, folds: int, seed: int, workers: int, **ablate: Any
) -> list[str]:
    """One command per row of `run_ablate(dataset, out, folds=..., seed=..., **ablate)` still to
    train (finished rows are logged, not planned); writes RUN/plan/<row>.yaml per row."""
    dataset, out = Path(dataset).resolve(), Path(out).resolve()
    try:
        run_ablate(dataset, out, folds=folds, seed=seed, workers=workers, plan_only=True, **ablate)
    except RowsPlanned as planned:
        rows = planned.rows
    else:  # every suite but ssl trains through train_variants, which raises in plan mode
        raise AssertionError("ablate ran instead of planning")
    commands = []
    for run_dir, kwargs in rows:
        config = row_config(kwargs)
        path = out / "plan" / f"{run_dir.name}.yaml" if config else None
        if path is not None:
            atomic_write_text(path, yaml.safe_dump(config, sort_keys=True))
        commands.append(
            row_command(dataset, run_dir, kwargs, path, folds, seed, out / "cache", workers)
        )
    return commands
