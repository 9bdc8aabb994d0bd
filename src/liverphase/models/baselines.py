"""The baselines MIFF+SPM is compared with, on the same multi-phase interface.

- `resnet2d_avg`: the paper's "Backbone": the shared 2D ResNet18 on every slice of every phase, the
  shared per-phase head on the slice vectors averaged over slices (X_phase), logits = mean over phases.
  Built from the same modules with the same names as `miff_spm`, so the two load each other's weights.
- `early_fusion`: phases × channels stacked as input channels of one small 3D ResNet (7³ stem + max-pool,
  four one-block stages 32–256 wide): the naive channel-wise fusion.
- `resnet3d18`, `densenet3d121`: MONAI's 3D ResNet18 / DenseNet121 with P·C input channels: the paper's
  3D comparison. Both use a stride-2 first convolution by default, the stem of `miff_spm` and
  `resnet2d_avg` (MONAI's ResNet defaults to stride 1; `stem_stride` sets it for every model).
  DenseNet's transition average-pools leave an axis already down to size 1 as it is, so inputs as
  small as 8 slices pass (the same results as MONAI's whenever every axis is still ≥ 2).
- `stic`: after Gao et al. 2021: the shared 2D ResNet18 per slice, slice vectors averaged per phase,
  a GRU over the phases in acquisition order, a linear head on its last hidden state.
Every model takes `pretrained` (a local weights file, see pretrained.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121, resnet18
from torch import nn
from torch.nn import functional as F

from liverphase.models.blocks import init_resnet_weights, make_stage
from liverphase.models.encoders import ResNet2d, SliceEncoder
from liverphase.models.heads import PhaseHeads
from liverphase.models.pretrained import load_pretrained
from liverphase.models.registry import ModelOutput, MultiPhaseModel, register_model
from liverphase.models.temporal import SequenceGRU


class _Baseline(MultiPhaseModel):
    """Shared constructor parts: validate the stem stride first, load pretrained weights last."""

    def __init__(
        self, num_classes: int, phases: Sequence[str], in_channels: int, stem_stride: int
    ) -> None:
        super().__init__(num_classes, phases, in_channels)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")

    def _load(self, pretrained: str | Path | None) -> None:
        if pretrained:
            load_pretrained(self, pretrained)


@register_model("resnet2d_avg", description="2D ResNet18 per slice and phase, logits averaged")
class ResNet2dAvg(_Baseline):
    """The paper's Backbone: per-phase 2D ResNet18 (shared), per-phase heads averaged."""

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        stem_stride: int = 2,
        pretrained: str | Path | None = None,
        checkpointing: bool = False,
        slice_chunk: int | None = None,
        shared_phase_heads: bool = True,
    ) -> None:
        super().__init__(num_classes, phases, in_channels, stem_stride)
        backbone = ResNet2d(in_channels, stem_stride)
        self.encoder = SliceEncoder(backbone, None, checkpointing, slice_chunk)
        self.phase_heads = PhaseHeads(
            backbone.out_channels, num_classes, len(self.phases), shared_phase_heads
        )
        self._load(pretrained)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, P, C, D, H, W) → mean of the per-phase logits."""
        self.check_input(x)
        v = self.encoder(x)  # (B, P, D, F)
        phase_logits = self.phase_heads(v.mean(dim=2))
        return ModelOutput(phase_logits.mean(dim=1), v.mean(dim=(1, 2)), phase_logits)


class _Volume3d(_Baseline):
    """A 3D network on the phases stacked as channels: (B, P·C, D, H, W) → features → logits."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, P, C, D, H, W) → logits from the channel-stacked volume."""
        self.check_input(x)
        features = self.features(x.flatten(1, 2))
        return ModelOutput(logits=self.classify(features), features=features)

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, P·C, D, H, W) → (B, F)."""
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) → (B, K)."""
        return self.head(features)


@register_model("early_fusion", description="phases stacked as channels of one small 3D CNN")
class EarlyFusion3d(_Volume3d):
    """Naive channel-wise fusion: one small 3D ResNet over the phase-stacked volume."""

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        stem_stride: int = 2,
        widths: Sequence[int] = (32, 64, 128, 256),
        pretrained: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes, phases, in_channels, stem_stride)
        channels = len(self.phases) * in_channels
        self.stem = nn.Sequential(
            nn.Conv3d(channels, widths[0], 7, stride=stem_stride, padding=3, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages, in_planes = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(make_stage(in_planes, w, 1, stride=1 if i == 0 else 2, spatial_dims=3))
            in_planes = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)
        init_resnet_weights(self)
        self._load(pretrained)

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """Stem → stages → global average pool."""
        return self.stages(self.stem(volume)).mean(dim=(2, 3, 4))


@register_model("resnet3d18", description="MONAI 3D ResNet18, phases x windows as channels")
class ResNet3d18(_Volume3d):
    """MONAI's 3D ResNet18 on the phase-stacked volume (stride-2 stem by default)."""

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        stem_stride: int = 2,
        shortcut_type: str = "B",
        pretrained: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes, phases, in_channels, stem_stride)
        self.net = resnet18(
            spatial_dims=3,
            n_input_channels=len(self.phases) * in_channels,
            conv1_t_size=7,
            conv1_t_stride=stem_stride,
            shortcut_type=shortcut_type,
            feed_forward=False,
        )
        self.head = nn.Linear(512, num_classes)
        self._load(pretrained)

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """MONAI ResNet without its fc: (B, 512)."""
        return self.net(volume)


class _HalvingPool(nn.Module):
    """DenseNet's transition pool (2³ average, stride 2) that leaves a size-1 axis as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool by 2 along every axis longer than 1."""
        k = [min(2, n) for n in x.shape[2:]]
        return F.avg_pool3d(x, kernel_size=k, stride=k)


@register_model("densenet3d121", description="MONAI 3D DenseNet121, phases x windows as channels")
class DenseNet3d121(_Volume3d):
    """MONAI's 3D DenseNet121 on the phase-stacked volume (stride-2 stem + max-pool)."""

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        stem_stride: int = 2,
        pretrained: str | Path | None = None,
    ) -> None:
        super().__init__(num_classes, phases, in_channels, stem_stride)
        self.net = DenseNet121(
            spatial_dims=3, in_channels=len(self.phases) * in_channels, out_channels=num_classes
        )
        self.net.features.conv0.stride = (stem_stride,) * 3
        for m in self.net.features.modules():
            if isinstance(getattr(m, "pool", None), nn.AvgPool3d):
                m.pool = _HalvingPool()
        self._load(pretrained)

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """Dense blocks → ReLU → global average pool: (B, 1024)."""
        layers = self.net.class_layers
        return layers.flatten(layers.pool(layers.relu(self.net.features(volume))))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """MONAI's own output layer."""
        return self.net.class_layers.out(features)


@register_model("stic", description="2D ResNet18 per slice, slices averaged, GRU over phases")
class Stic(_Baseline):
    """After Gao et al. 2021 (STIC): a per-phase 2D CNN encoder and a GRU over the phases."""

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        stem_stride: int = 2,
        hidden: int = 256,
        pretrained: str | Path | None = None,
        checkpointing: bool = False,
        slice_chunk: int | None = None,
    ) -> None:
        super().__init__(num_classes, phases, in_channels, stem_stride)
        backbone = ResNet2d(in_channels, stem_stride)
        self.encoder = SliceEncoder(backbone, None, checkpointing, slice_chunk)
        self.gru = SequenceGRU(backbone.out_channels, hidden, pool="last")
        self.head = nn.Linear(hidden, num_classes)
        self._load(pretrained)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """x (B, P, C, D, H, W) → GRU over the slice-averaged phase vectors → logits."""
        self.check_input(x)
        features = self.gru(self.encoder(x).mean(dim=2))
        return ModelOutput(logits=self.head(features), features=features)
