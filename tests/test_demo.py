"""The embedded demo: the path on a tiny cohort (fast), the floor it must meet on its own
configuration (slow), and the verdict rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liverphase.evaluate.predictions import read_predictions
from liverphase.inference.demo import demo_experiment, learns, run_demo
from liverphase.inference.demo_settings import (
    DEMO_MODEL,
    DEMO_RECIPE,
    DEMO_SEED,
    DEV_SEED,
)


def test_learns_needs_the_auc_floor_and_a_ci_above_chance_margin():
    assert learns({"auc": 0.90, "auc_ci": [0.80, 0.96]})
    assert not learns({"auc": 0.84, "auc_ci": [0.78, 0.90]})  # below the floor
    assert not learns({"auc": 0.88, "auc_ci": [0.69, 0.97]})  # CI reaches 0.70
    assert not learns({"auc": None, "auc_ci": None})


def test_demo_recipe_applies_to_its_model_only_and_runs_on_a_fresh_seed():
    exp = demo_experiment(DEMO_MODEL, 3)
    assert exp["model_options"] == DEMO_RECIPE["model_options"] and exp["epochs"] == 3
    assert "model_options" not in demo_experiment("miff_spm", 3)
    assert DEMO_SEED != DEV_SEED


def test_demo_path_on_a_tiny_cohort(tmp_path):
    s = run_demo(tmp_path / "d", cases=12, epochs=1, preset="tiny", seed=5, log=lambda _: None)
    preds = read_predictions(tmp_path / "d" / "cv" / "predictions.csv")
    assert sorted(preds.case_ids) == [f"CT{i:04d}" for i in range(12)]
    metrics = json.loads((tmp_path / "d" / "cv" / "metrics.json").read_text())["pooled"]
    assert s["auc"] == pytest.approx(metrics["auc"]) and s["learns"] == learns(metrics)
    assert 0.0 <= s["baseline_auc"] <= 1.0 and s["baseline_auc_ci"][0] <= s["baseline_auc"]
    # the held-out study's truth and prediction, from the fold that held it out
    assert s["true_label"] == preds.class_names[int(preds.labels[preds.case_ids.index("CT0000")])]
    assert s["held_out_label"] in preds.class_names
    assert sum(s["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    prediction = json.loads((tmp_path / "d" / "predict" / "CT0000" / "prediction.json").read_text())
    assert any("no Grad-CAM" in w for w in prediction["warnings"])  # the class is read detached


@pytest.mark.slow
def test_demo_meets_its_floor(tmp_path):
    """The demo itself (about 6 min on 2 cores): a change that stops its model learning fails here.
    Measured on other cohorts with the same configuration (benchmarks/results/demo): seed 101 0.887,
    seed 7 0.781 (0.694-0.862), 90 cases of seed 7 0.728 — the floor is not met on every cohort."""
    s = run_demo(tmp_path / "d", log=lambda _: None)
    assert learns({"auc": s["auc"], "auc_ci": s["auc_ci"]}), s
    assert s["true_label"] == s["held_out_label"] and np.isfinite(s["baseline_auc"])
