"""The embedded default job: synthetic cohort → patient-level CV of miff_spm → predict on a held-out study."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liverphase.evaluate.cv import run_cv
from liverphase.inference.run import run_predict
from liverphase.synth.ct import synth_ct_cohort

# Sized so `make demo` finishes in under 10 minutes on 2 CPU cores after setup.
DEMO_CASES = 40
DEMO_FOLDS = 3
DEMO_EPOCHS = 8


def run_demo(
    out: str | Path,
    cases: int = DEMO_CASES,
    folds: int = DEMO_FOLDS,
    epochs: int = DEMO_EPOCHS,
    model: str = "miff_spm",
    seed: int = 0,
    preset: str = "default",
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run synth → cv → predict and return the paths and headline figures."""
    out = Path(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "dataset.json").is_file():
        log(
            f"[1/3] synthesising {cases} four-phase CT cases (HCC vs ICC, realistic difficulty) in {data}"
        )
        synth_ct_cohort(data, cases=cases, seed=seed, dicom=1, preset=preset)
    else:
        log(f"[1/3] reusing the synthetic cohort in {data}")
    timings["synth_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    run = out / "cv"
    log(
        f"[2/3] {folds}-fold patient-level cross-validation of {model} (cpu profile, {epochs} epochs) in {run}"
    )
    result = run_cv(
        data,
        run,
        {"model": model, "profile": "cpu", "epochs": epochs},
        folds=folds,
        seed=seed,
        cache_root=out / "cache",
        workers=workers,
        progress=True,
    )
    pooled = result["metrics"]["pooled"]
    timings["cv_s"] = time.perf_counter() - t1

    # The DICOM study is case 0: predict it with the bundle of the fold that held it out.
    t2 = time.perf_counter()
    dicom_dirs = sorted(p for p in (data / "dicom").iterdir() if p.is_dir())
    study = dicom_dirs[0]
    splits = json.loads((run / "splits.json").read_text())
    fold = next(k for k, s in splits.items() if study.name in s["test"])
    bundle = run / f"fold_{fold}" / "bundle"
    pred_out = out / "predict" / study.name
    log(f"[3/3] predicting the held-out DICOM study {study.name} with fold {fold}'s bundle")
    prediction = run_predict(
        bundle, study, pred_out, mask=data / "dicom" / f"{study.name}_mask.nii.gz"
    )
    timings["predict_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    preds = result["predictions"]
    labels = {
        c: preds.class_names[int(y)] for c, y in zip(preds.case_ids, preds.labels, strict=True)
    }
    summary = {
        "true_label": labels.get(study.name),
        "auc": pooled.get("auc"),
        "auc_ci": pooled.get("auc_ci"),
        "acc": pooled.get("acc"),
        "held_out_case": study.name,
        "held_out_label": prediction.get("label"),
        "probabilities": prediction.get("probabilities"),
        "report_md": str(run / "report.md"),
        "report_html": str(pred_out / "report.html"),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    return summary
