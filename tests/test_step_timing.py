"""Timing a run's own network: the trainer's loss, the run's input and batch, each network once."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from liverphase.evaluate import compare
from liverphase.models.registry import create_model
from liverphase.train.losses import joint_seg_cls_loss, training_loss
from liverphase.train.profile import _central_mask

DS = SimpleNamespace(phases=["NC", "ART", "PV", "DL"], class_names=["HCC", "ICC"])


def test_central_mask_is_the_middle_half_of_each_axis() -> None:
    mask = _central_mask(2, (16, 8, 4))
    assert mask.shape == (2, 16, 8, 4) and mask.mean() == pytest.approx(1 / 8)
    assert mask[0, 4:12, 2:6, 1:3].all() and mask[:, :4].sum() == 0


def test_training_loss_is_the_trainers_for_classifiers_and_segmenters() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 4, 1, 16, 16, 16), torch.tensor([0, 1])
    mask = _central_mask(2, (16, 16, 16))
    seg_net = create_model(
        "std_net", 2, DS.phases, in_channels=1, base_channels=4, scales=3, temporal="mean"
    )
    with torch.no_grad():  # only the loss's value is compared
        out = seg_net(x)
    joint = float(training_loss(out, y, mask))
    assert joint == pytest.approx(float(joint_seg_cls_loss(out, y, mask)))
    # the mask term is in it: the step backpropagates through the decoder's own loss too
    assert joint > float(F.cross_entropy(out.logits, y)) + 0.1
    cls_net = create_model("early_fusion", 2, DS.phases, in_channels=1)
    with torch.no_grad():
        out = cls_net(x)
    assert float(training_loss(out, y, mask)) == pytest.approx(
        float(F.cross_entropy(out.logits, y))
    )


def _run(folder: Path, phases: list[str] | None, batch: int = 3) -> Path:
    folder.mkdir(parents=True)
    info = {
        "model": "early_fusion",
        "model_options": {"in_channels": 1},
        "preprocessing": {"phases": phases, "size": [16, 16, 16], "channels": 3},
        "training": {"batch_size": batch},
    }
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def test_step_arguments_follow_the_runs_input_and_batch(tmp_path: Path) -> None:
    args = compare.step_arguments(_run(tmp_path / "a", ["ART", "PV", "DL"]), DS)
    # the model's in_channels (1) wins over the preprocessing's windows (3); phases are the run's
    assert args == {
        "name": "early_fusion",
        "shape": [3, 1, 16, 16, 16],
        "batch": 3,
        "options": {},
        "phases": ["ART", "PV", "DL"],
        "num_classes": 2,
    }
    every = compare.step_arguments(_run(tmp_path / "b", None, batch=2), DS)
    assert every["phases"] == DS.phases and every["shape"][0] == 4 and every["batch"] == 2
    assert compare.step_arguments(tmp_path / "no_run", DS) is None


def test_the_same_network_is_timed_once_per_sitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = compare.profile_one

    def counted(**kwargs):  # noqa: ANN003, ANN202 - profile_one's keywords
        calls.append(kwargs["shape"])
        return real(**kwargs)

    monkeypatch.setattr(compare, "profile_one", counted)
    timings: dict[str, float] = {}
    first = compare.timed_step_seconds(_run(tmp_path / "a", ["ART", "PV", "DL"]), DS, timings)
    again = compare.timed_step_seconds(_run(tmp_path / "b", ["ART", "PV", "DL"]), DS, timings)
    other = compare.timed_step_seconds(_run(tmp_path / "c", None), DS, timings)
    assert first > 0 and again == first and other > 0
    assert calls == [(3, 1, 16, 16, 16), (4, 1, 16, 16, 16)] and len(timings) == 2
    assert compare.timed_step_seconds(tmp_path / "no_run", DS, timings) is None
