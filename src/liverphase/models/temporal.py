"""Sequence modules: a GRU over a sequence (slices or phases), and the slice-wise SPM of MIFF+SPM.

`SpatioTemporalModule` is the paper's spatio-temporal prediction module: the phase vectors of each slice
concatenated (B, D, P·F), a 1D residual network along the slice axis, then a GRU over slices. Choices:
- the residual network is two basic blocks with 3-wide Conv1d (the first one projects P·F → hidden with
  a 1×1 shortcut), stride 1 so every slice reaches the GRU;
- one unidirectional GRU layer; its outputs are averaged over slices by default (`pool="mean"`): the
  last hidden state alone would weigh the final slices of the crop most, and the crop's slice order
  (head to foot) carries no meaning; `pool="last"` gives the last hidden state.
"""

from __future__ import annotations

import torch
from torch import nn

from liverphase.models.blocks import BasicBlock


class SequenceGRU(nn.Module):
    """A GRU over (B, T, F) pooled to (B, hidden): mean of its outputs or its last hidden state."""

    def __init__(self, in_features: int, hidden: int = 256, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "last"):
            raise ValueError(f"pool must be 'mean' or 'last', got {pool!r}")
        self.gru = nn.GRU(in_features, hidden, batch_first=True)
        self.pool = pool
        self.out_features = hidden

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Sequence (B, T, F) → (B, hidden)."""
        out, last = self.gru(seq)
        return out.mean(dim=1) if self.pool == "mean" else last[-1]


class SpatioTemporalModule(nn.Module):
    """SPM: 1D residual network along slices, then a GRU over slices."""

    def __init__(self, in_features: int, hidden: int = 256, blocks: int = 2, pool: str = "mean"):
        super().__init__()
        layers = [BasicBlock(in_features, hidden, 1, spatial_dims=1)]
        layers += [BasicBlock(hidden, hidden, 1, spatial_dims=1) for _ in range(blocks - 1)]
        self.resnet = nn.Sequential(*layers)
        self.gru = SequenceGRU(hidden, hidden, pool)
        self.out_features = hidden

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Per-slice vectors (B, D, P·F) → (B, hidden)."""
        h = self.resnet(seq.transpose(1, 2)).transpose(1, 2)
        return self.gru(h)
