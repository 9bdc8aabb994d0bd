"""Cross-phase fusion: CBAM attention weights and the MIFF interactive perception mechanism.

`InteractivePerception` implements Eq. 1 of the four-phase CT paper: for each phase i with ring
neighbours j (NC↔ART↔PV↔DL↔NC for the four CT phases, `liverphase.phases.neighbour_phases`),

    Θ_out_i = Σ_j (Θ_i ⊗ W_C^j + Θ_i ⊗ W_S^j) = Θ_i ⊗ Σ_j (W_C^j + W_S^j)

where W_C^j (N, C, 1, 1) and W_S^j (N, 1, h, w) are the CBAM channel and spatial weights computed from
phase j's own features. Choices where the paper leaves room:
- Each phase has its own CBAM module by default (`shared=False`): "computed per phase" and the phases'
  contrast patterns differ; `shared=True` uses one module for all phases.
- With two phases both ring neighbours are the other phase, so its weights count twice (a constant
  factor the next BatchNorm absorbs); three or more phases form a ring.
- No residual term is added: Eq. 1 replaces Θ. The next stage starts with a projection shortcut +
  BatchNorm, and after the last stage the features are only average-pooled, so the scale is harmless.
- The channel MLP has reduction 16 (CBAM's default) with biases, the spatial branch is a bias-free
  7×7 convolution without BatchNorm, as the paper's description (conv → sigmoid) reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from liverphase.phases import neighbour_phases


class ChannelAttention(nn.Module):
    """CBAM channel weights: sigmoid(MLP(avg-pool) + MLP(max-pool)), shape (N, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, h, w) → channel weights (N, C, 1, 1) in (0, 1)."""
        avg = self.mlp(x.mean(dim=(2, 3)))
        mx = self.mlp(x.amax(dim=(2, 3)))
        return torch.sigmoid(avg + mx)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM spatial weights: sigmoid(conv7×7([mean_c, max_c])), shape (N, 1, h, w)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, C, h, w) → spatial weights (N, 1, h, w) in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAMWeights(nn.Module):
    """Both CBAM weight maps of one feature map: (W_C, W_S)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature map (N, C, h, w) → (W_C (N, C, 1, 1), W_S (N, 1, h, w))."""
        return self.channel(x), self.spatial(x)


class InteractivePerception(nn.Module):
    """MIFF (Eq. 1): each phase's features re-weighted by its ring neighbours' CBAM weights."""

    def __init__(
        self, channels: int, phases: Sequence[str], shared: bool = False, reduction: int = 16
    ) -> None:
        super().__init__()
        names = list(phases)
        if len(names) < 2:
            raise ValueError(f"interactive perception needs at least 2 phases, got {names}")
        ring = neighbour_phases(names)
        index = {name: i for i, name in enumerate(names)}
        left = [index[ring[name][0]] for name in names]
        right = [index[ring[name][1]] for name in names]
        # Index buffers, not parameters: the neighbour structure follows from the phase list.
        self.register_buffer("left", torch.tensor(left), persistent=False)
        self.register_buffer("right", torch.tensor(right), persistent=False)
        count = 1 if shared else len(names)
        self.cbam = nn.ModuleList(CBAMWeights(channels, reduction) for _ in range(count))

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CBAM weights of every phase: W_C (N, P, C, 1, 1), W_S (N, P, 1, h, w)."""
        p = x.shape[1]
        if len(self.cbam) == 1:
            wc, ws = self.cbam[0](x.flatten(0, 1))
            return wc.unflatten(0, (-1, p)), ws.unflatten(0, (-1, p))
        pairs = [self.cbam[i](x[:, i]) for i in range(p)]
        return torch.stack([w for w, _ in pairs], 1), torch.stack([s for _, s in pairs], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, P, C, h, w) → fused features of the same shape."""
        if x.shape[1] != self.left.numel():
            raise ValueError(f"built for {self.left.numel()} phases, got {x.shape[1]}")
        wc, ws = self.weights(x)
        # Summing the neighbours' weights first keeps every saved-for-backward tensor but Θ small
        # (a full-size Θ ⊗ (ΣW_C + ΣW_S) gate would be stored per stage).
        return x * (wc[:, self.left] + wc[:, self.right]) + x * (
            ws[:, self.left] + ws[:, self.right]
        )
