"""STD-Net: joint lesion segmentation and characterisation by spatio-temporal decoupling.

After Zhu et al. 2025 (full text not at hand: built from its description; every choice below is ours).
Pipeline for x (B, P, C, D, H, W) with D, H, W divisible by 2^(scales − 1):

1. Spatial: one shared 3D U-Net-style encoder runs on every phase ON ITS OWN (phases folded into the
   batch, (B·P, C, D, H, W)), so breathing shifts and misalignment between phases never mix with the
   contrast dynamics inside a convolution. `scales` (default 5) levels, widths base·2^k
   (16-32-64-128-256), nnU-Net style with MONAI blocks: a one-convolution stem at full resolution
   (3³ conv, instance norm, leaky ReLU: the full grid over B·P volumes is the costliest place of the
   network, so it gets one conv, not two), then one `UnetResBlock` per level (stride-2 3³ conv, 3³
   conv, 1×1×1 strided projection shortcut, instance norm, leaky ReLU). Instance norm is per phase
   volume, so every phase is normalised on its own statistics (phases differ strongly in brightness).
2. Temporal, at the `temporal_scales` deepest levels (default 2): at each spatial location the P phase
   features are P tokens. `temporal="transformer"`: a learned phase embedding per position of the
   model's phase list (`nn.Embedding`, std 0.02 as in ViT) is added, then `layers` pre-norm
   `nn.TransformerEncoderLayer`s (`heads` heads, feed-forward 4·C, GELU) attend across phases only;
   spatial context comes from the encoder's receptive field, which is large at these depths.
   `temporal="gru"`: a bidirectional GRU over the phases in acquisition order (order is its position
   code, so no embedding), projected back to C and added to the tokens (residual).
   `temporal_pool=k` (default 1: at the two deepest levels the grid is small) average-pools the grid
   by k before the sequence model; what the sequence model adds to the tokens (output − input) is
   trilinearly upsampled and added to the full-resolution phase features, so pooling coarsens only the
   temporal correction, never the spatial detail. With k = 1 the refined tokens are the outputs.
   Fusion = the mean of the refined tokens over the present phases: the attention has already mixed
   the phases, the mean keeps the fused features on the scale of the mean-fused shallow skips, and
   it takes a missing phase without a learned query that never saw one missing.
   Ablations (the naive fusions): `temporal="mean"` averages the phase features (embedding-free, so it
   is invariant to the order of the phases); `temporal="concat"` concatenates phases along channels and
   applies a 1×1×1 conv back to C.
   Shallower levels fuse by the mean over present phases whatever `temporal` is, so the ablations
   differ only in the temporal module.
3. Decoder: MONAI `UnetrUpBlock`s (2³ transposed conv, concat skip, residual 3³ block, instance norm)
   from the deepest fused features up through the fused skips, then a 1×1×1 conv → `seg_logits`
   (B, 2, D, H, W) (background, lesion; softmax, the layout `train.losses.joint_seg_cls_loss` takes).
4. Classification: the deepest fused features pooled twice — global average, and weighted by the
   predicted lesion probability (softmax channel 1, area-averaged onto the deepest grid, weights summing
   to 1) — concatenated into `features` (B, 2·C_deep), dropout, linear → `logits` (B, K).
   `lesion_pool=False` keeps the global average only. The probability is detached there, so the class
   loss cannot bend the mask toward what helps classification; the mask is learned from the Dice+CE
   term alone. `phase_logits` is None. `region_kinetics=True` (ours, off by default) also reads the
   model's own input through that probability: mean intensity of lesion core, rim and surrounding
   parenchyma per phase and window (`models.heads.region_enhancement`), appended to the features —
   the ROI reading of a radiologist and of the kinetics baseline, given to the head rather than
   learned from a few dozen cases. `deep_features=False` (with `region_kinetics=True`) keeps only
   that reading: the class becomes a linear read of lesion-vs-parenchyma enhancement per phase
   through the model's own mask, and the class loss then trains the head alone (the probability is
   detached), so segmentation and characterisation share the mask, not the gradients.
   `region_reading="radial"` (ours) reads the lesion in three bands of its normalised radius (centre,
   middle, outer; `heads.lesion_radius`) instead of core and a one-voxel rim: the central region that
   separates a cholangiocarcinoma's delayed central enhancement from a homogeneous HCC, cut
   relative to the predicted mask's own size so that its boundary errors shift the bands rather than
   empty them (benchmarks/results/cv_std240_radial).

Missing phases: `forward(x, phase_mask)` with a bool (B, P), True = present (None = all present; an
all-True mask is the same as None). Absent phases are dropped from every fusion: they are masked keys
(`src_key_padding_mask`) for the transformer, left out of the GRU sequence (packed), out of the means,
and zeroed in the concat with the rest rescaled by P / present so the 1×1×1 conv sees inputs of the
usual size. The encoder sees each phase alone, so the output does not depend on an absent phase's
voxels at all. Every sample needs at least one present phase. Training only meets this path with
phase dropout (`augment_params.phase_dropout_prob`); `compare --missing-phases` measures it.

Deepest level must hold more than one voxel (instance norm), e.g. at least 16×32×32 with 5 scales.
One phase is allowed (the temporal module then sees a single token) for single-phase baselines.
`checkpointing=True` recomputes encoder levels in backward to save memory.

`unet_channels` is the comparison issue 7 asks for: MONAI's `UNet` (3D, channels base·(1, 2, 4, 8, 16),
strides 2, two residual units) taking phases × windows as input channels, with the same lesion-pooled
classification head on its bottleneck (the innermost `SkipConnection`'s submodule, wrapped so the
forward keeps its output). An absent phase's input channels are zeroed (no rescaling: they are
images, not features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock, UnetrUpBlock
from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from liverphase.models.blocks import phase_mean
from liverphase.models.heads import LesionPooledHead
from liverphase.models.registry import EncoderView, ModelOutput, MultiPhaseModel, register_model

TEMPORAL_MODES = ("transformer", "gru", "mean", "concat")
# UnetResBlock's activation; not in place: on the instance-norm view that costs a copy in backward
_LRELU = ("leakyrelu", {"negative_slope": 0.01})


def reject_unknown_options(model: str, unused: dict[str, Any]) -> None:
    """Raise ValueError naming options a model does not know."""
    if unused:
        raise ValueError(f"{model}: unknown option(s) {', '.join(sorted(unused))}")


def check_phase_mask(mask: torch.Tensor | None, batch: int, phases: int) -> torch.Tensor | None:
    """Validate a (B, P) presence mask; None when every phase is present."""
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, phases):
        raise ValueError(f"phase_mask must be ({batch}, {phases}), got {tuple(mask.shape)}")
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("phase_mask: every sample needs at least one present phase")
    return None if mask.all() else mask


class PhaseTransformer(nn.Module):
    """Phase tokens (N, P, C) + phase embeddings → pre-norm transformer encoder across phases."""

    def __init__(self, channels: int, phases: int, heads: int, layers: int, dropout: float):
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads={heads} must divide the temporal width {channels}")
        self.embedding = nn.Embedding(phases, channels)
        nn.init.normal_(self.embedding.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            channels, heads, 4 * channels, dropout, "gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """(N, P, C), pad (N, P) True = absent → (N, P, C)."""
        return self.encoder(tokens + self.embedding.weight, src_key_padding_mask=pad)


class PhaseGRU(nn.Module):
    """Bidirectional GRU over the present phases, projected to C and added to the tokens."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, channels, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * channels, channels)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        """(N, P, C), pad (N, P) True = absent → (N, P, C)."""
        if pad is None:
            return tokens + self.proj(self.gru(tokens)[0])
        p = tokens.shape[1]
        # Present phases first, in acquisition order, so packing skips the absent ones.
        order = torch.argsort(pad.to(torch.uint8), dim=1, stable=True)
        lengths = (~pad).sum(dim=1).cpu()
        idx = order.unsqueeze(-1).expand_as(tokens)
        packed = pack_padded_sequence(
            tokens.gather(1, idx), lengths, batch_first=True, enforce_sorted=False
        )
        out = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=p)[0]
        back = torch.argsort(order, dim=1).unsqueeze(-1).expand(-1, -1, out.shape[-1])
        return tokens + self.proj(out.gather(1, back))


class TemporalFusion(nn.Module):
    """Fuse per-phase features (B, P, C, d, h, w) into (B, C, d, h, w) with one temporal mode."""

    def __init__(
        self,
        mode: str,
        channels: int,
        phases: int,
        heads: int,
        layers: int,
        pool: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.mode, self.pool = mode, pool
        self.mixer: nn.Module | None = None
        self.conv: nn.Conv3d | None = None
        if mode == "transformer":
            self.mixer = PhaseTransformer(channels, phases, heads, layers, dropout)
        elif mode == "gru":
            self.mixer = PhaseGRU(channels)
        elif mode == "concat":
            self.conv = nn.Conv3d(phases * channels, channels, kernel_size=1)

    def forward(self, f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-phase (B, P, C, d, h, w), presence (B, P) or None → fused (B, C, d, h, w)."""
        if self.conv is not None:
            if mask is not None:
                w = mask.to(f.dtype) * (mask.shape[1] / mask.sum(dim=1, keepdim=True))
                f = f * w.view(*w.shape, 1, 1, 1, 1)
            return self.conv(f.flatten(1, 2))
        if self.mixer is not None:
            f = f + self._temporal_delta(f, mask)
        return phase_mean(f, mask)

    def _temporal_delta(self, f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, p, c, *size = f.shape
        g = f.flatten(0, 1)
        if self.pool > 1:
            k = [min(self.pool, n) for n in size]
            g = F.avg_pool3d(g, kernel_size=k, stride=k, ceil_mode=True)
        grid = g.shape[2:]
        tokens = g.view(b, p, c, -1).permute(0, 3, 1, 2).flatten(0, 1)  # (B·L, P, C)
        pad = None if mask is None else (~mask).repeat_interleave(tokens.shape[0] // b, dim=0)
        delta = self.mixer(tokens, pad) - tokens
        delta = delta.view(b, -1, p, c).permute(0, 2, 3, 1).reshape(b * p, c, *grid)
        if self.pool > 1:
            delta = F.interpolate(delta, size=size, mode="trilinear", align_corners=False)
        return delta.view(b, p, c, *size)


class PhaseEncoder(nn.Module):
    """Shared 3D residual encoder: (N, C, D, H, W) → one feature map per level, full res first."""

    def __init__(self, in_channels: int, widths: Sequence[int], checkpointing: bool) -> None:
        super().__init__()
        stem = Convolution(3, in_channels, widths[0], act=_LRELU, norm="instance", bias=False)
        self.levels = nn.ModuleList(
            [stem]
            + [
                UnetResBlock(3, c_in, c_out, kernel_size=3, stride=2, norm_name="instance")
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.checkpointing = checkpointing
        self.out_channels = int(widths[-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every level."""
        feats = []
        for level in self.levels:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(level, x, use_reentrant=False)
            else:
                x = level(x)
            feats.append(x)
        return feats


def _deepest(levels: list[torch.Tensor]) -> torch.Tensor:
    return levels[-1]


def _check_grid(model: MultiPhaseModel, x: torch.Tensor) -> None:
    model.check_input(x)
    factor = model.grid_multiple
    if any(n % factor for n in x.shape[3:]):
        raise ValueError(
            f"{type(model).__name__} needs D, H, W divisible by {factor}, got {tuple(x.shape[3:])}"
        )


@register_model(
    "std_net",
    segments=True,
    description="shared 3D U-Net encoder per phase + transformer across phases; mask + class",
)
class StdNet(MultiPhaseModel):
    """STD-Net with its ablation switch `temporal` (transformer | gru | mean | concat)."""

    segments = True
    encoder_prefix = "encoder."

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        base_channels: int = 16,
        temporal: str = "transformer",
        temporal_scales: int = 2,
        heads: int = 4,
        layers: int = 1,
        temporal_pool: int = 1,
        dropout: float = 0.0,
        scales: int = 5,
        lesion_pool: bool = True,
        region_kinetics: bool = False,
        deep_features: bool = True,
        region_reading: str = "shells",
        checkpointing: bool = False,
        **unused: Any,
    ) -> None:
        reject_unknown_options("std_net", unused)
        super().__init__(num_classes, phases, in_channels)
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        if not 2 <= scales <= 6:
            raise ValueError(f"scales must lie in 2..6, got {scales}")
        if not 1 <= temporal_scales <= scales:
            raise ValueError(f"temporal_scales must lie in 1..{scales}, got {temporal_scales}")
        self.grid_multiple = 2 ** (scales - 1)  # each downsampling halves D, H and W
        if base_channels < 1 or layers < 1 or heads < 1 or temporal_pool < 1:
            raise ValueError("base_channels, layers, heads and temporal_pool must be >= 1")
        widths = [base_channels * 2**k for k in range(scales)]
        p = len(self.phases)
        self.temporal = temporal
        self.encoder = PhaseEncoder(in_channels, widths, checkpointing)
        self.fusion = nn.ModuleList(
            TemporalFusion(
                temporal if k >= scales - temporal_scales else "mean",
                w,
                p,
                heads,
                layers,
                temporal_pool,
                dropout,
            )
            for k, w in enumerate(widths)
        )
        self.decoder = nn.ModuleList(
            UnetrUpBlock(3, widths[k + 1], widths[k], 3, 2, "instance", res_block=True)
            for k in reversed(range(scales - 1))
        )
        self.seg_out = UnetOutBlock(3, widths[0], 2)
        regions = p * in_channels if region_kinetics else 0
        self.head = LesionPooledHead(
            widths[-1], num_classes, lesion_pool, dropout, regions, deep_features, region_reading
        )

    def ssl_encoder(self) -> EncoderView:
        """The shared per-phase encoder, read at its deepest level (pretraining, `--init`)."""
        return EncoderView(self.encoder, self.encoder.out_channels, self.grid_multiple, _deepest)

    def forward(self, x: torch.Tensor, phase_mask: torch.Tensor | None = None) -> ModelOutput:
        """x (B, P, C, D, H, W), optional presence mask (B, P) → logits, seg_logits, features."""
        _check_grid(self, x)
        b, p = x.shape[:2]
        mask = check_phase_mask(phase_mask, b, p)
        levels = self.encoder(x.flatten(0, 1))
        fused = [
            fuse(f.view(b, p, *f.shape[1:]), mask)
            for fuse, f in zip(self.fusion, levels, strict=True)
        ]
        h = fused[-1]
        for up, skip in zip(self.decoder, reversed(fused[:-1]), strict=True):
            h = up(h, skip)
        seg_logits = self.seg_out(h)
        features, logits = self.head(fused[-1], seg_logits, x, mask)
        return ModelOutput(logits=logits, features=features, seg_logits=seg_logits)


class _Tap(nn.Module):
    """Runs a module and keeps its last output (the UNet bottleneck for the class head)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.output: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output, remembered."""
        self.output = self.module(x)
        return self.output


@register_model(
    "unet_channels",
    segments=True,
    description="MONAI 3D UNet, phases x windows as channels; class head on its bottleneck",
)
class UNetChannels(MultiPhaseModel):
    """MONAI's UNet on the phase-stacked volume plus a lesion-pooled head on its bottleneck."""

    segments = True

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 3,
        base_channels: int = 16,
        lesion_pool: bool = True,
        dropout: float = 0.0,
        region_kinetics: bool = False,
        deep_features: bool = True,
        region_reading: str = "shells",
        **unused: Any,
    ) -> None:
        reject_unknown_options("unet_channels", unused)
        super().__init__(num_classes, phases, in_channels)
        self.grid_multiple = 16  # four stride-2 levels
        widths = [base_channels * 2**k for k in range(5)]
        self.unet = UNet(
            3, len(self.phases) * in_channels, 2, widths, (2, 2, 2, 2), num_res_units=2
        )
        inner = [m for m in self.unet.modules() if isinstance(m, SkipConnection)][-1]
        inner.submodule = _Tap(inner.submodule)
        regions = len(self.phases) * in_channels if region_kinetics else 0
        self.head = LesionPooledHead(
            widths[-1], num_classes, lesion_pool, dropout, regions, deep_features, region_reading
        )

    def forward(self, x: torch.Tensor, phase_mask: torch.Tensor | None = None) -> ModelOutput:
        """x (B, P, C, D, H, W), optional presence mask (B, P) → logits, seg_logits, features."""
        _check_grid(self, x)
        mask = check_phase_mask(phase_mask, *x.shape[:2])
        if mask is not None:
            x = x * mask.to(x.dtype).view(*mask.shape, 1, 1, 1, 1)
        seg_logits = self.unet(x.flatten(1, 2))
        tap = next(m for m in self.unet.modules() if isinstance(m, _Tap))
        deep, tap.output = tap.output, None
        features, logits = self.head(deep, seg_logits, x, mask)
        return ModelOutput(logits=logits, features=features, seg_logits=seg_logits)
