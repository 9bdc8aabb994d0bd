"""Classifier heads: per-phase heads, the multi-task mix of MIFF+SPM's outputs, and the
lesion-pooled head of the segmenting models (with an optional region-enhancement reading)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from liverphase.models.blocks import phase_mean

# Input intensities are windowed to ~[0, 1] (400 HU wide for the first CT window), so lesion-liver
# differences of 10-40 HU are 0.02-0.1: scaled to order one before the linear layer.
REGION_SCALE = 10.0


class PhaseHeads(nn.Module):
    """Per-phase linear classifiers on phase vectors (B, P, F) → per-phase logits (B, P, K).

    `shared=True` (default) applies one linear layer to every phase, so averaging the per-phase logits
    does not depend on the phase order (the "Backbone" baseline's symmetry); `shared=False` gives each
    phase its own layer.
    """

    def __init__(self, in_features: int, num_classes: int, num_phases: int, shared: bool = True):
        super().__init__()
        count = 1 if shared else num_phases
        self.heads = nn.ModuleList(nn.Linear(in_features, num_classes) for _ in range(count))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Phase vectors (B, P, F) → logits (B, P, K)."""
        if len(self.heads) == 1:
            return self.heads[0](v)
        if v.shape[1] != len(self.heads):
            raise ValueError(f"built for {len(self.heads)} phases, got {v.shape[1]}")
        return torch.stack([head(v[:, i]) for i, head in enumerate(self.heads)], dim=1)


def mix_logits(fused: torch.Tensor, phase_logits: torch.Tensor, mtl_lambda: float) -> torch.Tensor:
    """(1 − λ)·X_f + λ·mean_P(X_phase): the prediction the paper's Eq. 2 trains."""
    return (1.0 - mtl_lambda) * fused + mtl_lambda * phase_logits.mean(dim=1)


def region_enhancement(
    x: torch.Tensor, prob: torch.Tensor, phase_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean input intensity of lesion core, lesion rim and the parenchyma around it, per phase and
    channel, read through a (soft) lesion probability: (B, P, C, D, H, W), (B, 1, D, H, W) → (B, 3·P·C).

    What a radiologist reads off ROIs: core = soft erosion of the probability (3³ min-pool), rim =
    probability − core, around = 5³ max-pool (soft dilation) − probability. Returned relative to the
    surrounding parenchyma of the same phase (core − around, rim − around), with the around level
    itself relative to its mean over phases, all × REGION_SCALE; absent phases give zeros.
    """
    core = -F.max_pool3d(-prob, 3, stride=1, padding=1)
    regions = torch.cat(
        [core, (prob - core).clamp_min(0), (F.max_pool3d(prob, 5, stride=1, padding=2) - prob)], 1
    )  # (B, 3, D, H, W)
    w = regions / (regions.sum(dim=(2, 3, 4), keepdim=True) + 1e-6)
    means = torch.einsum("bpcdhw,brdhw->bprc", x, w)  # (B, P, 3, C)
    around = means[:, :, 2:3]
    level = phase_mean(around, phase_mask).unsqueeze(1)
    feats = torch.cat([means[:, :, :2] - around, around - level], dim=2) * REGION_SCALE
    if phase_mask is not None:
        feats = feats * phase_mask.to(feats.dtype)[..., None, None]
    return feats.flatten(1)


class LesionPooledHead(nn.Module):
    """Global-average and lesion-probability-weighted pooling of deep features → features, logits.

    `region_inputs` = P·C (0 = off) adds `region_enhancement` of the model's input read through the
    predicted lesion probability to the features: the ROI means behind the classical kinetics
    baseline. Measured on the 80-case cohort it did not raise std_net's AUC
    (benchmarks/results/cv_std80/select_dice30). `deep_features=False` leaves the deep features out,
    so the class is read from the region means alone (a logistic regression on the model's own mask
    reading, trained jointly): a few dozen features instead of hundreds, for cohorts too small for the
    deep ones (benchmarks/results/cv_std240).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        lesion_pool: bool,
        dropout: float,
        region_inputs: int = 0,
        deep_features: bool = True,
    ):
        super().__init__()
        if not deep_features and not region_inputs:
            raise ValueError(
                "deep_features=False needs region_kinetics: the head would read nothing"
            )
        self.lesion_pool = lesion_pool
        self.region_inputs = region_inputs
        self.deep_features = deep_features
        deep = channels * (2 if lesion_pool else 1) if deep_features else 0
        self.out_features = deep + 3 * region_inputs
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.out_features, num_classes)

    def forward(
        self,
        deep: torch.Tensor,
        seg_logits: torch.Tensor,
        x: torch.Tensor | None = None,
        phase_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deep (B, C, d, h, w), seg logits (B, 2, D, H, W) [, input x (B, P, C, D, H, W) and
        presence (B, P) for the region reading] → features (B, F), logits (B, K)."""
        pooled = [deep.mean(dim=(2, 3, 4))] if self.deep_features else []
        # detached: the class loss must not bend the mask toward what helps classification
        prob = seg_logits.detach().softmax(dim=1)[:, 1:2]
        if self.lesion_pool and self.deep_features:
            w = F.adaptive_avg_pool3d(prob, deep.shape[2:])
            w = w / (w.sum(dim=(2, 3, 4), keepdim=True) + 1e-6)
            pooled.append((deep * w).sum(dim=(2, 3, 4)))
        if self.region_inputs:
            if x is None:
                raise ValueError("region_enhancement needs the model input x")
            pooled.append(region_enhancement(x.float(), prob.float(), phase_mask).to(deep.dtype))
        features = torch.cat(pooled, dim=1)
        return features, self.fc(self.dropout(features))
