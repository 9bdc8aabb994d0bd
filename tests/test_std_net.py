"""STD-Net and the channel-stacked UNet: shapes, gradients, missing phases, phase order, learning."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from torch.nn import functional as F

from liverphase.models import create_model, model_info
from liverphase.models.std_net import TEMPORAL_MODES

PHASES = ["NC", "ART", "PV", "DL"]
GRID = (16, 32, 32)


def make(name: str = "std_net", p: int = 3, c: int = 1, k: int = 2, **options) -> torch.nn.Module:
    """A small model (base width 8 unless given) with fixed weights."""
    torch.manual_seed(0)
    options.setdefault("base_channels", 8)
    return create_model(name, num_classes=k, phases=PHASES[:p], in_channels=c, **options)


def inputs(p: int = 3, c: int = 1, b: int = 2, seed: int = 1) -> torch.Tensor:
    """Random (B, P, C, D, H, W) input."""
    return torch.randn(b, p, c, *GRID, generator=torch.Generator().manual_seed(seed))


def blob_batch(p: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two cases with an ellipsoid lesion: bright in phase 0 for class 1, dark for class 0."""
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in GRID], indexing="ij")
    gen = torch.Generator().manual_seed(2)
    xs, masks = [], []
    for i, (cz, cy, cx) in enumerate([(7.0, 14.0, 18.0), (9.0, 18.0, 12.0)]):
        lesion = ((z - cz) / 4) ** 2 + ((y - cy) / 7) ** 2 + ((x - cx) / 6) ** 2 < 1
        vol = 0.1 * torch.randn(p, 1, *GRID, generator=gen)
        vol[0, 0][lesion] += 1.0 if i == 1 else -1.0
        vol[1:, 0][:, lesion] -= 0.7  # later phases: washout-like, the same for both classes
        xs.append(vol)
        masks.append(lesion.long())
    return torch.stack(xs), torch.stack(masks)[:, None], torch.tensor([0, 1])


def joint_loss(out, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dice + CE on the mask, CE on the class."""
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
    return dice_ce(out.seg_logits, mask) + F.cross_entropy(out.logits, y)


def dice(seg_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Hard lesion Dice of the argmax mask over the batch."""
    pred = seg_logits.argmax(dim=1, keepdim=True).bool()
    truth = mask.bool()
    return float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp(min=1))


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
@pytest.mark.parametrize("p,c", [(2, 1), (3, 3), (4, 3)])
def test_output_shapes(temporal: str, p: int, c: int) -> None:
    model = make(p=p, c=c, k=3, temporal=temporal).eval()
    with torch.no_grad():
        out = model(inputs(p, c))
    assert out.logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 2, *GRID)
    assert out.features.shape == (2, 2 * 8 * 16)  # global + lesion-weighted pool of 128 channels
    assert out.phase_logits is None
    assert torch.isfinite(out.seg_logits).all() and torch.isfinite(out.logits).all()


def test_default_widths_and_registry() -> None:
    model = make(p=4, c=3, base_channels=16, temporal_pool=2)
    out = model(inputs(4, 3))
    assert out.features.shape == (2, 512) and out.seg_logits.shape == (2, 2, *GRID)
    assert model_info("std_net")["segments"] and model_info("unet_channels")["segments"]
    assert model.segments and make("unet_channels").segments


@pytest.mark.parametrize("temporal", TEMPORAL_MODES)
def test_gradients_reach_every_parameter(temporal: str) -> None:
    model = make(p=3, c=1, temporal=temporal)
    x, mask, y = blob_batch(3)
    joint_loss(model(x), mask, y).backward()
    missing = [n for n, q in model.named_parameters() if q.grad is None]
    assert not missing
    assert all(torch.isfinite(q.grad).all() for q in model.parameters())
    # Conv biases right before instance norm get no gradient in exact arithmetic; the rest must.
    zero = [
        n for n, q in model.named_parameters() if q.grad.abs().max() == 0 and "conv.bias" not in n
    ]
    assert not zero


def test_unet_channels_shapes_and_gradients() -> None:
    model = make("unet_channels", p=3, c=3, k=3)
    out = model(inputs(3, 3))
    assert out.logits.shape == (2, 3) and out.seg_logits.shape == (2, 2, *GRID)
    assert out.features.shape == (2, 2 * 128)  # bottleneck width 16·base
    mask = torch.zeros(2, 1, *GRID, dtype=torch.long)
    mask[:, :, 4:10, 8:20, 8:20] = 1
    joint_loss(out, mask, torch.tensor([0, 2])).backward()
    assert all(q.grad is not None for q in model.parameters())
    # the bottleneck tap is not a second registered copy of the bottleneck
    keys = model.state_dict().keys()
    assert len(keys) == len(set(id(t) for t in model.state_dict().values()))


@pytest.mark.parametrize(
    "name,options",
    [("std_net", {"temporal": t}) for t in TEMPORAL_MODES]
    + [("std_net", {"temporal_pool": 2, "temporal_scales": 3}), ("unet_channels", {})],
)
def test_missing_phase(name: str, options: dict) -> None:
    model = make(name, p=3, c=1, **options).eval()
    x = inputs(3, 1)
    present = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        full = model(x)
        same = model(x, torch.ones(2, 3, dtype=torch.bool))
        masked = model(x, present)
        x_changed = x.clone()
        x_changed[0, 1] = 10 * torch.randn_like(x_changed[0, 1])
        masked_changed = model(x_changed, present)
    assert torch.equal(full.logits, same.logits) and torch.equal(full.seg_logits, same.seg_logits)
    assert (masked.logits[0] - full.logits[0]).abs().max() > 1e-4
    assert (masked.seg_logits[0] - full.seg_logits[0]).abs().max() > 1e-4
    # sample 1 has every phase: its output must not depend on sample 0's mask
    torch.testing.assert_close(masked.logits[1], full.logits[1], atol=1e-5, rtol=0)
    # an absent phase's voxels never reach the output
    torch.testing.assert_close(masked_changed.logits, masked.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(masked_changed.seg_logits, masked.seg_logits, atol=1e-5, rtol=0)


def test_bad_phase_mask() -> None:
    model = make(p=3)
    with pytest.raises(ValueError, match="at least one present phase"):
        model(inputs(3), torch.tensor([[False, False, False], [True, True, True]]))
    with pytest.raises(ValueError, match="phase_mask must be"):
        model(inputs(3), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize(
    "temporal,invariant", [("mean", True), ("transformer", False), ("gru", False)]
)
def test_phase_order(temporal: str, invariant: bool) -> None:
    model = make(p=4, c=1, temporal=temporal).eval()
    x = inputs(4, 1)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a, b = model(x), model(x[:, perm])
    gap = max((a.logits - b.logits).abs().max(), (a.seg_logits - b.seg_logits).abs().max())
    if invariant:
        assert gap < 1e-5
    else:
        assert gap > 1e-4


def test_checkpointing_gives_the_same_gradients() -> None:
    x, mask, y = blob_batch(2)
    grads = []
    for flag in (False, True):
        model = make(p=2, checkpointing=flag)
        joint_loss(model(x), mask, y).backward()
        grads.append(torch.cat([q.grad.flatten() for q in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["std_net", "unet_channels"])
def test_loss_falls_and_dice_improves(name: str) -> None:
    model = make(name, p=2, c=1)
    x, mask, y = blob_batch(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, dices = [], []
    for _ in range(12):
        opt.zero_grad()
        out = model(x)
        loss = joint_loss(out, mask, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        dices.append(dice(out.seg_logits.detach(), mask))
    assert losses[-1] < 0.7 * losses[0]
    assert dices[-1] > dices[0] + 0.2 and dices[-1] > 0.5


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown option.*temporal_mode"):
        make(temporal_mode="gru")
    with pytest.raises(ValueError, match="unknown option.*depth"):
        make("unet_channels", depth=3)
    with pytest.raises(ValueError, match="temporal must be one of"):
        make(temporal="lstm")
    with pytest.raises(ValueError, match="heads=3 must divide"):
        make(heads=3)
    with pytest.raises(ValueError, match="temporal_scales"):
        make(temporal_scales=6)
    with pytest.raises(ValueError, match="divisible by 16"):
        make(p=3)(torch.randn(1, 3, 1, 16, 32, 24))


@pytest.mark.parametrize(
    ("name", "options", "multiple"), [("std_net", {"scales": 3}, 4), ("unet_channels", {}, 16)]
)
def test_a_crop_the_model_cannot_halve_is_a_config_error_before_training(
    name: str, options: dict, multiple: int
) -> None:
    """The trainer's check names the size (exit 2) instead of the first step's ValueError."""
    from liverphase.errors import ConfigError
    from liverphase.train.config import TrainConfig
    from liverphase.train.recipe import check_model_config

    net = make(name, **options)
    assert net.grid_multiple == multiple
    cfg = TrainConfig(model=name)
    check_model_config(net, cfg, spatial_size=(multiple, 2 * multiple, 32))
    with pytest.raises(ConfigError, match=f"divisible by {multiple}"):
        check_model_config(net, cfg, spatial_size=(multiple + 2, 32, 32))


def test_region_enhancement_reads_core_rim_and_surround() -> None:
    from liverphase.models.heads import REGION_SCALE, region_enhancement

    prob = torch.zeros(1, 1, 8, 16, 16)
    prob[..., 2:6, 4:12, 4:12] = 1.0
    x = torch.full((1, 2, 1, 8, 16, 16), 0.5)
    x[0, 1, 0, 2:6, 4:12, 4:12] = 0.6  # phase 1: rim +0.1 above the parenchyma
    x[0, 1, 0, 3:5, 5:11, 5:11] = 0.8  # core +0.3
    x[0, 1] += 0.05  # the whole phase brighter: only differences to its parenchyma count
    feats = region_enhancement(x, prob).view(2, 3)
    want = torch.tensor([[0.0, 0.0, -0.025], [0.3, 0.1, 0.025]]) * REGION_SCALE
    torch.testing.assert_close(feats, want, atol=1e-4, rtol=0)
    # an absent phase contributes zeros and leaves the others' parenchyma level alone
    absent = region_enhancement(x, prob, torch.tensor([[True, False]])).view(2, 3)
    torch.testing.assert_close(absent, torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("name", ["std_net", "unet_channels"])
def test_region_kinetics_head_adds_features_and_gets_gradients(name: str) -> None:
    kwargs = {"scales": 3} if name == "std_net" else {}
    plain = make(name, p=2, region_kinetics=False, **kwargs)
    model = make(name, p=2, region_kinetics=True, **kwargs)
    x = inputs(p=2)
    out = model(x)
    assert out.features.shape[1] == plain(x).features.shape[1] + 3 * 2 * 1
    out.logits.sum().backward()
    assert model.head.fc.weight.grad is not None and model.head.fc.weight.grad.abs().sum() > 0
    # the region reading depends on the input's intensities, not only on deep features
    model.eval()
    with torch.no_grad():
        a = model(x).features[:, -6:]
        b = model(x + 0.3 * (torch.arange(2).view(1, 2, 1, 1, 1, 1) == 1)).features[:, -6:]
    assert not torch.allclose(a, b)


def test_region_only_head_reads_the_mask_reading_and_nothing_deep() -> None:
    from liverphase.models.heads import LesionPooledHead, region_enhancement

    torch.manual_seed(0)
    head = LesionPooledHead(8, 2, True, 0.0, region_inputs=2, deep_features=False)
    x = torch.rand(2, 2, 1, 8, 16, 16)
    seg = torch.randn(2, 2, 8, 16, 16)
    deep_a, deep_b = torch.randn(2, 8, 2, 4, 4), torch.randn(2, 8, 2, 4, 4)
    feats_a, logits_a = head(deep_a, seg, x)
    feats_b, logits_b = head(deep_b, seg, x)
    assert feats_a.shape == (2, 6) and head.fc.in_features == 6
    torch.testing.assert_close(feats_a, region_enhancement(x, seg.softmax(1)[:, 1:2]))
    torch.testing.assert_close(logits_a, logits_b)  # deep features do not enter
    with pytest.raises(ValueError, match="region_kinetics"):
        LesionPooledHead(8, 2, True, 0.0, region_inputs=0, deep_features=False)


@pytest.mark.parametrize("name", ["std_net", "unet_channels"])
def test_region_only_head_trains_the_head_alone_from_the_class_loss(name: str) -> None:
    kwargs = {"scales": 3} if name == "std_net" else {}
    with pytest.raises(ValueError, match="region_kinetics"):
        make(name, p=2, deep_features=False, **kwargs)
    model = make(name, p=2, region_kinetics=True, deep_features=False, **kwargs)
    out = model(inputs(p=2))
    assert out.features.shape == (2, 3 * 2 * 1)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])).backward()
    assert model.head.fc.weight.grad.abs().sum() > 0
    # the probability is detached: the class loss reaches no weight outside the head
    others = [p.grad for n, p in model.named_parameters() if not n.startswith("head.")]
    assert all(g is None or not g.any() for g in others)
    # the segmentation is untouched by the head's choice of features
    full = make(name, p=2, region_kinetics=True, **kwargs)
    torch.testing.assert_close(full(inputs(p=2)).seg_logits, out.seg_logits)
