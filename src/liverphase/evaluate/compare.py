"""Compare finished cv runs on the same cases and folds: AUC with CIs and DeLong p against a reference.

The kinetics baseline's row is `KINETICS` ("kinetics regression (true mask)": it reads the lesion
through the true mask). DeLong p is Obuchowski's clustered test when a patient has several studies;
the table's footnote (`comparison_note`) names the test. A run with `cv --locate auto` predictions
gets a second row, "<run> (automatic location)", on the same studies: detection and study-grid Dice
of the mask it used, AUC with its DeLong p against the reference.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.data.splits import splits_from_json
from liverphase.errors import ConfigError, DatasetError
from liverphase.evaluate.cv import cached_items
from liverphase.evaluate.kinetics_baseline import KINETICS_LABEL, kinetics_baseline_cv
from liverphase.evaluate.located import OUT as LOCATED_OUT
from liverphase.evaluate.located import read_rows
from liverphase.evaluate.provenance import check_runs_data
from liverphase.evaluate.report import (
    COMPARISON_COLUMNS,
    comparison_note,
    comparison_table,
    markdown_table,
)
from liverphase.evaluate.segmentation import pooled_segmentation, read_segmentation_csv
from liverphase.evaluate.stats import mean_ci, paired_bootstrap_p
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.models.blocks import count_parameters
from liverphase.models.registry import create_model
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.profile import profile_one

KINETICS = KINETICS_LABEL  # the baseline's row label, in every table
# the row of a run's `cv --locate auto` predictions (RUN/located/), beside the run's own
AUTO_LABEL = "(automatic location)"
COLUMNS = [
    *COMPARISON_COLUMNS,
    ("params", "Params", ","),
    ("step_timed_s", "Step s (timed)", ".2f"),
    ("step_s", "Step s (logs)", ".2f"),
    ("train_s", "Train s (logs)", ".0f"),
]
TIMED_NOTE = (
    "Step s (timed): median seconds of one training step (forward, the trainer's loss, backward; "
    "no optimizer, no data loading) of each row's network at its run's input and batch size, "
    "timed one after another in this sitting ({threads} threads), so the rows compare networks. "
)
LOGS_NOTE = (
    "Step s (logs): the run's own epochs (data loading and optimizer included), from the day it "
    "trained. Train s (logs): its training passes summed over folds and epochs, every sitting of "
    "a resumed run included (validation, preprocessing and prediction not)."
)
SEGMENTATION_COLUMNS = [
    ("dice", "Dice (95% CI)", "ci"),
    ("dice_p", "Dice p", "p"),
    ("hd95", "HD95 mm (95% CI)", "ci"),
    ("surface_dice", "Surface Dice (95% CI)", "ci"),
]


STUDY_GRID_COLUMNS = [
    ("study_dice", "Dice, study grid (95% CI)", "ci"),
    ("study_dice_p", "Dice p, study grid", "p"),
    ("study_hd95", "HD95 mm, study grid (95% CI)", "ci"),
]


def table_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """COLUMNS, with the segmentation columns inserted when any row has a Dice (and the study-grid
    ones when any row has a study-grid Dice); the timed step only when some row was timed."""
    seg = [*SEGMENTATION_COLUMNS] if any(r.get("dice") is not None for r in rows) else []
    if any(r.get("detection") is not None for r in rows):
        seg.insert(0, ("detection", "Detection (95% CI)", "ci"))
    if any(r.get("study_dice") is not None for r in rows):
        seg += STUDY_GRID_COLUMNS
    timed = any(r.get("step_timed_s") is not None for r in rows)
    rest = [c for c in COLUMNS[len(COMPARISON_COLUMNS) :] if timed or c[0] != "step_timed_s"]
    return [*COMPARISON_COLUMNS, *seg, *rest]


def step_note(rows: Sequence[dict[str, Any]]) -> str:
    """What the table's step-time columns are."""
    timed = any(r.get("step_timed_s") is not None for r in rows)
    return (TIMED_NOTE.format(threads=torch.get_num_threads()) if timed else "") + LOGS_NOTE


def check_cv_run(run: Path) -> None:
    """A finished cv RUN (splits.json and predictions.csv), else one DatasetError saying what it is."""
    run = Path(run)
    if not run.is_dir():
        raise DatasetError("run folder not found", run)
    if not (run / "splits.json").is_file() and (run / "bundle" / "bundle.json").is_file():
        raise DatasetError("is a `train` run (one bundle, no folds); compare takes `cv` runs", run)
    missing = [n for n in ("splits.json", "predictions.csv") if not (run / n).is_file()]
    if missing:
        raise DatasetError(f"no {' or '.join(missing)}: not a finished cv run", run)


def oof_probs(run: Path) -> tuple[list[str], np.ndarray]:
    """Case ids and out-of-fold probabilities of a cv RUN (predictions.csv)."""
    path = Path(run) / "predictions.csv"
    if not path.is_file():
        raise DatasetError("no predictions.csv: not a finished cv run", run)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c.startswith("prob_")]
    return [r["case_id"] for r in rows], np.array([[float(r[c]) for c in cols] for r in rows])


def aligned_predictions(run: Path, case_ids: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Labels (class index), patient ids and probabilities of a run, in `case_ids` order."""
    with open(run / "predictions.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    missing = [c for c in case_ids if c not in rows]
    if missing:
        raise DatasetError(f"no predictions for {missing[:3]}", run / "predictions.csv")
    cols = [c for c in next(iter(rows.values())) if c.startswith("prob_")]
    names = [c[len("prob_") :] for c in cols]
    labels = np.array([names.index(rows[c]["label"]) for c in case_ids])
    probs = np.array([[float(rows[c][k]) for k in cols] for c in case_ids])
    return labels, [rows[c]["patient_id"] for c in case_ids], probs


def _log_rows(run: Path) -> list[dict[str, str]]:
    """Every epoch row of the folds' log.csv files (epochs of every sitting of a resumed run)."""
    rows: list[dict[str, str]] = []
    for log in sorted(Path(run).glob("fold_*/log.csv")):
        with open(log, newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


def log_seconds(run: Path) -> tuple[float | None, float | None]:
    """From the folds' log.csv epochs (every sitting of a resumed run): the median seconds per
    training step (samples/s and batch size), and the training passes' seconds summed over folds
    and epochs (validation, preprocessing and prediction not included)."""
    rows = _log_rows(run)
    rates = [float(r.get("samples_per_s") or "nan") for r in rows]
    per_sample = [1.0 / v for v in rates if np.isfinite(v) and v > 0]
    batch = run_info(run).get("training", {}).get("batch_size", 1)
    step = float(np.median(per_sample) * batch) if per_sample else None
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds")]
    return step, (float(sum(seconds)) if seconds else None)


def step_arguments(run: Path, ds: NnUNetDataset) -> dict[str, Any] | None:
    """`profile_one`'s arguments for a RUN's network (rebuilt from its run.json) at the run's
    input and batch size; None for a folder without run.json."""
    info = run_info(run)
    if not info or "preprocessing" not in info:  # no run.json, or a baseline (no network)
        return None
    pre = info["preprocessing"]
    options = dict(info.get("model_options", {}))
    channels = options.pop("in_channels", None) or pre["channels"]
    phases = list(pre.get("phases") or ds.phases)
    return {
        "name": info["model"],
        "shape": [len(phases), channels, *pre["size"]],
        "batch": info.get("training", {}).get("batch_size", 2),
        "options": options,
        "phases": phases,
        "num_classes": len(ds.class_names),
    }


def timed_step_seconds(
    run: Path, ds: NnUNetDataset, timings: dict[str, float] | None = None, repeats: int = 3
) -> float | None:
    """Median seconds of one training step of a RUN's network, timed now in this process;
    `timings` keeps them by network and input, so the same network is timed once per sitting."""
    args = step_arguments(run, ds)
    if args is None:
        return None
    timings = {} if timings is None else timings
    key = json.dumps(args, sort_keys=True)
    if key not in timings:
        row = profile_one(**{**args, "shape": tuple(args["shape"])}, repeats=repeats)
        timings[key] = row["train_s"]
    return timings[key]


def run_info(run: Path) -> dict[str, Any]:
    """The run.json of a cv RUN (model, options, training and preprocessing configs)."""
    path = Path(run) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# Preprocessing settings a study varies between runs of one model; a run whose value differs from
# the first run's shows it in its label (margins follow the model family, so they do not).
LABEL_SETTINGS = ("phases", "register", "intensity_reference", "channels", "size")


def run_label(run: Path, settings: dict[str, Any] | None = None) -> str:
    """A run's model with the options it was given, e.g. `std_net (temporal=concat)`, then the
    preprocessing `settings` to show (`std_net (phases=ART+PV)`)."""
    info = run_info(run)
    # in_channels follows the preprocessing's windows: every run records it, it tells runs apart less
    options = {k: v for k, v in info.get("model_options", {}).items() if k != "in_channels"}
    options.update(settings or {})
    given = ", ".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()
    )
    model = info.get("model", run.name)
    return f"{model} ({given})" if given else model


def run_settings(run: Path) -> dict[str, Any]:
    """A run's LABEL_SETTINGS as text-ready values (phases joined by +, "all" when not chosen; the
    crop grid as 32x48x48); settings its run.json predates read as their defaults."""
    recorded = run_info(run).get("preprocessing", {})
    defaults = PreprocessConfig()
    out = {k: recorded.get(k, getattr(defaults, k)) for k in LABEL_SETTINGS}
    out["phases"] = "+".join(out["phases"] or ["all"])
    out["size"] = "x".join(str(n) for n in out["size"])
    return out


def label_runs(runs: Sequence[Path]) -> dict[str, Path]:
    """Runs keyed by their model and given options; a run whose LABEL_SETTINGS differ from the first
    run's names them; the folder name is added when two labels still clash."""
    if not runs:
        raise ConfigError("give at least one run", "RUNS")
    first = run_settings(runs[0])
    labels: dict[str, Path] = {}
    for run in runs:
        own = run_settings(run)
        label = run_label(run, {k: v for k, v in own.items() if v != first[k]})
        labels[label if label not in labels else f"{label} [{run.name}]"] = run
    return labels


def run_parameters(run: Path, ds: NnUNetDataset) -> int | None:
    """Trainable parameters of the model a RUN trained (rebuilt from its run.json)."""
    args = step_arguments(run, ds)
    if args is None:
        return None
    net = create_model(
        args["name"],
        args["num_classes"],
        args["phases"],
        in_channels=args["shape"][1],
        **args["options"],
    )
    return count_parameters(net)


def default_cache(run: Path) -> Path:
    """The cache a cv RUN used (run.json `cache`, when it still exists), else RUN/cache."""
    recorded = run_info(run).get("cache")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return Path(run) / "cache"


def run_items(run: Path, ds: NnUNetDataset, cache_root: Path) -> dict[str, dict[str, Any]]:
    """Cached items of a RUN's preprocessing (a no-op when the cache holds them)."""
    pre = PreprocessConfig.from_dict(run_info(run)["preprocessing"])
    return cached_items(ds, cache_root, pre, workers=1, progress=False)


def compare_runs(
    runs: dict[str, Path],
    dataset: str | Path,
    reference: str,
    kinetics: bool = True,
    cache_root: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    time_steps: bool = True,
    timings: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Rows (metrics with CIs, DeLong p vs `reference`, params, step times) for runs on the same
    folds. With `time_steps` each run's network is timed here (TIMED_NOTE); `timings` keeps those
    seconds across calls (timed_step_seconds)."""
    timings = {} if timings is None else timings
    for run in runs.values():  # every run, before any work: not only the reference
        check_cv_run(run)
    ds = open_dataset(dataset)
    ref_run = runs[reference]
    # runs trained on other data (the same ids, e.g. another synthetic seed) are refused first
    check_runs_data(runs, ds, cache_root or default_cache(ref_run))
    case_ids, _ = oof_probs(ref_run)
    ref_splits = json.loads((ref_run / "splits.json").read_text())
    models: dict[str, np.ndarray] = {}
    extra: dict[str, dict[str, Any]] = {}
    for label, run in runs.items():
        if json.loads((run / "splits.json").read_text()) != ref_splits:
            raise DatasetError(
                f"run {label!r} used other folds than {reference!r}", run / "splits.json"
            )
        ids, probs = oof_probs(run)
        order = {c: i for i, c in enumerate(ids)}
        missing = [c for c in case_ids if c not in order]
        if missing:
            raise DatasetError(f"run {label!r} lacks predictions for {missing[:3]}", run)
        models[label] = probs[[order[c] for c in case_ids]]
        extra[label] = {
            "params": run_parameters(run, ds),
            **dict(zip(("step_s", "train_s"), log_seconds(run), strict=True)),
            "step_timed_s": timed_step_seconds(run, ds, timings) if time_steps else None,
            "run": str(run),
        }
    for label, run in list(runs.items()):  # a run's `cv --locate auto` rows, beside it
        blind = located_row(run, case_ids, ds.class_names, n_boot, seed)
        if blind is not None:
            models[f"{label} {AUTO_LABEL}"], extra[f"{label} {AUTO_LABEL}"] = blind
    items = run_items(ref_run, ds, cache_root or default_cache(ref_run))
    if kinetics:
        probs = kinetics_baseline_cv(items, splits_from_json(ref_splits), ds.class_names, seed)
        models[KINETICS] = np.stack([probs[c] for c in case_ids])
        extra[KINETICS] = dict.fromkeys(("params", "step_s", "train_s", "step_timed_s", "run"))
    y = np.array([ds.class_names.index(items[c]["label"]) for c in case_ids])
    groups = [items[c]["patient_id"] for c in case_ids]
    rows = comparison_table(models, y, groups, reference, ds.class_names, n_boot=n_boot, seed=seed)
    seg = segmentation_comparison(runs, reference, case_ids, groups, n_boot, seed)
    study = segmentation_comparison(
        runs, reference, case_ids, groups, n_boot, seed, "segmentation_study.csv"
    )
    for row in rows:
        row.update(extra[row["model"]])
        row.update(seg.get(row["model"], {}))
        row.update({f"study_{k}": v for k, v in study.get(row["model"], {}).items()})
    return rows


def located_row(
    run: Path, case_ids: Sequence[str], class_names: Sequence[str], n_boot: int, seed: int
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(probabilities in `case_ids` order, detection and study-grid Dice with CIs) of a run's
    `cv --locate auto` predictions, or None when it has none."""
    path = Path(run) / LOCATED_OUT / "predictions.csv"
    if not path.is_file():
        return None
    rows = {r["case_id"]: r for r in read_rows(path)}
    missing = [c for c in case_ids if c not in rows]
    if missing:
        raise DatasetError(f"automatic-location predictions lack {missing[:3]}", path)
    ordered = [rows[c] for c in case_ids]
    probs = np.asarray([[r["probabilities"][n] for n in class_names] for r in ordered], float)
    groups = np.asarray([r["patient_id"] for r in ordered])
    info: dict[str, Any] = dict.fromkeys(("params", "step_s", "train_s", "step_timed_s"))
    info["run"] = str(path.parent)
    for key, column in (("detection", "detected"), ("study_dice", "dice")):
        value, ci = mean_ci(np.asarray([r[column] for r in ordered], float), groups, n_boot, seed)
        info[key], info[f"{key}_ci"] = float(value), list(ci)
    return probs, info


def segmentation_comparison(
    runs: dict[str, Path],
    reference: str,
    case_ids: Sequence[str],
    groups: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    filename: str = "segmentation.csv",
) -> dict[str, dict[str, Any]]:
    """Label → mean Dice, HD95, surface Dice with patient-bootstrap CIs, and a paired p of the Dice
    difference against `reference` (patient bootstrap), for the runs that wrote `filename`
    (segmentation.csv: crop grid; segmentation_study.csv: each study's own grid)."""
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for label, run in runs.items():
        path = Path(run) / filename
        if not path.is_file():
            continue
        tables[label] = read_segmentation_csv(path)
        missing = [c for c in case_ids if c not in tables[label]]
        if missing:
            raise DatasetError(f"run {label!r} has no segmentation metrics for {missing[:3]}", path)
    g = np.asarray(groups)
    out: dict[str, dict[str, Any]] = {}
    for label, table in tables.items():
        # the same pooling as the run's metrics.json, so the reference row repeats its figures
        rows = [{"patient_id": p, **table[c]} for c, p in zip(case_ids, groups, strict=True)]
        row = pooled_segmentation(rows, n_boot, seed, keys=("dice", "hd95", "surface_dice"))
        if label != reference and reference in tables:
            diff = np.array([table[c]["dice"] - tables[reference][c]["dice"] for c in case_ids])
            row["dice_p"] = paired_bootstrap_p(diff, g, n_boot, seed)
        out[label] = row
    return out


def write_comparison(rows: Sequence[dict[str, Any]], out: Path, title: str, note: str = "") -> Path:
    """comparison.md (table, then the footnote naming the AUC test) and comparison.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", list(rows))
    text = f"# {title}\n\n{note}\n\n" + markdown_table(list(rows), table_columns(rows))
    text += f"\n{comparison_note(rows)}\n"
    atomic_write_text(out / "comparison.md", text)
    return out / "comparison.md"
