"""The demo's configuration, cross-validated, so a change that makes things faster but worse shows up.

The full run is `liverphase demo`'s cross-validation exactly (its model and recipe, its realistic
cohort and seed, `inference.demo_settings`), judged against the demo's floor: pooled AUC ≥ 0.85 with
the 95% CI's lower bound above 0.70; a chance-level result is a missed target, not a row. `--quick`
checks the path only (12 tiny cases, 1 epoch, a 16×32×32 grid without registration), so its AUC
means nothing. `cases`, `epochs` and `difficulty` replace a run's own: the tests check that the
quick grid on an easy cohort learns (AUC's CI above chance).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liverphase.evaluate.cv import run_cv
from liverphase.inference.demo import demo_experiment, learns
from liverphase.inference.demo_settings import (
    AUC_FLOOR,
    CI_LOWER_FLOOR,
    DEMO_CASES,
    DEMO_EPOCHS,
    DEMO_FOLDS,
    DEMO_MODEL,
    DEMO_SEED,
)
from liverphase.synth.ct import synth_ct_cohort

MODELS = (DEMO_MODEL,)
FOLDS = DEMO_FOLDS
SEED = DEMO_SEED
CASES, QUICK_CASES = DEMO_CASES, 12
EPOCHS, QUICK_EPOCHS = DEMO_EPOCHS, 1
QUICK_PREPROCESS = {"size": [16, 32, 32], "register": False}


def _number(value: Any) -> float | None:
    """A float, or None for missing or NaN values (strict JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def run_accuracy(
    work: Path,
    quick: bool,
    models: Sequence[str] = MODELS,
    log: Callable[[str], object] = print,
    cases: int | None = None,
    epochs: int | None = None,
    difficulty: str = "realistic",
) -> dict[str, Any]:
    """The accuracy section of bench.json: pooled AUC (95% CI) and accuracy per model; `cases` and
    `epochs` (None: the run's own) and the cohort's `difficulty` as given."""
    default_cases, default_epochs = (QUICK_CASES, QUICK_EPOCHS) if quick else (CASES, EPOCHS)
    cases = default_cases if cases is None else cases
    epochs = default_epochs if epochs is None else epochs
    log(f"accuracy: {FOLDS}-fold cv of {', '.join(models)} on {cases} {difficulty} synthetic cases")
    preset = "tiny" if quick else "default"
    cohort = synth_ct_cohort(
        work / "cohort", cases=cases, seed=SEED, preset=preset, difficulty=difficulty
    )
    rows = []
    for name in models:
        exp = demo_experiment(name, epochs)
        if quick:
            exp["preprocess_overrides"] = QUICK_PREPROCESS
        tick = time.perf_counter()
        res = run_cv(
            cohort,
            work / name,
            exp,
            folds=FOLDS,
            seed=SEED,
            cache_root=work / "cache",
            progress=False,
            n_boot=200 if quick else 1000,
        )
        pooled = res["metrics"]["pooled"]
        ci = pooled.get("auc_ci") or [None, None]
        rows.append(
            {
                "model": name,
                "auc": _number(pooled.get("auc")),
                "auc_ci": [_number(v) for v in ci],
                "acc": _number(pooled.get("acc")),
                "learns": learns(pooled),
                "seconds": time.perf_counter() - tick,
                "input": list(res["run"]["preprocessing"]["size"]),
            }
        )
    return {
        "cases": cases,
        "folds": FOLDS,
        "epochs": epochs,
        "seed": SEED,
        "preset": preset,
        "difficulty": difficulty,
        "auc_floor": AUC_FLOOR,
        "ci_lower_floor": CI_LOWER_FLOOR,
        "profile": "cpu",
        "quick": quick,
        "rows": rows,
    }
