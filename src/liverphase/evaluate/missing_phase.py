"""A finished cv RUN re-predicted with one phase withheld: what each phase is worth to a model that
can predict without it (masked phase tokens), on the very cases and folds the RUN measured.

Each fold's own bundle predicts that fold's test cases from the RUN's cache with `phase_mask` marking
the phase absent, with the test-time flips of its recipe, exactly as `cv` predicted them with every
phase present (with no phase withheld the RUN's predictions.csv comes back, which the tests check).
The result is a cv-like RUN folder (predictions.csv, segmentation csvs, metrics.json, report.md,
splits.json, run.json with `missing_phase`), so `compare` tests it against the full RUN like any other
run: DeLong p on AUC, paired patient-bootstrap p on Dice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.data.splits import splits_from_json
from liverphase.errors import ConfigError, DatasetError
from liverphase.evaluate.compare import default_cache, run_info, run_items
from liverphase.evaluate.cv import OutOfFold, write_oof_report
from liverphase.evaluate.external import predict_items
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import accepts_phase_mask
from liverphase.train.bundle import load_bundle


def run_phases(run: Path) -> list[str]:
    """The phases a cv RUN's model read (its bundles' order), from fold 0's bundle.json."""
    meta_path = Path(run) / "fold_0" / "bundle" / "bundle.json"
    if not meta_path.is_file():
        raise DatasetError("no fold_0/bundle/bundle.json: not a finished cv run", run)
    return list(json.loads(meta_path.read_text())["phases"])


def missing_phase_run(
    run: str | Path,
    dataset: str | Path,
    phase: str | None,
    out: str | Path,
    cache_root: str | Path | None = None,
    n_boot: int = 1000,
) -> Path:
    """Re-predict every fold's test cases of cv RUN with `phase` masked (None: all present) into OUT."""
    run, out = Path(run), Path(out)
    info = run_info(run)
    if not info or not (run / "splits.json").is_file():
        raise DatasetError("no run.json or splits.json: not a finished cv run", run)
    ds = open_dataset(dataset)
    folds = splits_from_json(run / "splits.json")
    items = run_items(run, ds, Path(cache_root) if cache_root else default_cache(run))
    probs_by_case: dict[str, np.ndarray] = {}
    lesion_by_case: dict[str, np.ndarray | None] = {}
    fold_of: dict[str, int] = {}
    meta: dict[str, Any] = {}
    for k, fold in enumerate(folds):
        bundle = run / f"fold_{k}" / "bundle"
        model, meta = load_bundle(bundle)
        present = _present_phases(model, meta, phase, bundle)
        test = [c for c in fold["test"] if c in items]
        flips = tuple((meta.get("training") or {}).get("tta_flip_axes") or ())
        roi = bool((meta.get("preprocessing") or {}).get("roi_channel"))
        probs, lesion = predict_items(
            model, [items[c] for c in test], list(meta["class_names"]), 2, flips, present, roi
        )
        for i, c in enumerate(test):
            probs_by_case[c], fold_of[c] = probs[i], k
            lesion_by_case[c] = lesion[i] if lesion is not None else None
    without = f" without {phase}" if phase else ""
    write_oof_report(
        out,
        ds,
        items,
        OutOfFold(probs_by_case, lesion_by_case, fold_of),
        list(meta["class_names"]),
        title=f"{info['model']}{without}: the folds of {run}, re-predicted",
        model=info["model"],
        seed=int(info.get("seed", 0)),
        n_boot=n_boot,
    )
    atomic_write_text(out / "splits.json", (run / "splits.json").read_text())
    atomic_write_json(out / "run.json", {**info, "missing_phase": phase, "source_run": str(run)})
    return out


def _present_phases(
    model: Any, meta: dict[str, Any], phase: str | None, bundle: Path
) -> list[bool] | None:
    """The bundle's phase-presence vector with `phase` absent (None when nothing is withheld)."""
    if phase is None:
        return None
    phases = list(meta["phases"])
    if phase not in phases:
        raise ConfigError(f"{phase!r} is not one of the run's phases {phases}", "--missing-phases")
    if len(phases) < 2:
        raise ConfigError("a one-phase model has no phase to withhold", "--missing-phases")
    if not accepts_phase_mask(model):
        raise ConfigError(
            f"model {meta['model']!r} cannot predict with a phase missing (no phase mask; "
            f"bundle {bundle})",
            "--missing-phases",
        )
    return [p != phase for p in phases]


def with_missing_phase_runs(
    runs: dict[str, Path],
    reference: str,
    dataset: str | Path,
    out: str | Path,
    cache_root: str | Path | None = None,
) -> dict[str, Path]:
    """`runs` plus, after the reference, one re-predicted run per phase withheld (OUT/missing_<P>),
    labelled '<reference> without <P>'."""
    ref = runs[reference]
    added = {
        f"{reference} without {p}": missing_phase_run(
            ref, dataset, p, Path(out) / f"missing_{p}", cache_root
        )
        for p in run_phases(ref)
    }
    return {reference: ref, **added, **{k: v for k, v in runs.items() if k != reference}}
