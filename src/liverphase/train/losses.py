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
    loss: str = "ce",
) -> torch.Tensor:
    """The trainer's loss: the joint loss when the model segments and a mask is given, else Eq. 2;
    `loss="coral"` replaces the cross-entropy of a classifier by CORAL's ordinal loss on the same
    logits (ordered classes: a two-stage error costs more than a one-stage error)."""
    if output.seg_logits is not None and mask is not None:
        return joint_seg_cls_loss(output, target, mask, seg_weight, cls_weight)
    if loss == "coral":
        return coral_loss_from_logits(output.logits, target)
    if loss != "ce":
        raise ValueError(f"loss must be 'ce' or 'coral', got {loss!r}")
    return multitask_loss(output, target, mtl_lambda, class_weights=class_weights)


# ---------------------------------------------------------------- ordinal (CORAL) loss
# CORAL (Cao, Mirjalili & Raschka 2020) trains K − 1 binary tasks "is y > k?". Reading any
# classifier's K logits as an ordinal model gives those tasks' probabilities without a new head:
# P(y > k) = Σ_{j>k} softmax(logits)_j, so the loss rewards getting the stage order right, and a
# prediction two stages off fails two tasks where one stage off fails one.


def ordinal_levels(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K − 1) float levels 1(y > k) for k = 0..K−2 (coral_pytorch's extended binary labels)."""
    t = target.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"targets must lie in 0..{num_classes - 1}")
    ks = torch.arange(num_classes - 1, device=t.device)
    return (t.unsqueeze(1) > ks).float()


def cumulative_log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P(y > k), log P(y ≤ k)), each (B, K − 1), from class logits, stably (log-sum-exp)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"need logits (B, K) with K ≥ 2, got {tuple(logits.shape)}")
    total = torch.logsumexp(logits, dim=1, keepdim=True)
    below = torch.logcumsumexp(logits, dim=1)  # log Σ_{j≤k}
    above = torch.logcumsumexp(logits.flip(1), dim=1).flip(1)  # log Σ_{j≥k}
    return above[:, 1:] - total, below[:, :-1] - total


def coral_loss_from_logits(
    logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """CORAL loss of class logits: −Σ_k [1(y>k)·log P(y>k) + 1(y≤k)·log P(y≤k)], mean over the batch.

    P(y > k) = Σ_{j>k} softmax(logits)_j. Logits that are log class probabilities (a
    cumulative-link head's output) give the same loss, since softmax leaves them unchanged. Equals
    `coral_pytorch.losses.coral_loss(log P(y>k) − log P(y≤k), levels)`: summed over the K − 1
    tasks, averaged over the batch. `reduction` is "mean", "sum" or "none" (per-sample (B,)).
    """
    log_gt, log_le = cumulative_log_probs(logits)
    above = ordinal_levels(target, logits.shape[1]).bool()
    # where, not levels·a + (1 − levels)·b: a log-probability head may hold −inf for an empty
    # class, and 0·(−inf) would turn the unselected term into NaN.
    per_sample = -torch.where(above, log_gt, log_le).sum(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
