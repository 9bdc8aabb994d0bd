"""Folds as independent jobs: what a fold of `cv` leaves in RUN/fold_K, and how folds are pooled.

Every fold, whether trained by one `cv` call or by `cv --fold K` on another machine, ends with
RUN/fold_K/oof.npz (its test cases' class probabilities, lesion maps and slice scores) and, written
last, RUN/fold_K/fold.json: the settings it was trained with, its test cases and `inputs`, a digest
of every case's content-addressed cache key (so the dataset's files, the preprocessing and the
liverphase version), label and patient. A fold is reused, by `cv` and `cv --merge`, only when all
of that matches; `--merge` refuses anything else, naming the fold and the first setting that
differs. The pooled report (`write_oof_report`) is the same code for one call and for a merge.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_path, atomic_write_json
from liverphase.data.splits import Fold, splits_to_json
from liverphase.errors import ConfigError, DatasetError, SplitError
from liverphase.evaluate.predictions import Predictions
from liverphase.evaluate.report import write_cv_report
from liverphase.evaluate.segmentation import evaluate_segmentation
from liverphase.evaluate.slices import staging_results
from liverphase.io.nifti import NnUNetDataset
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.config import TrainConfig
from liverphase.train.distributed import is_main
from liverphase.train.state import RESUME_FREE

FOLD_JSON, FOLD_OOF = "fold.json", "oof.npz"
# recorded for the user, never compared: where the cache was and how long the fold took
_UNCOMPARED = ("cache", "seconds", "dataset")


@dataclass
class OutOfFold:
    """Per-case out-of-fold results: class probabilities, lesion probability maps, fold index."""

    probs: dict[str, np.ndarray]
    lesion: dict[str, np.ndarray]
    fold: dict[str, int]
    # per-slice class probabilities (D, K) of a slice-wise model
    slices: dict[str, np.ndarray] = field(default_factory=dict)


def write_oof_report(
    out: Path,
    ds: NnUNetDataset,
    items: dict[str, dict[str, Any]],
    oof: OutOfFold,
    class_names: list[str],
    *,
    title: str,
    model: str,
    seed: int,
    n_boot: int,
    evaluation: str | None = None,
    sections: Sequence[str] = (),
) -> tuple[dict[str, Any], Predictions]:
    """Predictions in dataset order, per-case segmentation metrics and the report of a RUN's
    out-of-fold results (cv, and a cv RUN re-predicted); returns the metrics and predictions.
    `evaluation` replaces the report's k-fold design sentence; `sections` are appended."""
    order = [c.case_id for c in ds.cases if c.case_id in oof.probs]
    index = {c: i for i, c in enumerate(class_names)}
    preds = Predictions(
        case_ids=order,
        patient_ids=[items[c]["patient_id"] for c in order],
        folds=[oof.fold[c] for c in order],
        labels=np.array([index[items[c]["label"]] for c in order]),
        probs=np.stack([oof.probs[c] for c in order]),
        class_names=list(class_names),
    )
    staging, staging_sections = staging_results(
        out, ds.ordinal, items, oof.slices, oof.fold, preds, n_boot, seed
    )
    seg_ids = [c for c in order if oof.lesion.get(c) is not None]
    extra, seg_sections = evaluate_segmentation(
        out,
        ds,
        [items[c] for c in seg_ids],
        [oof.lesion[c] for c in seg_ids],
        [oof.fold[c] for c in seg_ids],
        n_boot,
    )
    extra = {**(extra or {}), **staging}
    metrics = write_cv_report(
        out,
        preds,
        title=title,
        dataset=str(ds.root),
        model=model,
        seed=seed,
        n_boot=n_boot,
        extra_pooled=extra,
        sections=[*staging_sections, *seg_sections, *sections],
        evaluation=evaluation,
    )
    return metrics, preds


def inputs_digest(items: dict[str, dict[str, Any]]) -> str:
    """SHA-256 over each case's cache key (the entry folder holding its image), label and patient:
    equal digests mean the same cases, file contents, preprocessing and cases.csv rows."""
    rows = {
        c: [Path(item["image"]).parent.name, item["label"], str(item["patient_id"])]
        for c, item in items.items()
    }
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def fold_settings(
    run: dict[str, Any],
    phases: Sequence[str],
    class_names: Sequence[str],
    items: dict[str, dict[str, Any]],
    cache_dir: Path,
    dataset: Path,
) -> dict[str, Any]:
    """What every fold of one cross-validation shares: `run_record`'s settings, the phases and
    classes, the inputs' digest (compared) and the cache and dataset folders (recorded only)."""
    record = {
        **run,
        "phases": list(phases),
        "class_names": list(class_names),
        "inputs": inputs_digest(items),
        "cache": str(cache_dir.resolve()),
        "dataset": str(dataset),
    }
    return json.loads(json.dumps(record))


def check_fold_index(fold: int | None, folds: int) -> None:
    """A ConfigError unless `fold` (if given) is one of the `folds` folds."""
    if fold is not None and fold not in range(folds):
        raise ConfigError(
            f"fold {fold} does not exist: --folds {folds} has 0-{folds - 1}", "--fold"
        )


def settle_splits(path: Path, folds: Sequence[Fold], strict: bool) -> None:
    """Write splits.json once (rank 0's job under torchrun: call it through `on_main`). A RUN
    already holding other folds is refused when `strict` (a fold job or a merge: its folds must be
    the RUN's), and rewritten otherwise (a whole `cv`, as ever)."""
    want = splits_to_json(folds)
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SplitError(f"cannot read splits: {exc}", path) from None
        if have == want:
            return
        if strict:
            raise SplitError(
                f"holds other folds than the {len(want)} this call makes from the dataset, "
                "--seed and --folds: give the ones the RUN was started with, or another --out",
                path,
            )
    atomic_write_json(path, want)


def _difference(saved: Any, wanted: Any, prefix: str = "") -> str | None:
    """The dotted key of the first compared setting that differs (None: the same)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted)):
            name = f"{prefix}{key}"
            if name in _UNCOMPARED or name in (f"training.{k}" for k in RESUME_FREE):
                continue
            diff = _difference(saved.get(key), wanted.get(key), f"{name}.")
            if diff is not None:
                return diff
        return None
    return None if saved == wanted else prefix.rstrip(".")


def _value(record: dict[str, Any] | None, dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / FOLD_JSON).read_text())
    except (OSError, ValueError):  # absent, or not a record (written atomically, never half)
        return None


def _mismatch(folder: Path, key: str, saved: Any, wanted: Any, reference: str) -> ConfigError:
    if key == "inputs":
        what = "other data (inputs: the cases' files, labels, patients or preprocessing differ)"
    elif key == "test":
        what = "other test cases (test)"
    else:
        what = f"other settings ({key}: {json.dumps(saved)} vs {json.dumps(wanted)})"
    return ConfigError(f"{folder.name} was trained on {what} than {reference}", folder / FOLD_JSON)


def save_fold(folder: Path, record: dict[str, Any], oof: OutOfFold, since: float) -> None:
    """RUN/fold_K/oof.npz with the fold's test cases' results, then fold.json (the fold is
    finished once that exists), with the seconds since `since` (a perf_counter time)."""
    test = record["test"]
    arrays: dict[str, np.ndarray] = {
        "case_ids": np.array(test, dtype=str),
        "probs": np.stack([oof.probs[c] for c in test]),
    }
    for name, maps in (("lesion", oof.lesion), ("slices", oof.slices)):
        arrays.update({f"{name}_{i}": maps[c] for i, c in enumerate(test) if c in maps})
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / FOLD_OOF) as tmp, open(tmp, "wb") as fh:
        # float32 as predicted: the pooled report resamples the lesion maps, so a rounded copy
        # would not reproduce one cv call's; deflate gains little on probabilities, so none
        np.savez(fh, **arrays)
    seconds = round(time.perf_counter() - since, 1)
    atomic_write_json(folder / FOLD_JSON, {**record, "seconds": seconds})


def load_fold(folder: Path, k: int, oof: OutOfFold) -> None:
    """A finished fold's results into `oof`, in the order a `cv` call adds them."""
    try:
        with np.load(folder / FOLD_OOF, allow_pickle=False) as data:
            for i, c in enumerate(str(c) for c in data["case_ids"]):
                oof.fold[c], oof.probs[c] = k, data["probs"][i]
                for name, maps in (("lesion", oof.lesion), ("slices", oof.slices)):
                    if f"{name}_{i}" in data.files:
                        maps[c] = data[f"{name}_{i}"]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"unreadable fold predictions ({exc}); rerun the fold", folder) from None


def reuse_fold(folder: Path, record: dict[str, Any], oof: OutOfFold, merge: bool) -> bool:
    """True (its results added to `oof`) when RUN/fold_K finished with exactly `record`; else False,
    the fold's stale record gone, for the caller to train it, or (`merge`, which never trains) an
    error naming what differs."""
    saved = _read_record(folder)
    key = _difference(saved, record) if saved is not None else FOLD_JSON
    if key is None and (folder / FOLD_OOF).is_file():
        load_fold(folder, record["fold"], oof)
        return True
    if merge and (key is None or saved is None):
        raise DatasetError(f"not finished (no {FOLD_JSON} and {FOLD_OOF})", folder)
    if merge:
        raise _mismatch(folder, key, _value(saved, key), _value(record, key), "this merge")
    if is_main():  # a record of other settings must not outlive the retraining that replaces it
        (folder / FOLD_JSON).unlink(missing_ok=True)
    return False


def merged_settings(
    out: Path, cache_root: str | Path | None
) -> tuple[dict[str, Any], int, int, str | Path | None]:
    """For `cv --merge`: the Experiment fields, fold count, seed and cache every fold of the RUN
    shares. A DatasetError names the unfinished folds, a ConfigError the first fold trained
    otherwise than fold 0 and the setting that differs."""
    try:
        n_folds = len(json.loads((out / "splits.json").read_text()))
    except (OSError, ValueError):
        raise DatasetError("no readable splits.json: not a cv RUN (see `cv --fold`)", out) from None
    folders = [out / f"fold_{k}" for k in range(n_folds)]
    records = [_read_record(d) for d in folders]
    missing = [
        d.name
        for d, r in zip(folders, records, strict=True)
        if r is None or not (d / FOLD_OOF).is_file()
    ]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {n_folds} folds not finished ({', '.join(missing)}): run "
            "`liverphase cv DATASET --out RUN --fold K [options]` for each, then merge",
            out,
        )
    shared = [{k: v for k, v in r.items() if k not in ("fold", "test")} for r in records]
    for folder, other in zip(folders[1:], shared[1:], strict=True):
        key = _difference(other, shared[0])
        if key is not None:
            raise _mismatch(folder, key, _value(other, key), _value(shared[0], key), "fold_0")
    ref = shared[0]
    if cache_root is None and Path(ref["cache"]).is_dir():  # the folds' cache, if this host sees it
        cache_root = ref["cache"]
    fields = {
        "model": ref["model"],
        "train": TrainConfig.from_dict(ref["training"]),
        "preprocess": PreprocessConfig.from_dict(ref["preprocessing"], source="fold.json"),
        "phases": list(ref["phases"]),
        "class_names": list(ref["class_names"]),
        "model_options": dict(ref["model_options"]),
    }
    return fields, int(ref["folds"]), int(ref["seed"]), cache_root
