"""Train one model, or k patient-level folds of it, from an nnU-Net dataset into a RUN folder."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json
from liverphase.data.splits import (
    inner_validation_split,
    label_subset,
    patient_folds,
)
from liverphase.errors import ConfigError, DatasetError
from liverphase.evaluate import fold_jobs
from liverphase.evaluate.fold_jobs import OutOfFold, write_oof_report
from liverphase.evaluate.provenance import items_training_data, run_data
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.models.registry import create_model, model_defaults, model_info
from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.cache import PreprocessCache
from liverphase.preprocess.config import PreprocessConfig
from liverphase.ssl.bundle import check_encoder_bundle
from liverphase.train.config import PROFILE_INPUT, TrainConfig, profile_config
from liverphase.train.distributed import in_turn, is_main, join_group, on_main
from liverphase.train.progress import FoldProgress
from liverphase.train.trainer import Trainer


@dataclass
class Experiment:
    """Everything that defines one training recipe: model, options, training and preprocessing."""

    model: str
    train: TrainConfig
    preprocess: PreprocessConfig
    phases: list[str]
    class_names: list[str]
    model_options: dict[str, Any] = field(default_factory=dict)

    def model_factory(self):  # noqa: ANN201
        """A zero-argument callable building a fresh model of this experiment."""
        options = dict(self.model_options)

        def build():  # noqa: ANN202
            return create_model(
                self.model, num_classes=len(self.class_names), phases=self.phases, **options
            )

        return build


# Crop margin of segmenting models. The jittered box (1.2-1.6x the lesion) already gives context;
# the classifiers' 10 mm on top shrank a small lesion to ~2% of the crop, and std_net then
# over-segmented it (volume error vs lesion share of the crop: Spearman -0.85). With 3 mm, study-grid
# Dice 0.745 -> 0.819 on the 80-case cohort (benchmarks/results/cv_std80/margin3).
SEGMENTING_MARGIN_MM = 3.0
# A region head is one linear layer on 36 mean intensities: at the profiles' learning rate it barely
# moves in 12 epochs (benchmarks/results/miff_roi240, crop_signal: 0.781 AUC at 3e-4 vs 0.917 at
# 3e-2), so a classifier with region_kinetics trains that head 100x faster unless the config says
# otherwise (a segmenting model's region head reads its own mask: its rate stays the config's).
REGION_HEAD_LR_SCALE = 100.0
# Whole-organ input (dataset.json "roi": "organ", cirrhosis staging): the liver's box plus a thin
# margin, so the surface (nodularity) and its surroundings (ascites, the caudate's contour) stay in
PROFILE_INPUT_ORGAN: dict[str, tuple[int, int, int]] = {
    "paper": (48, 192, 192),
    "cpu": (24, 96, 96),
}
ORGAN_MARGIN_MM = 8.0


def make_experiment(
    ds: NnUNetDataset,
    model: str,
    profile: str = "cpu",
    phases: Sequence[str] | None = None,
    in_channels: int = 3,
    model_options: dict[str, Any] | None = None,
    preprocess_overrides: dict[str, Any] | None = None,
    **train_overrides: Any,
) -> Experiment:
    """Combine a profile, explicit overrides and the dataset's phases into one validated experiment."""
    try:
        info = model_info(model)
    except KeyError as exc:
        raise ConfigError(str(exc).strip("'\""), "--model") from None
    phases = list(phases or ds.phases)
    unknown = [p for p in phases if p not in ds.phases]
    if unknown:
        raise ConfigError(
            f"phases {unknown} are not in the dataset (it has {ds.phases})", "--phases"
        )
    options = {"in_channels": in_channels, **(model_options or {})}
    # an unknown option would otherwise be a TypeError from the constructor, after preprocessing
    takes = model_defaults(model)
    unknown_options = sorted(k for k in options if k not in takes)
    if unknown_options:
        raise ConfigError(
            f"model {model!r} has no option(s) {unknown_options}; it takes {sorted(takes)}",
            "--option / model_options",
        )
    train = profile_config(profile, model=model, model_options=options, **train_overrides)
    if model == "miff_spm" and "mtl_lambda" not in options:
        options["mtl_lambda"] = train.mtl_lambda
        train = train.replace(model_options=options)
    elif "mtl_lambda" in options and "mtl_lambda" not in train_overrides:
        # λ named once, as a model option (ablate's table 3): the loss takes the same value
        train = train.replace(mtl_lambda=float(options["mtl_lambda"]))
    organ = ds.roi == "organ"
    if info["segments"] and not organ and not any(ds.label_path(c.case_id) for c in ds.cases):
        raise DatasetError(
            f"model {model!r} segments the lesion and learns it from masks, but this dataset gives "
            "boxes only (no labelsTr/ mask): choose a classifier (see `liverphase models`)",
            ds.root / "labelsTr",
        )
    pre = {
        "size": (PROFILE_INPUT_ORGAN if organ else PROFILE_INPUT)[profile],
        "channels": in_channels if ds.modality == "ct" else None,
        "phases": tuple(phases),
        "roi_source": "mask_jitter" if info["segments"] and not organ else "mask",
        **({"margin_mm": SEGMENTING_MARGIN_MM} if info["segments"] and not organ else {}),
        **({"modality": "mri"} if ds.modality == "mri" else {}),
        **({"roi": "organ", "margin_mm": ORGAN_MARGIN_MM} if organ else {}),
        **({"missing_phases": "zero"} if ds.allow_missing_phases else {}),
        **(preprocess_overrides or {}),
    }
    if options.get("region_kinetics") and not info["segments"]:
        # a classifier's region reading goes through the ROI it is given (a segmenting model's
        # through the mask it predicts): the lesion mask becomes the input's last channel
        pre["roi_channel"] = True
        if "head_lr_scale" not in train_overrides:
            train = train.replace(head_lr_scale=REGION_HEAD_LR_SCALE)
    preprocess = PreprocessConfig.from_dict(pre, source="preprocessing")
    if preprocess.n_channels != options["in_channels"]:
        options["in_channels"] = preprocess.n_channels
        train = train.replace(model_options=options)
    exp = Experiment(model, train, preprocess, phases, list(ds.class_names), options)
    if train.init:  # a bundle that does not fit fails before any preprocessing
        check_encoder_bundle(train.init, exp.model_factory()())
    return exp


def experiment_cases(ds: NnUNetDataset, phases: Sequence[str]) -> list[str]:
    """The cases an experiment on `phases` uses: every case, except (in a dataset whose cases may
    lack phases) those that have none of them; unlabeled rows never train or score."""
    cases = [c.case_id for c in ds.cases if c.label]
    if not ds.allow_missing_phases:
        return cases
    return [c for c in cases if set(phases) & set(ds.present_phases(c))]


def cached_items(
    ds: NnUNetDataset,
    cache_root: Path,
    config: PreprocessConfig,
    workers: int,
    progress: bool,
    cases: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Preprocess every case (or `cases`; a no-op when cached) and return trainer items keyed by
    case id; `present` marks, per input phase, whether the study has it (missing phases allowed)."""
    stats = preprocess_dataset(
        ds.root, cache_root, config, workers=workers, progress=progress, cases=cases
    )
    cache = PreprocessCache(cache_root)
    phases = list(config.phases or ds.phases)
    items = {}
    for rec in ds.cases:
        if rec.case_id not in stats["keys"]:
            continue
        entry = cache.entry_dir(stats["keys"][rec.case_id])
        mask = entry / "mask.npy"
        items[rec.case_id] = {
            "case_id": rec.case_id,
            "patient_id": rec.patient_id,
            "label": rec.label,
            "image": str(entry / "image.npy"),
            "mask": str(mask) if mask.is_file() else None,
        }
        if ds.allow_missing_phases:
            have = set(ds.present_phases(rec.case_id))
            items[rec.case_id]["present"] = [p in have for p in phases]
    return items


def _bundle_meta(exp: Experiment, ds: NnUNetDataset, split: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": exp.model,
        "model_options": exp.model_options,
        "class_names": exp.class_names,
        "phases": exp.phases,
        "reference_phase": ds.reference_phase,
        "preprocessing": exp.preprocess.to_dict(),
        "training": exp.train.to_dict(),
        "split": split,
        "seed": exp.train.seed,
        "dataset": str(ds.root),
    }


def _fit_fold(
    exp: Experiment,
    ds: NnUNetDataset,
    items: dict,
    train_ids: list[str],
    out: Path,
    split: dict,
    resume: bool,
    progress: bool,
    label: str = "training",
) -> Trainer:
    labels = {c: items[c]["label"] for c in train_ids}
    patients = {c: items[c]["patient_id"] for c in train_ids}
    if exp.train.label_fraction < 1.0:
        train_ids = label_subset(
            train_ids, patients, labels, exp.train.label_fraction, exp.train.seed
        )
    if split.get("validation"):  # a published split names its validation cases
        tr, val = train_ids, list(split["validation"])
    else:
        tr, val = inner_validation_split(
            train_ids, patients, labels, fraction=exp.train.val_fraction, seed=exp.train.seed
        )
    split = {**split, "train": list(tr), "validation": list(val)}
    trainer = Trainer(
        exp.train,
        exp.model_factory(),
        [items[c] for c in tr],
        [items[c] for c in val],
        out,
        exp.class_names,
        # the cases it learnt from (validation chose the epoch), for `evaluate`'s overlap check
        bundle_meta={
            **_bundle_meta(exp, ds, split),
            "data": items_training_data(ds, items, [*tr, *val]),
        },
        progress=progress,
        reference_phase_index=(
            exp.phases.index(ds.reference_phase) if ds.reference_phase in exp.phases else None
        ),
        roi_channel=exp.preprocess.roi_channel,
        callbacks=[FoldProgress(label, exp.train.epochs, enabled=progress)],
    )
    trainer.fit(resume=resume)
    return trainer


def run_record(exp: Experiment, folds: int, seed: int) -> dict[str, Any]:
    """The settings a cross-validation of `exp` records in run.json (JSON-normalised), by which
    `ablate` recognises a finished run it can reuse."""
    record = {
        "model": exp.model,
        "model_options": exp.model_options,
        "folds": folds,
        "seed": seed,
        "training": exp.train.to_dict(),
        "preprocessing": exp.preprocess.to_dict(),
    }
    return json.loads(json.dumps(record))


def predict_fold(
    trainer: Trainer, exp: Experiment, items: dict, test_ids: list[str], k: int, oof: OutOfFold
) -> None:
    """Predict a fold's test cases into `oof`: probabilities, and lesion maps or slice scores."""
    test_items = [items[c] for c in test_ids]
    if model_info(exp.model)["segments"]:
        probs, lesion = trainer.predict(test_items, return_lesion_prob=True)
        oof.lesion.update(zip(test_ids, lesion, strict=True))
    else:
        probs, slices = trainer.predict(test_items, return_slice_prob=True)
        oof.slices.update((c, q) for c, q in zip(test_ids, slices, strict=True) if q is not None)
    for c, p in zip(test_ids, probs, strict=True):
        oof.fold[c], oof.probs[c] = k, p


def preprocess_experiment(
    dataset: str | Path,
    cache_root: str | Path,
    exp_kwargs: dict[str, Any],
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the cache entries `train`/`cv` with the same experiment options read (preprocess_dataset's stats)."""
    ds = open_dataset(dataset)
    exp = make_experiment(ds, **exp_kwargs)
    return preprocess_dataset(
        ds.root, cache_root, exp.preprocess, workers=workers, progress=progress
    )


def run_cv(
    dataset: str | Path,
    out: str | Path,
    exp_kwargs: dict[str, Any],
    folds: int = 5,
    seed: int = 0,
    cache_root: str | Path | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
    n_boot: int = 1000,
    only_fold: int | None = None,
    merge: bool = False,
) -> dict[str, Any]:
    """k-fold patient-level cross-validation: splits.json, a bundle per fold, predictions, metrics,
    report; a fold that finished with the same settings and data is reused. `only_fold`: that fold
    alone (a job; no report). `merge`: pool finished folds with the settings they recorded
    (`exp_kwargs`, `folds`, `seed` unused), training nothing (see fold_jobs)."""
    start = time.perf_counter()
    ds = open_dataset(dataset)
    out = Path(out)
    if merge:  # every fold's recorded settings, which must agree
        fields, folds, seed, cache_root = fold_jobs.merged_settings(out, cache_root)
        exp = Experiment(**fields)
    else:
        exp = make_experiment(ds, seed=seed, **exp_kwargs)
    fold_jobs.check_fold_index(only_fold, folds)
    ids = experiment_cases(ds, exp.phases)
    # Folds first: a fold count the data cannot support fails before any preprocessing.
    patients, labels = [ds.case(c).patient_id for c in ids], [ds.case(c).label for c in ids]
    fold_list = patient_folds(ids, patients, labels, k=folds, seed=seed)
    # under torchrun: inputs checked above on every rank alike, so the group starts only now
    join_group(exp.train.batch_size)
    progress = progress and is_main()
    cache_dir = Path(cache_root) if cache_root else out / "cache"
    items = in_turn(cached_items, ds, cache_dir, exp.preprocess, workers, progress, cases=ids)
    # a fold job or a merge must find the RUN's folds; a whole cv call rewrites them, as ever
    on_main(fold_jobs.settle_splits, out / "splits.json", fold_list, only_fold is not None or merge)
    shared = fold_jobs.fold_settings(
        run_record(exp, folds, seed), exp.phases, exp.class_names, items, cache_dir, ds.root
    )
    oof = OutOfFold({}, {}, {})
    for k, fold in enumerate(fold_list):
        train, test = list(fold["train"]), list(fold["test"])
        split = {"fold": k, "test": test}
        record, since = {**shared, **split}, time.perf_counter()
        if only_fold not in (None, k) or fold_jobs.reuse_fold(
            out / f"fold_{k}", record, oof, merge
        ):
            continue
        trainer = _fit_fold(
            exp,
            ds,
            items,
            train,
            out / f"fold_{k}",
            split,
            resume,
            progress,
            f"fold {k + 1}/{folds}",
        )
        predict_fold(trainer, exp, items, test, k, oof)
        on_main(fold_jobs.save_fold, out / f"fold_{k}", record, oof, since)
    if only_fold is not None:
        return {"fold": only_fold, "folder": str(out / f"fold_{only_fold}"), "run": shared}
    title = f"{exp.model}: {folds}-fold patient-level cross-validation"
    report = {"title": title, "model": exp.model, "seed": seed, "n_boot": n_boot}
    metrics, preds = on_main(write_oof_report, out, ds, items, oof, exp.class_names, **report)
    run_info = {
        **run_record(exp, folds, seed),
        **run_data(ds, cache_dir, ids),  # the dataset's fingerprint, matched by compare and ablate
        # where the inputs were cached: compare/ablate read the same entries instead of rebuilding
        "cache": str(cache_dir.resolve()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    on_main(atomic_write_json, out / "run.json", run_info)
    return {"metrics": metrics, "predictions": preds, "run": run_info}


def run_train(
    dataset: str | Path,
    out: str | Path,
    exp_kwargs: dict[str, Any],
    seed: int = 0,
    cache_root: str | Path | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on every case (an inner validation split selects the epoch); write RUN/bundle."""
    ds = open_dataset(dataset)
    out = Path(out)
    exp = make_experiment(ds, seed=seed, **exp_kwargs)
    ids = experiment_cases(ds, exp.phases)
    join_group(exp.train.batch_size)  # under torchrun, after the checks above
    progress = progress and is_main()
    cache_dir = Path(cache_root) if cache_root else out / "cache"
    items = in_turn(cached_items, ds, cache_dir, exp.preprocess, workers, progress, cases=ids)
    trainer = _fit_fold(exp, ds, items, ids, out, {"fold": None, "test": []}, resume, progress)
    return {"bundle": str(trainer.bundle_dir)}
