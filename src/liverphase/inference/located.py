"""`cv --locate auto`: the pipeline without the answer. Each fold trains a lesion locator on its
training cases' masks; every test study then goes through `predict` with its mask and boxes removed
(the locator frames the crop, as for a new study nobody marked), and is scored against the truth:
detection, centre error, Dice of the mask the pipeline used, and the class. A missed lesion is
scored as predicted (from the wrong crop), never dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.atomic import WEIGHTS_SHA256, atomic_dir, atomic_write_text
from liverphase.data.splits import inner_validation_split, splits_from_json
from liverphase.errors import ConfigError
from liverphase.evaluate.located import (
    COLUMNS,
    FOLD_CSV,
    located_summary,
    read_rows,
    write_located_report,
    write_rows,
)
from liverphase.evaluate.provenance import dataset_content, training_record
from liverphase.inference.predictor import Predictor
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.preprocess.coarse import lesion_found
from liverphase.train.bundle import read_bundle_meta
from liverphase.train.locator import (
    FOLDER,
    LocatorConfig,
    coarse_case,
    read_locator_meta,
    save_locator,
    train_locator,
)

LOCATE_MODES = ("given", "auto")


def check_locate(mode: str) -> str:
    """The --locate value, refused in one line unless it is one of LOCATE_MODES."""
    if mode not in LOCATE_MODES:
        raise ConfigError(f"--locate must be one of {list(LOCATE_MODES)}, got {mode!r}", "--locate")
    return mode


def check_locatable(dataset: str | Path) -> NnUNetDataset:
    """The dataset, if a lesion locator can learn from it (a lesion mask for every labeled case);
    else one ConfigError naming what is missing."""
    ds = open_dataset(dataset)
    if ds.roi == "organ":
        raise ConfigError(
            "--locate auto finds lesions; this dataset's models read the whole organ (roi: organ)",
            "--locate",
        )
    missing = [c.case_id for c in ds.cases if c.label and ds.label_path(c.case_id) is None]
    if missing:
        raise ConfigError(
            f"--locate auto learns where lesions are from masks; {len(missing)} labeled case(s) "
            f"have none in labelsTr/ (e.g. {missing[0]})",
            "--locate",
        )
    return ds


def locator_key(
    ds: NnUNetDataset, train_ids: Sequence[str], phases: Sequence[str], config: LocatorConfig
) -> tuple[str, dict[str, Any]]:
    """(content key, training record) of the locator a fold trains: the same training studies,
    phases and settings give the same locator, which every model's run on those folds shares."""
    record = training_record(dataset_content(ds), train_ids)
    blob = json.dumps(
        {"config": config.to_dict(), "phases": list(phases), "data": record}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20], record


def fold_locator(
    ds: NnUNetDataset,
    train_ids: Sequence[str],
    phases: Sequence[str],
    store: Path,
    config: LocatorConfig,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The locator trained on `train_ids` (from `store` when an identical one exists)."""
    key, record = locator_key(ds, train_ids, phases, config)
    folder = store / key
    try:
        read_locator_meta(folder)
        return folder
    except Exception:  # absent or damaged (BundleError, a half-copied folder): train it again
        pass
    missing = [c for c in train_ids if ds.label_path(c) is None]
    if missing:
        raise ConfigError(
            f"the locator learns from lesion masks; case(s) {missing[:3]} have none (labelsTr/)",
            "--locate auto",
        )
    # one study in memory at a time: only its coarse copy is kept
    cases = {c: coarse_case(ds.load_study(c), phases, config, ds.modality) for c in train_ids}
    tr, val = inner_validation_split(
        list(train_ids),
        {c: ds.case(c).patient_id for c in train_ids},
        {c: ds.case(c).label for c in train_ids},
        fraction=config.val_fraction,
        seed=config.seed,
    )
    net, history = train_locator(
        [cases[c] for c in tr], [cases[c] for c in val], len(phases), config, log=log
    )
    meta = {
        "config": config.to_dict(),
        "phases": list(phases),
        "modality": ds.modality,
        "data": record,
        "validation": sorted(val),
        **history,
    }
    return save_locator(folder, net, meta)


def install_locator(source: Path, bundle: Path) -> None:
    """Copy a locator into a fold's bundle (atomically), so `predict` with it needs no location."""
    with atomic_dir(bundle / FOLDER) as tmp:
        for f in source.iterdir():
            shutil.copy2(f, tmp / f.name)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image) > 0


def predict_blind(predictor: Predictor, ds: NnUNetDataset, case_id: str, fold: int) -> dict:
    """One test study through `predict` with its location removed, scored against its mask."""
    study = ds.load_study(case_id)
    truth = _array(study.mask)
    blind = dataclasses.replace(study, mask=None, bbox=None, phase_boxes={})
    with tempfile.TemporaryDirectory() as tmp:
        pred = predictor.predict_study(blind, tmp, cam=False, occlusion=False, report=False)
        files = pred["files"]
        located = _array(sitk.ReadImage(str(Path(tmp) / files["locator_mask"])))
        used = located
        if "lesion_mask" in files:  # a segmenting model's own mask in the located crop
            used = _array(sitk.ReadImage(str(Path(tmp) / files["lesion_mask"])))
    spacing = study.phases[study.reference_phase].GetSpacing()[::-1]
    volume_ml = float(truth.sum() * np.prod(spacing)) / 1000.0
    hit, loc = lesion_found(used, truth, spacing), lesion_found(located, truth, spacing)
    return {
        "case_id": case_id,
        "patient_id": study.patient_id,
        "fold": fold,
        "label": study.label,
        "predicted": pred["label"],
        "probabilities": dict(pred["probabilities"]),
        "detected": int(hit["detected"]),
        "centre_error_mm": hit["centre_error_mm"],
        "dice": hit["dice"],
        "locator_detected": int(loc["detected"]),
        "locator_dice": loc["dice"],
        "peak_probability": pred["crop"]["locator"]["peak_probability"],
        "true_volume_ml": volume_ml,
        "seconds": pred["timings"]["total"],
    }


def run_fold_located(
    ds: NnUNetDataset,
    run: Path,
    k: int,
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    phases: Sequence[str],
    store: Path,
    config: LocatorConfig,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Fold k: its locator (trained or found), installed in its bundle, then every test study
    predicted blind; the rows are kept in fold_k/located.csv with the locator's key."""
    folder = run / f"fold_{k}"
    key, _ = locator_key(ds, train_ids, phases, config)
    saved = folder / FOLD_CSV
    stamp = folder / "located.json"
    # the rows stand for this locator, these columns and this fold's model: a retrained fold
    # (other weights) or another locator predicts again
    weights = read_bundle_meta(folder / "bundle").get(WEIGHTS_SHA256)
    wanted = {"key": key, "columns": list(COLUMNS), "model_weights": weights}
    if saved.is_file() and stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if all(recorded.get(name) == value for name, value in wanted.items()):
            return read_rows(saved)
    source = fold_locator(ds, train_ids, phases, store, config, log)
    install_locator(source, folder / "bundle")
    predictor = Predictor(folder / "bundle")
    rows = []
    for i, c in enumerate(test_ids):
        rows.append(predict_blind(predictor, ds, c, k))
        if log:
            r = rows[-1]
            log(
                f"fold {k} {i + 1}/{len(test_ids)} {c}: detected {r['detected']} Dice {r['dice']:.3f}"
            )
    write_rows(saved, rows)
    atomic_write_text(stamp, json.dumps({**wanted, "locator": str(source)}))
    return read_rows(saved)


def run_located(
    run: str | Path,
    dataset: str | Path,
    store: str | Path | None = None,
    config: LocatorConfig | None = None,
    only_fold: int | None = None,
    n_boot: int = 1000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """`cv --locate auto` on a cross-validation RUN whose folds are trained: every fold (or
    `only_fold`) predicted blind; with all folds done, RUN/located/ pools them (the summary)."""
    run, config = Path(run), config or LocatorConfig()
    ds = open_dataset(dataset)
    folds = splits_from_json(run / "splits.json")
    store = Path(store) if store else run / "locators"
    meta = read_bundle_meta(run / "fold_0" / "bundle")
    phases, class_names = list(meta["phases"]), list(meta["class_names"])
    rows: list[dict[str, Any]] = []
    for k, fold in enumerate(folds):
        if only_fold not in (None, k):
            continue
        rows += run_fold_located(
            ds, run, k, fold["train"], fold["test"], phases, store, config, log
        )
    if only_fold is not None:
        return None
    summary = located_summary(run, rows, class_names, n_boot)
    write_located_report(run, summary, rows)
    return summary
