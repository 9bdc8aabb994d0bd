"""Classifier heads: per-phase heads and the multi-task mix of MIFF+SPM's outputs."""

from __future__ import annotations

import torch
from torch import nn


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
