"""Losses: Eq. 2's multi-task loss against a hand computation, and the joint segmentation loss."""

from __future__ import annotations

import math

import pytest
import torch

from liverphase.models.heads import mix_logits
from liverphase.models.registry import ModelOutput
from liverphase.train.losses import joint_seg_cls_loss, multitask_loss


def test_multitask_loss_is_cross_entropy_of_the_mixed_prediction():
    x_f = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])
    x_phase = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]],
            [[0.0, 2.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
            [[0.0, 0.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    )
    y = torch.tensor([0, 1, 1])
    lam = 0.25
    out = ModelOutput(logits=mix_logits(x_f, x_phase, lam), features=x_f, phase_logits=x_phase)
    # By hand: sample 0 mixes to 0.75·(2, −1) + 0.25·(1, 0.5) = (1.75, −0.625), and so on.
    nll = []
    for i in range(3):
        z = [(1 - lam) * x_f[i, k].item() + lam * x_phase[i, :, k].mean().item() for k in (0, 1)]
        nll.append(math.log(math.exp(z[0]) + math.exp(z[1])) - z[y[i]])
    assert out.logits[0].tolist() == pytest.approx([1.75, -0.625])
    assert multitask_loss(out, y, lam).item() == pytest.approx(sum(nll) / 3, rel=1e-6)
    weights = torch.tensor([1.0, 3.0])
    expected = sum(weights[y[i]].item() * nll[i] for i in range(3)) / weights[y].sum().item()
    got = multitask_loss(out, y, lam, class_weights=weights).item()
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="mtl_lambda"):
        multitask_loss(out, y, 1.5)


def test_joint_loss_adds_dice_ce_and_classification():
    mask = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    mask[:, 1:3, 2:6, 2:6] = 1
    logits = torch.tensor([[3.0, -3.0], [-3.0, 3.0]])
    y = torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(logits, y).item()
    perfect = 20.0 * torch.stack([1.0 - mask.float(), mask.float()], 1) - 10.0  # ±10 logits
    wrong = perfect.flip(1)

    def loss(seg, **kw):
        return joint_seg_cls_loss(ModelOutput(logits, logits, seg_logits=seg), y, mask, **kw)

    assert loss(perfect, seg_weight=0.0).item() == pytest.approx(ce, rel=1e-6)
    assert loss(perfect).item() == pytest.approx(ce, abs=1e-3)  # Dice and CE of the mask vanish
    assert loss(wrong).item() > ce + 1.5  # Dice ≈ 1 and CE ≈ 20 on a wrong mask
    sigmoid = 20.0 * mask[:, None].float() - 10.0  # one channel: sigmoid against the binary mask
    assert loss(sigmoid, cls_weight=0.0).item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="segments"):
        joint_seg_cls_loss(ModelOutput(logits, logits), y, mask)
