"""Trainer: learns, is deterministic, resumes (after an exception or kill -9) to the same bytes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from _trainer_support import register, unregister
from liverphase.data.dataset import write_toy_items
from liverphase.errors import ConfigError
from liverphase.train import TrainConfig, Trainer, load_bundle, model_factory_from_config
from liverphase.train.recipe import class_weights, mask_dice, val_metrics

CLASSES = ["HCC", "ICC"]
PHASES = ["ART", "PV"]
TESTS = Path(__file__).parent


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """The tiny test models, registered for this module only."""
    register()
    yield
    unregister()


# A config that exercises every stateful part: momentum, a step schedule, dropout (global RNG),
# augmentation, class weights and clipping.
RESUME_CFG = {
    "model": "tiny_test_model",
    "model_options": {"dropout": 0.3},
    "epochs": 4,
    "batch_size": 4,
    "lr": 0.05,
    "optimizer": "sgd",
    "scheduler": "step",
    "step_size": 2,
    "gamma": 0.5,
    "class_weights": "balanced",
    "grad_clip": 1.0,
    "seed": 5,
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return write_toy_items(root / "train", 12, seed=0), write_toy_items(root / "val", 8, seed=1)


def make_trainer(cfg: dict, items, out, **kwargs) -> Trainer:
    config = TrainConfig.from_dict(cfg)
    factory = model_factory_from_config(config, len(CLASSES), PHASES, in_channels=1)
    return Trainer(config, factory, items[0], items[1], out, CLASSES, progress=False, **kwargs)


def deterministic_part(history):
    """History without wall-clock figures."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in history]


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = make_trainer(RESUME_CFG, toy, out, tensorboard=False).fit()
    return out, result


def assert_same_run(out_a: Path, result_a: dict, out_b: Path, result_b: dict) -> None:
    assert deterministic_part(result_a["history"]) == deterministic_part(result_b["history"])
    assert result_a["best_epoch"] == result_b["best_epoch"]
    for name in ("bundle/model.safetensors", "checkpoint/state.safetensors"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name


def test_learns_an_easy_signal_and_writes_the_run(toy, tmp_path):
    cfg = {"model": "tiny_test_model", "epochs": 6, "lr": 0.1, "batch_size": 4}
    trainer = make_trainer(cfg, toy, tmp_path)
    result = trainer.fit()
    hist = result["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6]
    # Chance at first (accuracy 0.5), then every validation case right and the loss well down.
    assert hist[0]["val_acc"] <= 0.625 and hist[-1]["val_acc"] == 1.0
    assert result["best"]["val_auc"] > 0.9 and hist[-1]["val_loss"] < hist[0]["val_loss"] * 0.7
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,val_auc,lr,seconds,samples_per_s"
    assert len(lines) == 7 and float(lines[1].split(",")[3]) == pytest.approx(hist[0]["val_auc"])
    assert any((tmp_path / "tensorboard").iterdir())
    # The bundle holds the best epoch and predicts exactly what the trainer predicts.
    model, meta = load_bundle(tmp_path / "bundle")
    assert meta["metrics"]["epoch"] == result["best_epoch"]
    assert meta["metrics"]["val_auc"] == result["best"]["val_auc"]
    assert meta["model"] == "tiny_test_model" and meta["phases"] == PHASES
    assert meta["training"]["lr"] == 0.1 and meta["class_names"] == CLASSES
    val = toy[1]
    probs = trainer.predict(val)
    x = torch.stack([torch.from_numpy(np.load(it["image"])) for it in val])
    # the trainer's test predictions average the recipe's in-plane flips (cpu profile: H and W)
    assert tuple(meta["training"]["tta_flip_axes"]) == (1, 2)
    with torch.no_grad():
        views = [x, x.flip(4), x.flip(5), x.flip([4, 5])]
        expected = torch.stack([torch.softmax(model(v).logits, 1) for v in views]).mean(0).numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert probs.shape == (8, 2)
    np.testing.assert_array_equal(trainer.predict(val[::-1]), probs[::-1])
    unlabelled = [{k: v for k, v in it.items() if k != "label"} for it in val[:3]]
    np.testing.assert_array_equal(trainer.predict(unlabelled), probs[:3])


def test_same_seed_same_bytes_other_seed_differs(toy, reference, tmp_path):
    out, result = reference
    # Same seed, and loading in two worker processes instead of this one: the same bytes.
    cfg = {**RESUME_CFG, "num_workers": 2}
    again = make_trainer(cfg, toy, tmp_path / "a", tensorboard=False).fit()
    assert_same_run(out, result, tmp_path / "a", again)
    make_trainer({**RESUME_CFG, "seed": 6}, toy, tmp_path / "b", tensorboard=False).fit()
    weights = "bundle/model.safetensors"
    assert (tmp_path / "b" / weights).read_bytes() != (out / weights).read_bytes()


def test_resume_after_a_crash_matches_an_unbroken_run(toy, reference, tmp_path):
    class Crash(Exception):
        pass

    def crash_after_2(epoch, record):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        make_trainer(RESUME_CFG, toy, tmp_path, callbacks=[crash_after_2]).fit()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2
    resumed = make_trainer(RESUME_CFG, toy, tmp_path).fit(resume=True)
    assert_same_run(reference[0], reference[1], tmp_path, resumed)
    assert (tmp_path / "log.csv").read_text().count("\n") == 5  # header + 4 epochs, no repeats
    # Resuming a finished run changes nothing; a changed config is refused.
    again = make_trainer(RESUME_CFG, toy, tmp_path).fit(resume=True)
    assert again["history"] == resumed["history"]
    with pytest.raises(ConfigError, match="lr"):
        make_trainer({**RESUME_CFG, "lr": 0.01}, toy, tmp_path).fit(resume=True)


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import json
from _trainer_support import register
from test_trainer import make_trainer, RESUME_CFG
register()
toy = json.loads({toy!r})
pause = lambda epoch, record: time.sleep(0.3)
make_trainer(RESUME_CFG, toy, {out!r}, callbacks=[pause]).fit()
"""


def test_kill_9_then_resume_matches_an_unbroken_run(toy, reference, tmp_path):
    out = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(TESTS), toy=json.dumps(toy), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=os.environ.copy())
    state_file = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state_file.exists() and json.loads(state_file.read_text())["epoch"] >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(state_file.read_text())["epoch"]
    assert 1 <= killed_at < RESUME_CFG["epochs"]
    resumed = make_trainer(RESUME_CFG, toy, out).fit(resume=True)
    assert_same_run(reference[0], reference[1], out, resumed)


def test_early_stopping_on_a_stalled_metric(toy, tmp_path):
    # An update far below float32 resolution leaves the weights (and metrics) unchanged.
    cfg = {
        "model": "tiny_test_model",
        "epochs": 10,
        "lr": 1e-30,
        "optimizer": "sgd",
        "momentum": 0.0,
        "weight_decay": 0.0,
        "early_stopping_patience": 2,
    }
    result = make_trainer(cfg, toy, tmp_path, tensorboard=False).fit()
    assert result["stopped_early"] and result["epochs_run"] == 3 and result["best_epoch"] == 1
    assert len(result["history"]) == 3


def test_without_validation_the_last_epoch_is_kept(toy, tmp_path):
    cfg = {"model": "tiny_test_model", "epochs": 2, "lr": 0.05}
    config = TrainConfig.from_dict(cfg)
    factory = model_factory_from_config(config, 2, PHASES, in_channels=1)
    trainer = Trainer(config, factory, toy[0], [], tmp_path, CLASSES, progress=False)
    result = trainer.fit()
    assert result["best_epoch"] == 2 and math.isnan(result["history"][0]["val_auc"])
    _, meta = load_bundle(tmp_path / "bundle")
    assert meta["metrics"]["val_auc"] is None  # strict JSON: no NaN in bundle.json


def test_balanced_class_weights(toy, tmp_path):
    train = toy[0][:8] + [it for it in toy[0][8:] if it["label"] == "HCC"]  # 6 HCC, 4 ICC
    trainer = make_trainer(
        {"model": "tiny_test_model", "class_weights": "balanced"}, (train, toy[1]), tmp_path
    )
    weights = class_weights("balanced", trainer.train_set.labels(), 2)
    np.testing.assert_allclose(weights.numpy(), [10 / 12, 10 / 8], rtol=1e-6)
    assert class_weights("none", trainer.train_set.labels(), 2) is None


def test_segmenting_model_trains_with_the_joint_loss_and_predicts_masks(toy, tmp_path):
    cfg = {"model": "tiny_seg_test_model", "epochs": 2, "lr": 0.05, "tta_flip_axes": []}
    trainer = make_trainer(cfg, toy, tmp_path, tensorboard=False)
    result = trainer.fit()
    assert trainer.segments and all(math.isfinite(r["val_loss"]) for r in result["history"])
    probs, lesion = trainer.predict(toy[1][:3], return_lesion_prob=True)
    assert probs.shape == (3, 2) and len(lesion) == 3
    assert lesion[0].shape == (8, 16, 16) and lesion[0].dtype == np.float32
    assert 0.0 <= lesion[0].min() and lesion[0].max() <= 1.0
    # The logged validation Dice is the mean Dice of the selected model's masks (lesion
    # probability > 0.5) on the val items.
    _, val_lesion = trainer.predict(toy[1], return_lesion_prob=True)
    dice = []
    for item, prob in zip(toy[1], val_lesion, strict=True):
        truth, pred = np.load(item["mask"]) > 0, prob > 0.5
        dice.append(2 * (truth & pred).sum() / (truth.sum() + pred.sum()))
    best = result["best"]
    assert 0.0 <= best["val_dice"] <= 1.0
    assert best["val_dice"] == pytest.approx(np.mean(dice), abs=1e-9)
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert header.endswith(",samples_per_s,val_dice")
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["metrics"]["val_dice"] == pytest.approx(best["val_dice"])


def test_mask_dice_known_answers():
    logits = torch.zeros(3, 2, 1, 2, 2)
    logits[0, 1, 0, 0, :] = 1.0  # predicts 2 voxels, truth 1 of them + 1 more: Dice 2*1/(2+2)
    logits[2, 1, 0, 1, 1] = 1.0
    mask = torch.zeros(3, 1, 1, 2, 2, dtype=torch.uint8)
    mask[0, 0, 0, 0, 0] = mask[0, 0, 0, 1, 0] = 1
    dice = mask_dice(logits, mask, torch.tensor([True, True, False]))
    assert dice[0] == pytest.approx(0.5) and dice[1] == 1.0 and math.isnan(dice[2])
    assert mask_dice(None, mask, torch.tensor([True] * 3)) is None
    # a one-channel (sigmoid) head: logit > 0 is lesion
    one = logits[:, 1:] - logits[:, :1]
    assert mask_dice(one, mask, torch.tensor([True, True, False]))[0] == pytest.approx(0.5)


def test_val_metrics_match_sklearn_definitions():
    labels = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.2, 0.7],
            [0.3, 0.4, 0.3],
            [0.6, 0.3, 0.1],
            [0.5, 0.4, 0.1],
        ]
    )
    m = val_metrics(labels, probs, np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert m["loss"] == 3.5 and m["acc"] == pytest.approx(4 / 6)
    # one-vs-rest AUCs by hand: class 0: 7/8, class 1: 6/8, class 2: 7.5/8 (a tie counts ½)
    assert m["auc"] == pytest.approx(20.5 / 24)
    assert math.isnan(val_metrics(np.array([0, 0]), probs[:2, :2], np.zeros(2))["auc"])


def test_batch_must_split_over_processes_and_profiles(monkeypatch):
    from liverphase.train import PROFILE_INPUT, profile_config

    paper = profile_config("paper")
    assert (paper.optimizer, paper.lr, paper.momentum, paper.scheduler) == (
        "sgd",
        1e-3,
        0.9,
        "step",
    )
    assert (paper.step_size, paper.gamma, paper.epochs, paper.batch_size) == (10, 0.1, 50, 2)
    cpu = profile_config("cpu", epochs=3, lr=None)
    assert (cpu.optimizer, cpu.scheduler, cpu.epochs, cpu.lr, cpu.weight_decay) == (
        "adamw",
        "cosine",
        3,
        3e-4,
        1e-4,
    )
    assert PROFILE_INPUT["paper"] == (64, 128, 128)
    with pytest.raises(ConfigError, match="unknown profile"):
        profile_config("gpu")
    with pytest.raises(ConfigError, match="optimizer"):
        profile_config("cpu", optimizer="adam")
    cfg = TrainConfig.from_dict({"augment_params": {"flip_prob": 0.0}})
    assert cfg.augment_params.flip_prob == 0.0
    monkeypatch.setattr("liverphase.train.trainer.rank_world", lambda: (0, 3))
    with pytest.raises(ConfigError, match="does not split over 3"):
        Trainer(cfg, lambda: None, [], [], "unused", CLASSES)


def test_divergence_and_lambda_mismatch_are_user_errors(toy, tmp_path):
    cfg = {"model": "tiny_test_model", "epochs": 3, "lr": 1e30, "optimizer": "sgd"}
    with pytest.raises(ConfigError, match="training diverged"):
        make_trainer(cfg, toy, tmp_path / "a", tensorboard=False).fit()
    # miff_spm mixes its logits with the λ it was built with: it must be the config's λ.
    cfg = {"model": "miff_spm", "model_options": {"mtl_lambda": 0.25}, "mtl_lambda": 0.5}
    with pytest.raises(ConfigError, match="mtl_lambda=0.25"):
        make_trainer(cfg, toy, tmp_path / "b", tensorboard=False).fit()


def test_selection_by_auc_dice_or_loss():
    from liverphase.train.recipe import selection_score

    rec = {"epoch": 3, "val_loss": 0.5, "val_auc": 0.8, "val_dice": 0.7}
    assert selection_score(rec, "auc", True) == [0.8, -0.5]
    assert selection_score(rec, "dice", True) == [0.7, -0.5]
    assert selection_score(rec, "loss", True) == [-0.5]
    # a classifier has no val_dice, an undefined AUC is NaN: both fall back to the loss
    assert selection_score({**rec, "val_auc": math.nan}, "auc", True) == [-0.5]
    assert selection_score({"epoch": 3, "val_loss": 0.5, "val_auc": 0.8}, "dice", True) == [-0.5]
    assert selection_score(rec, "dice", False) == [3.0]
    with pytest.raises(ConfigError, match="select_metric"):
        TrainConfig.from_dict({"select_metric": "f1"})


def test_segmenting_model_selected_by_validation_dice(toy, tmp_path):
    cfg = {"model": "tiny_seg_test_model", "epochs": 3, "lr": 0.05, "select_metric": "dice"}
    result = make_trainer(cfg, toy, tmp_path, tensorboard=False).fit()
    dice = [r["val_dice"] for r in result["history"]]
    assert result["best_epoch"] == 1 + int(np.argmax(dice))


def test_phase_shift_augmentation_keeps_the_reference_phase_on_its_mask(toy, tmp_path):
    only_shift = {
        "flip_prob": 0.0,
        "rotate_prob": 0.0,
        "intensity_prob": 0.0,
        "noise_prob": 0.0,
        "phase_shift_prob": 1.0,
        "phase_shift_voxels": 2,
    }
    cfg = {"epochs": 1, "augment_params": only_shift}
    trainer = make_trainer(cfg, toy, tmp_path, reference_phase_index=1)
    raw = np.load(toy[0][0]["image"])
    moved = trainer.train_set[0]["image"].numpy()
    np.testing.assert_array_equal(moved[1], raw[1])  # the reference phase stays on the mask
    others = [k for k in range(raw.shape[0]) if k != 1]
    shifted = [not np.array_equal(moved[k], raw[k]) for k in others]
    for epoch in range(1, 4):  # some other phase moves in some epoch
        trainer.train_set.set_epoch(epoch)
        shifted += [
            not np.array_equal(trainer.train_set[0]["image"].numpy()[k], raw[k]) for k in others
        ]
        np.testing.assert_array_equal(trainer.train_set[0]["image"].numpy()[1], raw[1])
    assert any(shifted)


def test_phase_dropout_trains_the_masked_phase_path(toy, tmp_path, monkeypatch):
    from liverphase.models.std_net import StdNet

    seen: list = []
    original = StdNet.forward

    def spy(self, x, phase_mask=None):
        if self.training:
            seen.append((x.detach().clone(), None if phase_mask is None else phase_mask.clone()))
        return original(self, x, phase_mask)

    monkeypatch.setattr(StdNet, "forward", spy)
    net = {"model": "std_net", "model_options": {"base_channels": 4, "scales": 3}}
    cfg = {**net, "epochs": 1, "batch_size": 4, "tta_flip_axes": [], "select_metric": "loss"}
    cfg["augment_params"] = {"phase_dropout_prob": 1.0}
    make_trainer(cfg, toy, tmp_path / "a", tensorboard=False).fit()
    assert len(seen) == 3  # 12 items, batch 4
    for x, mask in seen:
        assert mask is not None and mask.shape == (4, 2) and (mask.sum(dim=1) == 1).all()
        assert not x[~mask].any() and x[mask].abs().sum() > 0
    seen.clear()
    make_trainer({**cfg, "augment_params": {}}, toy, tmp_path / "b", tensorboard=False).fit()
    assert seen and all(mask is None for _, mask in seen)
    # a model without a phase mask cannot train with phases dropped: a user error, before training
    no_mask = {**cfg, "model": "tiny_test_model", "model_options": {}}
    with pytest.raises(ConfigError, match="no phase mask"):
        make_trainer(no_mask, toy, tmp_path / "c", tensorboard=False).fit()


def test_head_learning_rate_scale_gives_the_head_its_own_group():
    from liverphase.models import create_model
    from liverphase.train.recipe import build_optimizer, build_scheduler

    net = create_model("std_net", num_classes=2, phases=["ART", "PV"], in_channels=1, scales=3)
    head = {id(p) for p in net.head.parameters()}
    for optimizer in ("adamw", "sgd"):
        cfg = TrainConfig(model="std_net", lr=1e-3, head_lr_scale=30.0, optimizer=optimizer)
        opt = build_optimizer(cfg, net)
        rest_group, head_group = opt.param_groups
        assert {id(p) for p in head_group["params"]} == head
        assert not head & {id(p) for p in rest_group["params"]}
        assert len(rest_group["params"]) + len(head) == len(list(net.parameters()))
        assert (rest_group["lr"], head_group["lr"]) == (1e-3, pytest.approx(3e-2))
    # the schedule scales both groups alike
    cfg = TrainConfig(model="std_net", lr=1e-3, head_lr_scale=30.0, epochs=4)
    opt = build_optimizer(cfg, net)
    sched = build_scheduler(cfg, opt)
    opt.step(), sched.step(), sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(30 * opt.param_groups[0]["lr"])
    assert len(build_optimizer(TrainConfig(model="std_net"), net).param_groups) == 1
    with pytest.raises(ConfigError, match="head_lr_scale"):
        TrainConfig(head_lr_scale=0.0).validate()
    with pytest.raises(ConfigError, match="head"):
        build_optimizer(TrainConfig(head_lr_scale=2.0), torch.nn.Linear(2, 2))


def test_resume_accepts_a_checkpoint_from_before_a_setting_existed(tmp_path):
    """A checkpoint written before `loss`/`init`/`freeze_epochs` existed resumes: the missing
    settings count as their defaults, while a real change is still refused."""
    from liverphase.errors import ConfigError
    from liverphase.train.config import TrainConfig
    from liverphase.train.state import check_resumable

    now = TrainConfig().to_dict()
    old = {k: v for k, v in now.items() if k not in ("loss", "init", "freeze_epochs")}
    check_resumable(old, now, tmp_path)
    with pytest.raises(ConfigError, match="lr"):
        check_resumable({**old, "lr": 0.5}, now, tmp_path)
