"""The trainer under `torchrun --nproc_per_node=2` (gloo, CPU) matches one process.

With the per-rank batch set to batch/world, DistributedSampler hands rank r the positions r, r+2, …
of the same seeded permutation one process walks, so each global step sees the same cases and DDP's
gradient average equals the one-process batch mean. Augmentation draws depend only on (seed, epoch,
case index), so they match too. What remains is float summation order (all-reduce of two partial
means vs one mean): with SGD that moves weights by about 4e-6 after three epochs here, so weights
are compared at atol 1e-5 and probabilities at 1e-5. (Adam amplifies such rounding where gradients
are near zero, and dropout masks differ per rank, so neither is used for this comparison.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from _trainer_support import register, unregister
from liverphase.train.run_ddp import run

TESTS = Path(__file__).parent
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """The tiny test models, registered for this module only."""
    register()
    yield
    unregister()


def spec(out: Path, plugins: list[str]) -> dict:
    return {
        "out": str(out),
        "plugins": plugins,
        "train": {
            "model": "tiny_test_model",
            "epochs": 3,
            "batch_size": 4,
            "lr": 0.1,
            "optimizer": "sgd",
            "scheduler": "step",
            "step_size": 2,
            "seed": 1,
        },
        "toy": {"n_train": 16, "n_val": 8, "seed": 0},
    }


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside python")
def test_two_processes_match_one(tmp_path):
    one = run(spec(tmp_path / "one", plugins=[]))  # in this process: the model is registered
    assert one["world"] == 1
    cfg = tmp_path / "two.json"
    cfg.write_text(json.dumps(spec(tmp_path / "two", plugins=[str(TESTS / "_trainer_support.py")])))
    # a rank that aborts prints every thread's Python stack (where it died: training or teardown)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "liverphase.train.run_ddp"]
    proc = subprocess.run(
        [*cmd, "--config", str(cfg)], env=env, capture_output=True, text=True, timeout=300
    )
    noise = "find_unused_parameters=True was specified"
    stderr = "\n".join(line for line in proc.stderr.splitlines() if noise not in line)
    assert proc.returncode == 0, stderr[-6000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world"] == 2
    assert two["best_epoch"] == one["best_epoch"]
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_auc", "val_acc", "lr"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    np.testing.assert_allclose(two["val_probs"], one["val_probs"], atol=1e-5, rtol=0)
    w1 = load_file(str(tmp_path / "one" / "run" / "bundle" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "run" / "bundle" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], atol=1e-5, rtol=0, err_msg=key)
    # Training changed the model (the loss fell), so matching runs is not vacuous.
    assert one["history"][-1]["val_loss"] < one["history"][0]["val_loss"]
