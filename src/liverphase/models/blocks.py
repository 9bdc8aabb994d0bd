"""Building blocks shared by every architecture: the residual block in 1D/2D/3D and checkpointing.

The residual block uses torchvision's parameter names (conv1, bn1, conv2, bn2, downsample.0/.1) so
torchvision, timm and MedicalNet ResNet weights map onto our encoders by key (see pretrained.py).
Also vector-level blocks: a per-vector channel gate, gated attention pooling over a bag (slices) and the
projection of several stages' pooled features into one vector (multi-scale features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    """The Conv class for 1, 2 or 3 spatial dimensions."""
    return _CONV[spatial_dims]


def norm_layer(spatial_dims: int) -> type[nn.Module]:
    """The BatchNorm class for 1, 2 or 3 spatial dimensions."""
    return _NORM[spatial_dims]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3-wide convolutions + identity or 1x1 projection shortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        conv, norm = conv_layer(spatial_dims), norm_layer(spatial_dims)
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                conv(in_planes, planes, 1, stride=stride, bias=False), norm(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(
    in_planes: int, planes: int, blocks: int, stride: int, spatial_dims: int
) -> nn.Sequential:
    """A ResNet stage: `blocks` basic blocks, the first one strided."""
    layers = [BasicBlock(in_planes, planes, stride, spatial_dims)]
    layers += [BasicBlock(planes, planes, 1, spatial_dims) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_resnet_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming (fan-out) convolutions, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def maybe_checkpoint(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, enabled: bool
) -> torch.Tensor:
    """Run fn(x), recomputing its activations in backward when enabled and gradients are on.

    Checkpointing re-runs BatchNorm forward during backward, so running statistics get one extra
    momentum update per step; batch statistics (what training uses) are unaffected.
    """
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def phase_mean(f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the phase axis (dim 1) of f (B, P, ...), over present phases only."""
    if mask is None:
        return f.mean(dim=1)
    w = mask.to(f.dtype).view(*mask.shape, *([1] * (f.ndim - 2)))
    return (f * w).sum(dim=1) / w.sum(dim=1)


class ChannelGate(nn.Module):
    """Squeeze-excitation-style gate on feature vectors: f (..., F) → sigmoid(MLP(f)) ⊙ f.

    The MLP is F → max(F // reduction, 8) → F with a ReLU between; a model keeps one gate per phase
    or sequence to re-weight shared features with that sequence's own channel preferences.
    """

    def __init__(self, features: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(features // reduction, 8)
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, features)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Gated features, same shape as f."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(f)))) * f


class GatedAttentionPool(nn.Module):
    """Gated attention MIL pooling (Ilse et al. 2018) over a bag axis: (N, S, F) → (N, F), (N, S).

    a_s = softmax_s(wᵀ(tanh(V h_s) ⊙ sigmoid(U h_s))); pooled = Σ_s a_s h_s.
    """

    def __init__(self, features: int, hidden: int = 64) -> None:
        super().__init__()
        self.V = nn.Linear(features, hidden)
        self.U = nn.Linear(features, hidden)
        self.w = nn.Linear(hidden, 1)

    def weights(self, h: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, S), summing to one over S."""
        scores = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        return scores.softmax(dim=-1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instances (N, S, F) → pooled (N, F), weights (N, S)."""
        a = self.weights(h)
        return torch.einsum("ns,nsf->nf", a, h), a


class MultiScaleProjection(nn.Module):
    """Pooled vectors of several encoder stages (N, C_i) → one feature (N, F).

    Each stage's vector gets its own linear projection to F and LayerNorm (deeper stages have other
    magnitudes; LayerNorm works per vector, so samples never mix), then the sum goes through a ReLU.
    """

    def __init__(self, in_channels: Sequence[int], out_features: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(c, out_features), nn.LayerNorm(out_features))
            for c in in_channels
        )
        self.out_features = out_features

    def forward(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """One (N, C_i) per stage, in the order of `in_channels` → (N, F)."""
        if len(pooled) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} pooled stages, got {len(pooled)}")
        return torch.relu(sum(p(v) for p, v in zip(self.proj, pooled, strict=True)))


def global_average(feature_map: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis: (N, C, *spatial) → (N, C)."""
    return feature_map.flatten(2).mean(dim=2)
