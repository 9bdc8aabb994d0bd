"""The model contract, checked for every registered model: shapes, finiteness, learning, gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from liverphase.models import create_model, list_models, model_info
from liverphase.train.losses import joint_seg_cls_loss

PHASES = ("NC", "ART", "PV", "DL")
GRID = (16, 32, 32)  # divisible by 16, the smallest grid every model takes
MODELS = list_models()


def batch(b: int, p: int, c: int, seed: int = 0) -> torch.Tensor:
    """A fixed random batch (B, P, C, D, H, W)."""
    return torch.randn(b, p, c, *GRID, generator=torch.Generator().manual_seed(seed))


def loss_of(name: str, out, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Classification loss, plus the mask term for models that segment."""
    if model_info(name)["segments"]:
        mask = (x[:, 0, 0] > 0.5).long()
        return joint_seg_cls_loss(out, y, mask)
    return F.cross_entropy(out.logits, y)


def test_registry_holds_the_zoo():
    expected = {"miff_spm", "resnet2d_avg", "early_fusion", "resnet3d18", "densenet3d121", "stic"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("p,c", [(1, 3), (2, 1), (3, 3), (4, 1), (4, 3)])
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes_and_values(name: str, p: int, c: int):
    phases = PHASES[:p]
    if p < model_info(name)["min_phases"]:
        with pytest.raises(ValueError, match="phases"):
            create_model(name, num_classes=3, phases=phases, in_channels=c)
        return
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, phases=phases, in_channels=c).eval()
    with torch.no_grad():
        out = model(batch(2, p, c))
    assert out.logits.shape == (2, 3)
    assert out.features.ndim == 2 and out.features.shape[0] == 2
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.features).all()
    assert not torch.allclose(out.logits[0], out.logits[1])  # the input reaches the output
    if out.phase_logits is not None:
        assert out.phase_logits.shape == (2, p, 3)
        assert torch.isfinite(out.phase_logits).all()
    if model_info(name)["segments"]:
        assert out.seg_logits is not None and out.seg_logits.shape[2:] == GRID
    else:
        assert out.seg_logits is None


@pytest.mark.parametrize("name", MODELS)
def test_loss_falls_on_a_fixed_batch(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, phases=PHASES[:2], in_channels=1).train()
    x, y = batch(2, 2, 1, seed=1), torch.tensor([0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_of(name, model(x), x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-2:]) < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_every_parameter(name: str):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, phases=PHASES, in_channels=3).train()
    x, y = batch(2, 4, 3), torch.tensor([0, 1])
    loss_of(name, model(x), x, y).backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert missing == []
    zero = [n for n, p in params.items() if p.grad is not None and not p.grad.abs().sum() > 0]
    # A bias right before BatchNorm (MONAI's downsample convs) gets an exactly cancelled gradient.
    assert len(zero) <= 0.05 * len(params), zero


@pytest.mark.parametrize("name", MODELS)
def test_wrong_input_shape_is_a_clear_error(name: str):
    model = create_model(name, num_classes=2, phases=PHASES[:3], in_channels=1)
    with pytest.raises(ValueError, match=r"\(B, P, C, D, H, W\)"):
        model(torch.randn(2, 3, *GRID))
    with pytest.raises(ValueError, match="3 phases x 1 channels"):
        model(batch(2, 4, 1))
    with pytest.raises(ValueError, match="3 phases x 1 channels"):
        model(batch(2, 3, 3))


def test_model_defaults_are_the_builders_keyword_defaults():
    from liverphase.models.registry import model_defaults

    miff = model_defaults("miff_spm")
    assert miff["miff"] is True and miff["spm"] is True and miff["mtl_lambda"] == 0.5
    assert miff["region_kinetics"] is False and miff["in_channels"] == 3
    assert "num_classes" not in miff and "phases" not in miff
    built = create_model("miff_spm", 2, ["NC", "ART", "PV", "DL"])
    assert built.mtl_lambda == miff["mtl_lambda"]
    with pytest.raises(KeyError, match="unknown model"):
        model_defaults("no_such_model")
