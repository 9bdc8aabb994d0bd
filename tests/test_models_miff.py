"""MIFF+SPM: Eq. 1 on known tensors, the ablation equivalence with the Backbone, phase/slice order."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from liverphase.models import create_model
from liverphase.models.fusion import InteractivePerception
from liverphase.phases import CT_PHASES

PHASES = list(CT_PHASES)


def batch(b: int = 2, p: int = 4, c: int = 3, d: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed random batch (B, P, C, D, 32, 32); the 2D models here take any D."""
    return torch.randn(b, p, c, d, 32, 32, generator=torch.Generator().manual_seed(seed))


def warm_up_norms(model: torch.nn.Module, x: torch.Tensor) -> None:
    """A few train-mode passes so BatchNorm running statistics are not the trivial 0/1."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    model.eval()


def test_interactive_perception_is_eq1_on_the_ct_ring():
    torch.manual_seed(0)
    fusion = InteractivePerception(16, PHASES)
    theta = torch.randn(3, 4, 16, 5, 5)
    weights = [fusion.cbam[j](theta[:, j]) for j in range(4)]  # (W_C^j, W_S^j)
    # NC by ART and DL, ART by NC and PV, PV by ART and DL, DL by PV and NC.
    ring = {0: (1, 3), 1: (0, 2), 2: (1, 3), 3: (2, 0)}
    expected = torch.stack(
        [
            sum(theta[:, i] * weights[j][0] + theta[:, i] * weights[j][1] for j in ring[i])
            for i in range(4)
        ],
        dim=1,
    )
    assert torch.allclose(fusion(theta), expected, atol=1e-6)


def test_interactive_perception_with_two_and_three_phases():
    torch.manual_seed(0)
    two = InteractivePerception(8, ["ART", "PV"])
    theta = torch.randn(2, 2, 8, 4, 4)
    wc, ws = two.cbam[1](theta[:, 1])  # both neighbours of ART are PV
    assert torch.allclose(two(theta)[:, 0], 2 * (theta[:, 0] * wc + theta[:, 0] * ws), atol=1e-6)
    three = InteractivePerception(8, ["NC", "ART", "PV"])
    theta = torch.randn(2, 3, 8, 4, 4)
    w = [sum(three.cbam[j](theta[:, j])) for j in range(3)]  # W_C^j + W_S^j, broadcast
    assert torch.allclose(three(theta)[:, 1], theta[:, 1] * (w[0] + w[2]), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 phases"):
        InteractivePerception(8, ["PV"])


def test_ablated_miff_spm_computes_the_backbone():
    torch.manual_seed(0)
    backbone = create_model("resnet2d_avg", num_classes=3, phases=PHASES)
    x = batch()
    warm_up_norms(backbone, x)
    ablated = create_model(
        "miff_spm", num_classes=3, phases=PHASES, miff=False, spm=False, mtl_lambda=1.0
    ).eval()
    with torch.no_grad():
        before = ablated(x).logits
        result = ablated.load_state_dict(backbone.state_dict(), strict=False)
        assert result.unexpected_keys == []
        assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
        a, b = backbone(x), ablated(x)
    assert not torch.allclose(before, a.logits, atol=1e-3)  # the weights made the difference
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.phase_logits, b.phase_logits, atol=1e-5)
    assert torch.allclose(a.features, b.features, atol=1e-5)


def test_phase_order_matters_to_miff_spm_not_to_the_backbone():
    torch.manual_seed(0)
    x, perm = batch(), [2, 0, 3, 1]
    for name, invariant in (("resnet2d_avg", True), ("miff_spm", False)):
        model = create_model(name, num_classes=2, phases=PHASES).eval()
        with torch.no_grad():
            a, b = model(x).logits, model(x[:, perm]).logits
        assert torch.allclose(a, b, atol=1e-5) is invariant, name


def test_shared_miff_follows_the_ring():
    """With shared CBAM and no SPM, rotating the ring keeps the output; breaking it does not."""
    torch.manual_seed(0)
    model = create_model(
        "miff_spm", num_classes=2, phases=PHASES, spm=False, mtl_lambda=1.0, shared_cbam=True
    ).eval()
    x = batch()
    with torch.no_grad():
        base = model(x).logits
        rotated = model(x[:, [1, 2, 3, 0]]).logits
        broken = model(x[:, [0, 2, 1, 3]]).logits
    assert torch.allclose(base, rotated, atol=1e-5)
    assert not torch.allclose(base, broken, atol=1e-4)


def test_spm_reads_the_slice_order_and_the_mean_head_does_not():
    torch.manual_seed(0)
    x = batch()
    flipped = x.flip(3)
    for spm, invariant in ((True, False), (False, True)):
        model = create_model("miff_spm", num_classes=2, phases=PHASES, spm=spm).eval()
        with torch.no_grad():
            same = torch.allclose(model(x).logits, model(flipped).logits, atol=1e-5)
        assert same is invariant, spm


def test_logits_mix_fused_and_phase_predictions():
    torch.manual_seed(0)
    model = create_model("miff_spm", num_classes=2, phases=PHASES[:3], mtl_lambda=0.3).eval()
    with torch.no_grad():
        out = model(batch(p=3))
        fused = model.head(out.features)
    assert torch.allclose(out.logits, 0.7 * fused + 0.3 * out.phase_logits.mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="mtl_lambda"):
        create_model("miff_spm", num_classes=2, phases=PHASES, mtl_lambda=1.5)


def test_slice_chunks_and_checkpointing_change_memory_not_results():
    torch.manual_seed(0)
    plain = create_model("miff_spm", num_classes=2, phases=PHASES[:2], in_channels=1)
    x, y = batch(p=2, c=1), torch.tensor([0, 1])
    # Eval: chunks of 3 slices (not a divisor of B·D = 16) give the same output.
    chunked = create_model(
        "miff_spm", num_classes=2, phases=PHASES[:2], in_channels=1, slice_chunk=3
    )
    warm_up_norms(plain, x)
    chunked.load_state_dict(plain.state_dict())
    chunked.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, chunked(x).logits, atol=1e-5)
    # Train: checkpointing recomputes in backward and gives the same loss and gradients.
    ckpt = create_model(
        "miff_spm", num_classes=2, phases=PHASES[:2], in_channels=1, checkpointing=True
    )
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for model in (plain.train(), ckpt.train()):
        loss = F.cross_entropy(model(x).logits, y)
        loss.backward()
        grads.append((loss.item(), model.encoder.backbone.conv1.weight.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
