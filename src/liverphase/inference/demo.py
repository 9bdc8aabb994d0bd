"""The embedded default job: a realistic synthetic cohort → patient-level CV of a model that learns,
next to the kinetics baseline on the same folds → predict a held-out DICOM study.

The configuration (`DEMO_RECIPE`, cohort size, epochs) was chosen on a development cohort (seed
`DEV_SEED` in demo_settings, benchmarks/results/demo/README.md) to reach AUC ≥ 0.85 within 10 minutes on 2 CPU cores;
the demo itself runs on a cohort of another seed (`DEMO_SEED`) never used for a choice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.data.splits import splits_from_json
from liverphase.evaluate.compare import run_items
from liverphase.evaluate.cv import run_cv
from liverphase.evaluate.kinetics_baseline import kinetics_baseline_cv
from liverphase.evaluate.report import metrics_block
from liverphase.inference.demo_settings import (
    AUC_FLOOR,
    CI_LOWER_FLOOR,
    DEMO_CASES,
    DEMO_EPOCHS,
    DEMO_FOLDS,
    DEMO_MODEL,
    DEMO_RECIPE,
    DEMO_SEED,
)
from liverphase.inference.run import run_predict
from liverphase.io.nifti import open_dataset
from liverphase.synth.ct import synth_ct_cohort


def demo_experiment(model: str, epochs: int) -> dict[str, Any]:
    """run_cv's experiment for the demo: the recipe when the model is the demo's, else defaults."""
    exp: dict[str, Any] = {"model": model, "profile": "cpu", "epochs": epochs}
    if model == DEMO_MODEL:
        exp.update(DEMO_RECIPE)
    return exp


def kinetics_on_run(run: Path, data: Path, cache: Path, seed: int = 0) -> dict[str, Any]:
    """The kinetics baseline (logistic regression on region means read through the true mask) on the
    run's own folds: its metrics block with patient-bootstrap CIs."""
    ds = open_dataset(data)
    items = run_items(run, ds, cache)
    folds = splits_from_json(json.loads((run / "splits.json").read_text()))
    probs = kinetics_baseline_cv(items, folds, ds.class_names, seed)
    ids = sorted(probs)
    y = np.array([ds.class_names.index(items[c]["label"]) for c in ids])
    groups = [items[c]["patient_id"] for c in ids]
    return metrics_block(y, np.stack([probs[c] for c in ids]), groups, ds.class_names, seed=seed)


def learns(pooled: dict[str, Any]) -> bool:
    """Whether a pooled metrics block shows a model that learns: AUC ≥ AUC_FLOOR and the lower
    bound of its 95% CI above CI_LOWER_FLOOR."""
    auc, ci = pooled.get("auc"), pooled.get("auc_ci")
    return bool(auc is not None and ci and auc >= AUC_FLOOR and ci[0] > CI_LOWER_FLOOR)


def run_demo(
    out: str | Path,
    cases: int = DEMO_CASES,
    folds: int = DEMO_FOLDS,
    epochs: int = DEMO_EPOCHS,
    model: str = DEMO_MODEL,
    seed: int = DEMO_SEED,
    preset: str = "default",
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run synth → cv → kinetics baseline → predict and return the paths and headline figures."""
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset.json").is_file():
        log(
            f"[1/4] synthesising {cases} four-phase CT cases (HCC vs ICC, realistic difficulty, "
            f"seed {seed}) in {data}"
        )
        synth_ct_cohort(data, cases=cases, seed=seed, dicom=1, preset=preset)
    else:
        log(f"[1/4] reusing the synthetic cohort in {data}")
    timings["synth_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    run = out / "cv"
    log(f"[2/4] {folds}-fold patient-level cross-validation of {model} ({epochs} epochs) in {run}")
    result = run_cv(
        data,
        run,
        demo_experiment(model, epochs),
        folds=folds,
        seed=seed,
        cache_root=out / "cache",
        workers=workers,
        progress=True,
    )
    pooled = result["metrics"]["pooled"]
    timings["cv_s"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    log("[3/4] the kinetics baseline (true lesion mask, logistic regression) on the same folds")
    baseline = kinetics_on_run(run, data, out / "cache", seed)
    timings["baseline_s"] = time.perf_counter() - t2

    # The DICOM study is case 0: predict it with the bundle of the fold that held it out.
    t3 = time.perf_counter()
    study = sorted(p for p in (data / "dicom").iterdir() if p.is_dir())[0]
    splits = json.loads((run / "splits.json").read_text())
    fold = next(k for k, s in splits.items() if study.name in s["test"])
    pred_out = out / "predict" / study.name
    log(f"[4/4] predicting the held-out DICOM study {study.name} with fold {fold}'s bundle")
    prediction = run_predict(
        run / f"fold_{fold}" / "bundle",
        study,
        pred_out,
        mask=data / "dicom" / f"{study.name}_mask.nii.gz",
    )
    timings["predict_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    preds = result["predictions"]
    labels = {
        c: preds.class_names[int(y)] for c, y in zip(preds.case_ids, preds.labels, strict=True)
    }
    return {
        "model": model,
        "cases": cases,
        "seed": seed,
        "true_label": labels.get(study.name),
        "auc": pooled.get("auc"),
        "auc_ci": pooled.get("auc_ci"),
        "acc": pooled.get("acc"),
        "auc_floor": AUC_FLOOR,
        "ci_lower_floor": CI_LOWER_FLOOR,
        "learns": learns(pooled),
        "baseline_auc": baseline.get("auc"),
        "baseline_auc_ci": baseline.get("auc_ci"),
        "held_out_case": study.name,
        "held_out_label": prediction.get("label"),
        "probabilities": prediction.get("probabilities"),
        "report_md": str(run / "report.md"),
        "report_html": str(pred_out / "report.html"),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
