"""Masked autoencoding for a convolutional per-phase encoder: patch masks, sparse masking, decoder, loss.

Design (ours; the choices the issue leaves open):
- **Which patches.** The crop is cut into a grid of 3D patches (`patch` voxels per axis, by default
  the encoder's total stride, so a patch is exactly one cell of the deepest feature map) and
  exactly round(ratio · patches) of them are masked. `mode="independent"` (default) draws the
  masked patches of every phase on its own: a place hidden in the arterial phase is often visible
  in the portal and delayed phases, so reconstructing it means predicting one phase from the others
  at the same place — the enhancement dynamics the classification depends on. `mode="shared"`
  hides the same patches in every phase (pure spatial inpainting, the image-MAE task).
- **Convolutions and holes: sparse masking (SparK-style, Tian et al. 2023).** A dense convolution
  over zero-filled holes sees the hole pattern, and instance normalisation would average the holes
  into every channel's statistics; both shift the feature distribution between pretraining
  (holes) and fine-tuning (no holes). Instead, while `sparse_masking` is active the encoder behaves
  like a sparse convolutional network on the visible voxels: masked input voxels are zeros, the
  output of every `Conv3d` (and pooling) is re-masked to zero at hidden positions, and every
  `InstanceNorm3d` normalises with the mean and variance of the visible positions only, then
  re-masks. It works through forward hooks, so the encoder's own code and parameters are unchanged
  and the same weights run dense afterwards. The cost: the dense convolutions still compute the
  hidden positions (no speed-up from sparsity, unlike a true sparse-convolution library, which
  would be a new dependency); the gain: exact hole semantics for any encoder built from Conv3d,
  InstanceNorm3d and pointwise activations. Batch/group/layer norms are refused (their statistics
  would need the same treatment), and gradient checkpointing is switched off inside (its
  recomputation in backward would run after the hooks are gone).
- **Decoder** (dropped after pretraining): at the deepest grid, hidden cells get a learned mask
  token; the phases' maps are stacked along channels (so every output phase reads every input
  phase at that place), a 1×1×1 convolution, then log2(stride) stages of 2× upsampling (a 2×2×2
  stride-2 transposed convolution) + instance norm + leaky ReLU back to the input grid, and a
  1×1×1 convolution to one output per phase channel.
- **Loss**: mean squared error over the hidden voxels of the phases a study has (absent phases are
  never targets). `norm_targets=True` normalises each target patch by its own mean and standard
  deviation (MAE's per-patch normalisation); off by default, because the absolute enhancement of a
  patch is what separates the classes in contrast-enhanced imaging.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

MASK_MODES = ("independent", "shared")
_REFUSED_NORMS = (nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.LazyBatchNorm3d)
_POOLS = (nn.MaxPool3d, nn.AvgPool3d)


def patch_grid(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
    """Patches per axis of a (D, H, W) crop; ValueError when a patch does not divide it."""
    if len(spatial) != 3 or len(patch) != 3:
        raise ValueError(f"expected 3 spatial sizes and 3 patch sizes, got {spatial}, {patch}")
    if any(p < 1 or n % p for n, p in zip(spatial, patch, strict=True)):
        raise ValueError(f"patch size {tuple(patch)} must divide the crop {tuple(spatial)}")
    return tuple(n // p for n, p in zip(spatial, patch, strict=True))  # type: ignore[return-value]


def sample_patch_mask(
    phases: int,
    grid: Sequence[int],
    ratio: float,
    rng: np.random.Generator,
    mode: str = "independent",
) -> np.ndarray:
    """Hidden patches, bool (P, gd, gh, gw) (True = hidden): exactly round(ratio · patches) per phase,
    at least one hidden and one visible; drawn per phase (`independent`) or once for all (`shared`)."""
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
    n = int(np.prod(grid))
    if n < 2:
        raise ValueError(f"masking needs at least 2 patches, the grid is {tuple(grid)}")
    hidden = min(max(int(round(ratio * n)), 1), n - 1)
    draws = 1 if mode == "shared" else phases
    out = np.zeros((draws, n), bool)
    for k in range(draws):
        out[k, rng.permutation(n)[:hidden]] = True
    out = np.repeat(out, phases, axis=0) if mode == "shared" else out
    return out.reshape(phases, *grid)


def expand_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A patch-grid mask (..., gd, gh, gw) repeated onto a voxel grid (..., D, H, W) (exact multiple)."""
    lead, grid = mask.shape[:-3], mask.shape[-3:]
    if any(s % g for s, g in zip(size, grid, strict=True)):
        raise ValueError(f"grid {tuple(size)} is not a multiple of the mask grid {tuple(grid)}")
    m = mask.reshape(-1, 1, *grid).float()
    out = F.interpolate(m, size=tuple(size), mode="nearest")
    return out.reshape(*lead, *size).to(mask.dtype)


def masked_instance_norm(x: torch.Tensor, visible: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """Instance norm of x (N, C, ...) over the visible positions (visible (N, 1, ...) in {0, 1}) only,
    with the module's eps and affine parameters; hidden positions are 0."""
    dims = tuple(range(2, x.ndim))
    count = visible.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = (x * visible).sum(dim=dims, keepdim=True) / count
    var = ((x - mean).pow(2) * visible).sum(dim=dims, keepdim=True) / count
    y = (x - mean) / torch.sqrt(var + norm.eps)
    if norm.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = y * norm.weight.view(shape) + norm.bias.view(shape)
    return y * visible


@contextlib.contextmanager
def sparse_masking(encoder: nn.Module, visible: torch.Tensor) -> Iterator[None]:
    """While active, `encoder` computes on the visible voxels only (see module doc).

    `visible` is (N, 1, gd, gh, gw) in {0, 1} on a patch grid every feature map of the encoder is an
    exact multiple of; the caller zero-fills the hidden input voxels."""
    refused = [type(m).__name__ for m in encoder.modules() if isinstance(m, _REFUSED_NORMS)]
    if refused:
        raise ValueError(
            f"sparse masking supports instance-normalised encoders only; found {refused[0]}"
        )
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def at(shape: torch.Size) -> torch.Tensor:
        key = tuple(shape[2:])
        if key not in cache:
            cache[key] = expand_mask(visible, key).to(visible.dtype)
        return cache[key]

    def remask(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * at(output.shape)

    def renorm(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        return masked_instance_norm(x, at(x.shape), module)

    # gradient checkpointing would recompute the encoder in backward, after the hooks are gone
    recomputing = [
        m
        for m in (encoder, getattr(encoder, "inner", None), *encoder.modules())
        if isinstance(getattr(m, "checkpointing", None), bool) and m.checkpointing
    ]
    for m in recomputing:
        m.checkpointing = False
    handles = []
    for m in encoder.modules():
        if isinstance(m, (nn.Conv3d, *_POOLS)):
            handles.append(m.register_forward_hook(remask))
        elif isinstance(m, nn.InstanceNorm3d):
            handles.append(m.register_forward_hook(renorm))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in recomputing:
            m.checkpointing = True


class Upsample2x(nn.Module):
    """A 2×2×2 stride-2 transposed convolution written as a 1×1×1 convolution to 8 sub-voxel outputs
    per channel and a depth-to-space shuffle: the same function, without the CPU transposed
    convolution's slow path (0.1 s vs 1 ms for a (4, 64, 2, 4, 4) batch here)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, d, h, w) → (N, C_out, 2d, 2h, 2w)."""
        y = self.conv(x)
        n, _, d, h, w = y.shape
        y = y.view(n, self.out_channels, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(n, self.out_channels, 2 * d, 2 * h, 2 * w)


class MAEDecoder(nn.Module):
    """Deepest per-phase maps (B, P, F, d, h, w) + visibility → reconstruction (B, P, C, D, H, W)."""

    def __init__(
        self, phases: int, features: int, channels: int, stride: int, width: int = 64
    ) -> None:
        super().__init__()
        stages = int(round(math.log2(stride)))
        if 2**stages != stride:
            raise ValueError(f"the encoder stride must be a power of 2, got {stride}")
        self.phases, self.channels = phases, channels
        self.mask_token = nn.Parameter(torch.zeros(features))
        nn.init.normal_(self.mask_token, std=0.02)
        self.inp = nn.Conv3d(phases * features, width, 1)
        ups: list[nn.Module] = []
        w = width
        for _ in range(stages):
            w_next = max(w // 2, 8)
            ups += [Upsample2x(w, w_next), nn.InstanceNorm3d(w_next), nn.LeakyReLU(0.01)]
            w = w_next
        self.up = nn.Sequential(*ups)
        self.out = nn.Conv3d(w, phases * channels, 1)

    def forward(self, feats: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """feats (B, P, F, d, h, w), visible (B, P, d, h, w) in {0, 1} → (B, P, C, D, H, W)."""
        b, p, f, *grid = feats.shape
        v = visible.unsqueeze(2).to(feats.dtype)
        token = self.mask_token.view(1, 1, f, 1, 1, 1)
        x = feats * v + token * (1 - v)
        y = self.out(self.up(self.inp(x.reshape(b, p * f, *grid))))
        return y.view(b, p, self.channels, *y.shape[2:])


def patch_normalised(target: torch.Tensor, patch: Sequence[int], eps: float = 1e-6) -> torch.Tensor:
    """Each (…, pd, ph, pw) patch of target (B, P, C, D, H, W) minus its mean over its std."""
    b, p, c, d, h, w = target.shape
    pd, ph, pw = patch
    t = target.reshape(b, p, c, d // pd, pd, h // ph, ph, w // pw, pw)
    dims = (4, 6, 8)
    mean = t.mean(dim=dims, keepdim=True)
    std = t.var(dim=dims, keepdim=True, unbiased=False).add(eps).sqrt()
    return ((t - mean) / std).reshape(b, p, c, d, h, w)


def mae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    hidden: torch.Tensor,
    patch: Sequence[int] | None = None,
    norm_targets: bool = False,
) -> torch.Tensor:
    """Mean squared error over hidden voxels: pred, target (B, P, C, D, H, W), hidden (B, P, D, H, W)
    bool (already excluding absent phases); `norm_targets` normalises target patches of size `patch`."""
    if pred.shape != target.shape or hidden.shape != target.shape[:2] + target.shape[3:]:
        raise ValueError(
            f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"hidden {tuple(hidden.shape)}"
        )
    if norm_targets:
        if patch is None:
            raise ValueError("norm_targets needs the patch size")
        target = patch_normalised(target, patch)
    weight = hidden.unsqueeze(2).expand_as(target).to(pred.dtype)
    total = weight.sum()
    if total == 0:
        return pred.sum() * 0.0
    return ((pred - target).pow(2) * weight).sum() / total
