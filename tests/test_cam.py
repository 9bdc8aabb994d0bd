"""Grad-CAM per phase and occlusion importance: known answers, layouts, MONAI agreement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from liverphase.explain.cam import ADAPTERS, PhaseGradCAM, adapter_for
from liverphase.explain.occlusion import phase_importance
from liverphase.models.registry import ModelOutput, create_model, list_models

PHASES = ["NC", "ART", "PV", "DL"]
SMALL = {"std_net": {"base_channels": 4, "scales": 3}, "unet_channels": {"base_channels": 4}}


class OnePhase(nn.Module):
    """Per-phase identity features; the class-1 logit is the mean feature of phase `k` only."""

    cam_target_layer = "features"
    cam_layout = "volumes"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.features = nn.Conv3d(1, 1, 1)
        nn.init.ones_(self.features.weight)
        nn.init.zeros_(self.features.bias)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        b, p = x.shape[:2]
        f = self.features(x.flatten(0, 1)).view(b, p, *x.shape[3:])
        score = f[:, self.k].mean(dim=(1, 2, 3))
        logits = torch.stack([torch.zeros_like(score), score], dim=1)
        return ModelOutput(logits=logits, features=logits)


def blob_input(centres: list[tuple[int, int, int]], shape=(8, 16, 16)) -> torch.Tensor:
    """(1, P, 1, D, H, W): a bright Gaussian blob per phase at its own centre on a dim background."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    phases = [
        0.1 + np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 4.0) for c in centres
    ]
    return torch.tensor(np.stack(phases)[None, :, None], dtype=torch.float32)


def test_known_answer_one_phase_decides():
    centres = [(2, 4, 4), (5, 10, 12), (3, 12, 3), (6, 3, 12)]
    x = blob_input(centres)
    model = OnePhase(k=1).eval()
    result = PhaseGradCAM(model)(x, class_index=1)
    assert result.maps.shape == (4, 8, 16, 16)
    assert result.empty == [0, 2, 3]  # no gradient reaches the other phases
    peak = np.unravel_index(np.argmax(result.maps[1]), result.maps[1].shape)
    assert tuple(int(v) for v in peak) == centres[1]
    assert result.maps[1].max() == pytest.approx(1.0) and result.maps[1].min() == pytest.approx(0.0)
    imp = phase_importance(model, x, PHASES, class_index=1)
    assert imp["drop"]["NC"] == imp["drop"]["PV"] == imp["drop"]["DL"] == 0.0
    assert imp["drop"]["ART"] != 0.0
    assert phase_importance(model, x, PHASES, 1, present=[1, 1, 0, 1])["drop"]["PV"] is None


def test_every_registered_model_has_a_valid_adapter():
    for name in list_models():
        model = create_model(name, 2, PHASES, in_channels=3, **SMALL.get(name, {}))
        adapter = adapter_for(model, name)
        assert adapter is not None, name
        assert adapter.layer(model) in dict(model.named_modules()), name
    assert set(ADAPTERS) >= {"miff_spm", "resnet2d_avg", "stic", "resnet3d18", "std_net"}


@pytest.mark.parametrize("name", ["miff_spm", "std_net", "unet_channels"])
def test_per_phase_and_shared_layouts(name):
    torch.manual_seed(0)
    model = create_model(name, 2, PHASES, in_channels=3, **SMALL.get(name, {})).eval()
    x = torch.rand(1, 4, 3, 16, 32, 32)
    cam = PhaseGradCAM(model, name)
    # a random net's evidence may be all negative for one class (ReLU → empty): take the other
    result = min((cam(x, class_index=k) for k in (0, 1)), key=lambda r: len(r.empty))
    assert result.maps.shape == (4, 16, 32, 32)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    if name == "unet_channels":
        assert result.shared and all(np.array_equal(result.maps[0], m) for m in result.maps)
    else:
        assert not result.shared
        live = [i for i in range(4) if i not in result.empty]
        assert live and not np.allclose(result.maps[live[0]], result.maps[(live[0] + 1) % 4])
    if name == "miff_spm":
        assert result.layer == "encoder.fusion.3"


def test_slice_chunks_and_checkpointing_do_not_change_the_map():
    torch.manual_seed(0)
    x = torch.rand(1, 4, 3, 8, 32, 32)
    base = create_model("resnet2d_avg", 2, PHASES, in_channels=3).eval()
    ref = PhaseGradCAM(base, "resnet2d_avg")(x, 0).maps
    chunked = create_model(
        "resnet2d_avg", 2, PHASES, in_channels=3, slice_chunk=3, checkpointing=True
    ).eval()
    chunked.load_state_dict(base.state_dict())
    maps = PhaseGradCAM(chunked, "resnet2d_avg")(x, 0).maps
    np.testing.assert_allclose(maps, ref, atol=1e-5)
    assert chunked.encoder.checkpointing is True  # restored after the pass


def test_monai_gradcam_matches_our_hooks_on_a_3d_cnn():
    from liverphase.explain.cam import _hooked_pass, _shared_cam

    torch.manual_seed(0)
    model = create_model("resnet3d18", 2, PHASES, in_channels=3).eval()
    x = torch.rand(1, 4, 3, 32, 64, 64)
    twin = copy.deepcopy(model)  # MONAI's hooks stay on its model: keep ours on a twin
    result = PhaseGradCAM(model, "resnet3d18")(x, class_index=1)
    assert result.method.startswith("MONAI GradCAM") and result.shared
    act, grad = _hooked_pass(twin, "net.layer4", x, 1, {})
    ours = _shared_cam(act, grad, tuple(x.shape))[0, 0].numpy()
    assert ours.max() > 0
    ours = (ours - ours.min()) / (ours.max() - ours.min())
    np.testing.assert_allclose(result.maps[2], ours, atol=1e-5)


def test_models_without_an_adapter_get_input_saliency():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> ModelOutput:
            v = (x * x).mean(dim=(2, 3, 4, 5))
            return ModelOutput(logits=self.lin(v), features=v)

    x = blob_input([(2, 4, 4), (5, 10, 12), (3, 12, 3), (6, 3, 12)])
    result = PhaseGradCAM(Plain().eval())(x, class_index=0)
    assert "saliency" in result.method
    for i, c in enumerate([(2, 4, 4), (5, 10, 12), (3, 12, 3), (6, 3, 12)]):
        assert np.unravel_index(np.argmax(result.maps[i]), result.maps[i].shape) == c
