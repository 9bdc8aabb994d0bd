"""Training losses: the multi-task loss of MIFF+SPM (Eq. 2) and the joint segmentation + class loss.

Eq. 2 of the four-phase CT paper trains the mix of the fused prediction and the single-phase ones:

    L = CE((1 − λ)·X_f + λ·mean_P(X_phase), y)

The models apply that mix in forward (`models.heads.mix_logits`), so `ModelOutput.logits` already is
(1 − λ)·X_f + λ·mean_P(X_phase) and the loss is cross-entropy on the logits. Keeping the mix in the
model means training and inference use the same prediction; for models without per-phase heads the
same call is plain cross-entropy, so one loss serves every classifier.
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch.nn import functional as F

from liverphase.models.registry import ModelOutput


def multitask_loss(
    output: ModelOutput,
    target: torch.Tensor,
    mtl_lambda: float | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 2: cross-entropy of (1 − λ)·X_f + λ·mean_P(X_phase), which `output.logits` holds.

    `mtl_lambda` is the λ the model was built with, accepted for the record and checked to lie in
    [0, 1]; the model has already applied it, so it does not enter the computation again. `class_weights` (K,) weights each sample's term by its class, normalised by the sum
    of the weights, as `torch.nn.functional.cross_entropy` does.
    """
    if mtl_lambda is not None and not 0.0 <= mtl_lambda <= 1.0:
        raise ValueError(f"mtl_lambda must lie in [0, 1], got {mtl_lambda}")
    weight = None if class_weights is None else class_weights.to(output.logits)
    return F.cross_entropy(output.logits, target.long(), weight=weight)


def joint_seg_cls_loss(
    output: ModelOutput,
    target: torch.Tensor,
    mask: torch.Tensor,
    seg_weight: float = 1.0,
    cls_weight: float = 1.0,
) -> torch.Tensor:
    """seg_weight·DiceCE(seg_logits, mask) + cls_weight·CE(logits, target).

    `seg_logits` is (B, S, D, H, W): S ≥ 2 classes take a softmax against the one-hot mask, S = 1 a
    sigmoid against the binary mask. `mask` is (B, D, H, W) or (B, 1, D, H, W) of label indices.
    """
    if output.seg_logits is None:
        raise ValueError("joint_seg_cls_loss needs a model that segments (seg_logits is None)")
    seg = output.seg_logits
    if mask.ndim == seg.ndim - 1:
        mask = mask.unsqueeze(1)
    multiclass = seg.shape[1] > 1
    dice_ce = DiceCELoss(to_onehot_y=multiclass, softmax=multiclass, sigmoid=not multiclass)
    seg_loss = dice_ce(seg, mask.to(seg.dtype))
    return seg_weight * seg_loss + cls_weight * F.cross_entropy(output.logits, target.long())


def training_loss(
    output: ModelOutput,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    seg_weight: float = 1.0,
    cls_weight: float = 1.0,
    mtl_lambda: float | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The trainer's loss: the joint loss when the model segments and a mask is given, else Eq. 2."""
    if output.seg_logits is not None and mask is not None:
        return joint_seg_cls_loss(output, target, mask, seg_weight, cls_weight)
    return multitask_loss(output, target, mtl_lambda, class_weights=class_weights)
