"""Where `ablate` keeps each row's run: reuse a finished run with the same settings, continue an
interrupted one, and give any other variant a fresh `NN_model` folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json
from liverphase.errors import ConfigError
from liverphase.evaluate.cv import make_experiment, run_cv, run_record
from liverphase.evaluate.provenance import dataset_content
from liverphase.io.nifti import NnUNetDataset
from liverphase.models.registry import model_defaults
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.config import TrainConfig

# rows that are not networks: fitted by their own code on the runs' folds
BASELINES = ("kinetics", "radiomics")
TRAINING_KEYS = ("label_fraction", "init", "freeze_epochs")


def variant_key(variant: dict[str, Any]) -> str:
    """A table row's identity: the same key is the same trained run, whichever table shows it."""
    key = {
        k: variant.get(k)
        for k in ("model", "model_options", "phases", "in_channels", "missing_phase")
    }
    # training keys only a few suites vary (the ssl suite's label share and encoder bundle) join
    # the key when set, so the other suites' keys, and the runs they name, stay as they were
    key.update({k: variant[k] for k in TRAINING_KEYS if k in variant})
    return json.dumps(key, sort_keys=True)


def _with_model_defaults(model: Any, options: Any) -> Any:
    """A model's options with the defaults it was built with filled in: `cv --model miff_spm` and
    ablate's miff_spm with miff, spm named as their defaults are the same run."""
    if not isinstance(options, dict):
        return options
    try:
        defaults = model_defaults(str(model))
    except KeyError:  # a model this version no longer has: compared as recorded
        return options
    return json.loads(json.dumps({**defaults, **options}, default=str))


def _with_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """A run record with its training and preprocessing read back through their configs and its
    model options through the model's defaults, so a run recorded before a setting existed, or with
    a default left unnamed, holds that setting's default (the behaviour it ran with)."""
    out = dict(record)
    for key, config in (("training", TrainConfig), ("preprocessing", PreprocessConfig)):
        if isinstance(out.get(key), dict):
            out[key] = json.loads(json.dumps(config.from_dict(out[key]).to_dict()))
    out["model_options"] = _with_model_defaults(out.get("model"), out.get("model_options"))
    if isinstance(out.get("training"), dict):
        training = out["training"]
        training["model_options"] = _with_model_defaults(
            training.get("model"), training.get("model_options")
        )
    return out


class RowsPlanned(Exception):
    """`train_variants(plan_only=True)`: the rows still to train, (run folder, cv keyword
    arguments) each, raised instead of training them so no suite goes on to its tables."""

    def __init__(self, rows: list[tuple[Path, dict[str, Any]]]) -> None:
        super().__init__(f"{len(rows)} row(s) to train")
        self.rows = rows


# Written into a run folder before its cross-validation starts: an unfinished folder carrying it
# is that variant's interrupted run, which the next `ablate` continues instead of restarting.
VARIANT_JSON = "variant.json"


def _normalised(info: dict[str, Any]) -> dict[str, Any] | None:
    """`_with_defaults` of a recorded run; None for a setting this version no longer knows (so
    not the same run as any row's)."""
    try:
        return _with_defaults(info)
    except ConfigError:
        return None


def _matches(info: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return info is not None and all(info.get(k) == v for k, v in wanted.items())


def _finished_record(run_dir: Path) -> dict[str, Any] | None:
    """The normalised run.json of a finished run folder (None: unfinished, or not recorded)."""
    if not ((run_dir / "run.json").is_file() and (run_dir / "predictions.csv").is_file()):
        return None
    return _normalised(json.loads((run_dir / "run.json").read_text()))


def _started(run_dir: Path) -> dict[str, Any] | None:
    """The settings an unfinished run folder was started with (None: finished, or not ablate's)."""
    if (run_dir / "predictions.csv").is_file() or not (run_dir / VARIANT_JSON).is_file():
        return None
    try:
        return json.loads((run_dir / VARIANT_JSON).read_text())
    except ValueError:  # not ablate's record (written atomically, so never half a file)
        return None


def plan_run_dirs(runs_root: Path, records: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """Variant key → its run folder. A finished run made with exactly the same settings is reused,
    whatever its number, and an interrupted one is continued; any other variant gets the next
    `NN_model` name no finished or started run holds, so a RUN folder grown table by table (or
    session by session) never passes one variant's results off as another's."""
    return {key: run_dir for key, (run_dir, _) in plan_runs(runs_root, records).items()}


def plan_runs(runs_root: Path, records: dict[str, dict[str, Any]]) -> dict[str, tuple[Path, str]]:
    """`plan_run_dirs` with each folder's state: finished (reuse), started (continue) or new."""
    folders = sorted(runs_root.glob("*"))
    finished = {d: _finished_record(d) for d in folders if (d / "predictions.csv").is_file()}
    started = {d: _normalised(info) for d in folders if (info := _started(d)) is not None}
    plan: dict[str, tuple[Path, str]] = {}
    for key, record in records.items():
        wanted = _with_defaults(record)
        for state, candidates in (("finished", finished), ("started", started)):
            match = next((d for d, i in candidates.items() if _matches(i, wanted)), None)
            if match is not None:
                plan[key] = (match, state)
                break
        else:
            index = len(plan)
            taken = {d for d, _ in plan.values()}
            while (
                (name := runs_root / f"{index:02d}_{record['model']}") in finished
                or name in started
                or name in taken
            ):
                index += 1
            plan[key] = (name, "new")
    return plan


def train_variants(
    ds: NnUNetDataset,
    dataset: str | Path,
    out: Path,
    variants: list[dict[str, Any]],
    folds: int,
    profile: str,
    seed: int,
    epochs: int | None,
    shared: dict[str, Any],
    workers: int,
    n_boot: int,
    log: Callable[[str], None],
    plan_only: bool = False,
) -> dict[str, Path]:
    """Cross-validate every trained variant once into RUN/runs (variant key → run folder): a
    finished run with the same settings is reused, an interrupted one continued. `plan_only`: raise
    RowsPlanned with the rows still to train instead of training them (`ablate --plan`)."""
    todo: list[tuple[Path, dict[str, Any]]] = []
    kwargs_of: dict[str, dict[str, Any]] = {}
    records: dict[str, dict[str, Any]] = {}
    # part of every record: a finished row trained on other data (another seed's CT0000...) or
    # before runs recorded their data is not reused
    content = dataset_content(ds, out / "cache")
    fingerprint = content.fingerprint
    # every row's experiment is built (and validated) before the first run starts
    for variant in variants:
        trained = variant["model"] not in BASELINES and "missing_phase" not in variant
        if trained and variant_key(variant) not in records:
            kwargs = {"profile": profile, **shared, **variant}
            if epochs is not None:
                kwargs["epochs"] = epochs
            kwargs_of[variant_key(variant)] = kwargs
            records[variant_key(variant)] = {
                **run_record(make_experiment(ds, seed=seed, **kwargs), folds, seed),
                "data_fingerprint": fingerprint,
            }
    plan = plan_runs(out / "runs", records)
    for key, (run_dir, state) in plan.items():
        if state == "finished":
            log(f"cv {run_dir.name}: reused, same settings ({kwargs_of[key]})")
            continue
        resumed = state == "started"
        log(f"cv {run_dir.name}: {'continued, ' if resumed else ''}{kwargs_of[key]}")
        atomic_write_json(run_dir / VARIANT_JSON, records[key])
        content.keep_hashes(out / "cache")  # the runs' preprocessing then hashes no file again
        if plan_only:  # a job per row (ablate_plan); the marked folder keeps its name next time
            todo.append((run_dir, kwargs_of[key]))
            continue
        run_cv(
            dataset,
            run_dir,
            kwargs_of[key],
            folds=folds,
            seed=seed,
            cache_root=out / "cache",
            workers=workers,
            n_boot=n_boot,
            resume=resumed,  # an interrupted run goes on from its folds' last checkpoints
            progress=False,
        )
    if plan_only:
        raise RowsPlanned(todo)
    return {key: run_dir for key, (run_dir, _) in plan.items()}
