"""Per-phase spatial encoders: a 2D ResNet18 callable stage by stage, and the slice-wise wrapper.

`ResNet2d` keeps torchvision's module names (conv1, bn1, layer1..layer4, blocks with conv1/bn1/conv2/
bn2/downsample), so a torchvision or timm resnet18 state dict loads onto it key for key.

`SliceEncoder` applies one 2D encoder with shared weights to every slice of every phase. Images are
ordered (batch, slice, phase), so the P phases of one slice are adjacent: a cross-phase fusion module can
run after any stage on a (slices, P, C, h, w) view, and `slice_chunk` splits along slices without
separating the phases of a slice.

Memory options:
- `checkpointing`: each stage (the stem, then each ResNet stage with its fusion) is recomputed in
  backward instead of storing its activations; only stage boundaries are kept.
- `slice_chunk`: the 2D encoder sees at most `slice_chunk` slices (× P phases) at a time. On its own this
  bounds inference memory; for training combine it with `checkpointing`, which then recomputes one chunk
  and one stage at a time. BatchNorm computes batch statistics per chunk in training; in eval mode the
  chunked and unchunked outputs are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from liverphase.models.blocks import (
    conv_layer,
    init_resnet_weights,
    make_stage,
    maybe_checkpoint,
    norm_layer,
)


class ResNet2d(nn.Module):
    """2D ResNet18 (7×7 stem with stride `stem_stride`, 3×3 max-pool, four basic-block stages);
    `spatial_dims=3` builds the same layout in 3D (cirrhosis_msa's volume variant)."""

    def __init__(
        self,
        in_channels: int = 3,
        stem_stride: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self.stage_channels = tuple(int(w) for w in widths)
        self.out_channels = self.stage_channels[-1]
        conv, norm = conv_layer(spatial_dims), norm_layer(spatial_dims)
        self.conv1 = conv(in_channels, widths[0], 7, stride=stem_stride, padding=3, bias=False)
        self.bn1 = norm(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d)(3, stride=2, padding=1)
        in_planes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            stage = make_stage(
                in_planes, w, n, stride=1 if i == 0 else 2, spatial_dims=spatial_dims
            )
            self.add_module(f"layer{i + 1}", stage)
            in_planes = w
        init_resnet_weights(self)

    @property
    def num_stages(self) -> int:
        """Number of residual stages."""
        return len(self.stage_channels)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 → BN → ReLU → max-pool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage(self, i: int) -> nn.Module:
        """The i-th residual stage (0-based)."""
        return getattr(self, f"layer{i + 1}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) → last feature map (N, 512, h, w)."""
        x = self.stem(x)
        for i in range(self.num_stages):
            x = self.stage(i)(x)
        return x


def to_slice_images(x: torch.Tensor) -> torch.Tensor:
    """(B, P, C, D, H, W) → (B·D·P, C, H, W), ordered batch, slice, phase."""
    b, p, c, d, h, w = x.shape
    return x.permute(0, 3, 1, 2, 4, 5).reshape(b * d * p, c, h, w)


class SliceEncoder(nn.Module):
    """A 2D encoder shared over slices and phases, with optional cross-phase fusion after each stage."""

    def __init__(
        self,
        backbone: ResNet2d,
        fusion: Sequence[nn.Module] | None = None,
        checkpointing: bool = False,
        slice_chunk: int | None = None,
    ) -> None:
        super().__init__()
        if slice_chunk is not None and slice_chunk < 1:
            raise ValueError(f"slice_chunk must be a positive number of slices, got {slice_chunk}")
        if fusion is not None and len(fusion) != backbone.num_stages:
            raise ValueError(f"need one fusion module per stage ({backbone.num_stages})")
        self.backbone = backbone
        self.fusion = nn.ModuleList(fusion) if fusion is not None else None
        self.checkpointing = bool(checkpointing)
        self.slice_chunk = slice_chunk
        self.out_channels = backbone.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, P, C, D, H, W) → slice vectors (B, P, D, F), global-average-pooled per image."""
        b, p, _, d = x.shape[:4]
        images = to_slice_images(x)
        step = self.slice_chunk or b * d
        vectors = [
            self._encode(images[start * p : (start + step) * p], p)
            for start in range(0, b * d, step)
        ]
        return torch.cat(vectors).view(b, d, p, -1).permute(0, 2, 1, 3)

    def _encode(self, images: torch.Tensor, p: int) -> torch.Tensor:
        h = maybe_checkpoint(self.backbone.stem, images, self.checkpointing)
        for i in range(self.backbone.num_stages):
            h = maybe_checkpoint(partial(self._stage, i, p), h, self.checkpointing)
        return h.mean(dim=(2, 3))

    def _stage(self, i: int, p: int, h: torch.Tensor) -> torch.Tensor:
        h = self.backbone.stage(i)(h)
        if self.fusion is None:
            return h
        n = h.shape[0] // p
        return self.fusion[i](h.view(n, p, *h.shape[1:])).reshape(h.shape)
