"""Cirrhosis staging from T1W/T2W MRI: multi-scale features + sequence-specific attention (MSA).

After the seed study's pseudo-3D design (slices of the whole liver through a shared 2D CNN, features
of several depths, attention per MRI sequence); every detail below is our choice. For x
(B, P, C, D, H, W), P sequences (any names, 1 to 8), and an optional presence mask (B, P):

1. Encoder, shared by every sequence. `dims=2` (default): a 2D ResNet (`encoders.ResNet2d`: 7×7
   stride-2 stem + max-pool, four stages of `blocks` basic blocks, widths width·(1, 2, 4, 8)) on every
   slice of every present sequence. `dims=3`: the same layout in 3D (`blocks.make_stage` with
   spatial_dims=3) on every present sequence volume.
2. Multi-scale features: the last `scales` stages (default 3) are global-average-pooled, each projected
   to `feature_dim` with its own LayerNorm, summed and ReLU'd (`blocks.MultiScaleProjection`): one
   vector f per slice (2D: f[b, p, s]) or per volume (3D: f[b, p]).
3. Sequence-specific attention, keyed by sequence name (`nn.ModuleDict`, so T1W and T2W weights are
   separate): a channel gate h = sigmoid(MLP_p(f)) ⊙ f (`blocks.ChannelGate`), then in 2D gated
   attention MIL over slices (`blocks.GatedAttentionPool`, Ilse et al. 2018):
   a[b, p, s] = softmax_s(w_pᵀ(tanh(V_p h) ⊙ sigmoid(U_p h))), z[b, p] = Σ_s a[b, p, s] h[b, p, s].
   In 3D the gated volume vector is z[b, p] itself.
4. Fusion: z[b] = mean of z[b, p] over the present sequences (`features`, (B, feature_dim)); dropout;
   `head` (linear, or `heads.OrdinalHead` with `ordinal=True`) → `logits` (B, K).

Slice logits (2D only; None in 3D): slice s's feature fused over the present sequences, weighted by
each sequence's attention to that slice, u[b, s] = Σ_p a[b, p, s] h[b, p, s] / Σ_p a[b, p, s], through
the same head: `slice_logits[b, s] = head(u[b, s])`. With w[b, s] = mean_p a[b, p, s] (present
sequences; Σ_s w = 1) the scan's feature is exactly z[b] = Σ_s w[b, s] u[b, s], so for the linear
head logits[b] = Σ_s w[b, s] · slice_logits[b, s] (the scan's logit is the attention-weighted mean
of its slices' logits), and for the ordinal head the same holds for the latent scores
(head.score): the scan's score is the weighted mean of its slices' scores. `last_attention` (B, P, D),
detached, holds a (rows of absent sequences are zeros), so w = last_attention.sum(1) / present count.
In 3D `last_attention` is None (no attention over sequences: they are averaged).

Missing sequences (`phase_mask` False): the encoder runs only on the present (sample, sequence) pairs,
gathered with the mask, so an absent input never enters a convolution or a BatchNorm statistic (and
costs nothing); its features are zeros, its attention row is zero, and it is left out of every mean.
The output with an absent slot holding garbage equals the output with zeros, exactly. Every sample
needs a present sequence (ValueError otherwise).

Grad-CAM (`explain.cam`): `cam_tap` sees the last stage's maps scattered back to the full layout
(2D: (B·D·P, C, h, w) ordered batch, slice, sequence, the "slices" layout; 3D: (B·P, C, d, h, w),
"volumes"), zeros where a sequence is absent.

BatchNorm in the encoder: batch statistics in training mix the slices (2D) or volumes (3D) of a
batch, as in every ResNet here; in 3D training needs more than one value per channel at the deepest
stage (e.g. two present volumes, or a grid whose deepest stage is larger than 1×1×1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from liverphase.models.blocks import (
    ChannelGate,
    GatedAttentionPool,
    MultiScaleProjection,
    global_average,
    phase_mean,
)
from liverphase.models.encoders import ResNet2d
from liverphase.models.heads import OrdinalHead
from liverphase.models.registry import ModelOutput, MultiPhaseModel, register_model
from liverphase.models.std_net import check_phase_mask, reject_unknown_options


def _module_key(name: str) -> str:
    # ModuleDict keys cannot hold "." (state-dict separator) nor shadow its methods ("keys", ...)
    key = name.replace(".", "_") or "_"
    return f"{key}_" if hasattr(nn.ModuleDict, key) else key


def _scatter(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Rows of the kept units → all units, zeros elsewhere (identity when every unit is kept)."""
    if keep is None:
        return values
    out = values.new_zeros(keep.shape[0], *values.shape[1:])
    out[keep] = values
    return out


@register_model(
    "cirrhosis_msa",
    description="2D (pseudo-3D) or 3D ResNet, multi-scale features, attention per MRI sequence",
)
class CirrhosisMSA(MultiPhaseModel):
    """Multi-scale features + sequence-specific attention; `dims` 2 (per slice) or 3 (per volume)."""

    min_phases = 1

    def __init__(
        self,
        num_classes: int,
        phases: Sequence[str],
        in_channels: int = 1,
        dims: int = 2,
        width: int = 32,
        blocks: int = 2,
        scales: int = 3,
        feature_dim: int = 128,
        dropout: float = 0.0,
        ordinal: bool = False,
        **unused: Any,
    ) -> None:
        reject_unknown_options("cirrhosis_msa", unused)
        super().__init__(num_classes, phases, in_channels)
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (per slice) or 3 (per volume), got {dims}")
        if width < 1 or blocks < 1 or feature_dim < 1:
            raise ValueError("width, blocks and feature_dim must be >= 1")
        if not 1 <= scales <= 4:
            raise ValueError(f"scales must lie in 1..4 (stages pooled), got {scales}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        keys = [_module_key(p) for p in self.phases]
        if len(set(keys)) != len(keys):
            raise ValueError(f"sequence names must be distinct, got {self.phases}")
        self.dims, self.ordinal = int(dims), bool(ordinal)
        widths, depth = [width * 2**k for k in range(4)], [blocks] * 4
        if self.dims == 2:
            self.encoder = ResNet2d(in_channels, 2, widths, depth)
        else:
            self.encoder = ResNet2d(in_channels, 2, widths, depth, spatial_dims=3)
        self.scales = int(scales)
        self.multiscale = MultiScaleProjection(widths[-self.scales :], feature_dim)
        self.cam_tap = nn.Identity()
        self.cam_target_layer = "cam_tap"
        self.cam_layout = "slices" if self.dims == 2 else "volumes"
        self.gates = nn.ModuleDict({k: ChannelGate(feature_dim) for k in keys})
        self.attention: nn.ModuleDict | None = None
        if self.dims == 2:
            hidden = max(feature_dim // 2, 8)
            self.attention = nn.ModuleDict(
                {k: GatedAttentionPool(feature_dim, hidden) for k in keys}
            )
        self._keys = keys
        self.dropout = nn.Dropout(dropout)
        self.head: nn.Module = (
            OrdinalHead(feature_dim, num_classes)
            if ordinal
            else nn.Linear(feature_dim, num_classes)
        )
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, phase_mask: torch.Tensor | None = None) -> ModelOutput:
        """x (B, P, C, D, H, W), optional presence (B, P) → logits, features, slice_logits (2D)."""
        self.check_input(x)
        b, p = x.shape[:2]
        mask = check_phase_mask(phase_mask, b, p)
        if mask is not None:
            mask = mask.to(x.device)
        f = self._encode(x, mask)  # 2D (B, P, D, F); 3D (B, P, F); zeros where absent
        h = torch.stack([self.gates[k](f[:, i]) for i, k in enumerate(self._keys)], dim=1)
        if self.attention is None:
            self.last_attention = None
            z = phase_mean(h, mask)
            return ModelOutput(logits=self.head(self.dropout(z)), features=z)
        a = torch.stack([self.attention[k].weights(h[:, i]) for i, k in enumerate(self._keys)], 1)
        present = torch.ones(b, p, dtype=a.dtype, device=a.device) if mask is None else mask.to(a)
        a = a * present[..., None]  # (B, P, D); absent rows exactly zero
        z = phase_mean(torch.einsum("bps,bpsf->bpf", a, h), mask)
        tiny = torch.finfo(a.dtype).tiny
        u = torch.einsum("bps,bpsf->bsf", a, h) / a.sum(dim=1).clamp_min(tiny)[..., None]
        self.last_attention = a.detach()
        return ModelOutput(
            logits=self.head(self.dropout(z)),
            features=z,
            slice_logits=self.head(self.dropout(u)),
        )

    def _encode(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Shared encoder on the present units only → multi-scale vectors in the full layout."""
        b, p, c, d, hh, ww = x.shape
        if self.dims == 2:
            # ordered batch, slice, sequence: the layout explain.cam reads as "slices"
            units = x.permute(0, 3, 1, 2, 4, 5).reshape(b * d * p, c, hh, ww)
            keep = None if mask is None else mask[:, None, :].expand(b, d, p).reshape(-1)
        else:
            units = x.reshape(b * p, c, d, hh, ww)
            keep = None if mask is None else mask.reshape(-1)
        if keep is not None:
            units = units[keep]
        enc = self.encoder
        h = enc.stem(units)
        pooled = []
        for i in range(enc.num_stages):
            h = enc.stage(i)(h)
            if enc.num_stages - self.scales <= i < enc.num_stages - 1:
                pooled.append(global_average(h))
        last = global_average(self.cam_tap(_scatter(h, keep)))
        pooled.append(last if keep is None else last[keep])
        f = _scatter(self.multiscale(pooled), keep)
        if self.dims == 2:
            return f.view(b, d, p, -1).permute(0, 2, 1, 3)
        return f.view(b, p, -1)
