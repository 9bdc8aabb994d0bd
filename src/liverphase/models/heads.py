"""Classifier heads: per-phase heads, the multi-task mix of MIFF+SPM's outputs, and the
lesion-pooled head of the segmenting models (with an optional region-enhancement reading), and the
ordinal (cumulative-link) head for ordered classes."""

from __future__ import annotations

import math

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


REGION_READINGS = ("shells", "radial")
# The radial reading's bands in the lesion's normalised radius (0 at its centroid, 1 on its surface):
# a centre (< 0.45), a middle and an outer band (> 0.75).
RADIAL_BANDS = (0.45, 0.75)


def region_count(reading: str) -> int:
    """Numbers per phase and channel that `region_enhancement` returns for a reading."""
    if reading not in REGION_READINGS:
        raise ValueError(f"region_reading must be one of {REGION_READINGS}, got {reading!r}")
    return 3 if reading == "shells" else 4


def inverse_3x3(m: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of 3×3 matrices (B, 3, 3) by cofactors: exports to ONNX, which has no
    general matrix inverse."""
    a = [[m[:, i, j] for j in range(3)] for i in range(3)]

    def cof(i: int, j: int) -> torch.Tensor:
        r = [k for k in range(3) if k != i]
        c = [k for k in range(3) if k != j]
        minor = a[r[0]][c[0]] * a[r[1]][c[1]] - a[r[0]][c[1]] * a[r[1]][c[0]]
        return minor if (i + j) % 2 == 0 else -minor

    cofactors = torch.stack([torch.stack([cof(i, j) for j in range(3)], -1) for i in range(3)], -2)
    det = a[0][0] * cofactors[:, 0, 0] + a[0][1] * cofactors[:, 0, 1] + a[0][2] * cofactors[:, 0, 2]
    return cofactors.transpose(1, 2) / det[:, None, None]


def lesion_radius(prob: torch.Tensor) -> torch.Tensor:
    """Normalised radius of every voxel in the lesion's own ellipsoid: (B, 1, D, H, W) → same shape.

    The ellipsoid is the one with the lesion's centroid and second moments (a solid ellipsoid of
    semi-axes a_i has variance a_i²/5 along them), from the voxels above 0.5 (the whole probability
    when none is). So the radius is 0 at the centroid and about 1 on the surface, whatever the
    lesion's size, elongation or the crop's voxel shape, and a mask a little too large or too small
    moves the bands with it instead of cutting them at a fixed distance from a wrong edge.
    """
    b, dims = prob.shape[0], prob.shape[2:]
    axes = [torch.arange(n, device=prob.device, dtype=torch.float32) / n for n in dims]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    p = prob.detach().float().flatten(1)
    hard = (p > 0.5).float()
    w = torch.where(hard.sum(1, keepdim=True) > 0, hard, p)
    w = w / (w.sum(1, keepdim=True) + 1e-6)
    d = pos[None] - (w @ pos)[:, None]  # (B, N, 3)
    cov = torch.einsum("bn,bni,bnj->bij", w, d, d) * 5.0
    cov = cov + 1e-6 * torch.eye(3, device=prob.device)
    r2 = torch.einsum("bni,bij,bnj->bn", d, inverse_3x3(cov), d)
    return r2.clamp_min(0).sqrt().view(b, 1, *dims).to(prob.dtype)


def lesion_region_weights(prob: torch.Tensor, reading: str = "shells") -> torch.Tensor:
    """Soft regions of a lesion probability (B, 1, D, H, W) → (B, R, D, H, W), the parenchyma
    around the lesion last.

    `shells`: core = soft erosion of the probability (3³ min-pool), rim = probability − core.
    `radial`: the probability cut by `lesion_radius` into `RADIAL_BANDS` (centre, middle, outer):
    the generator's and the radiologist's "central" region (delayed central enhancement, central
    scar) that a fixed-width rim merges into the core. Around = 5³ max-pool (soft dilation) −
    probability in both.
    """
    region_count(reading)
    around = F.max_pool3d(prob, 5, stride=1, padding=2) - prob
    if reading == "shells":
        core = -F.max_pool3d(-prob, 3, stride=1, padding=1)
        return torch.cat([core, (prob - core).clamp_min(0), around], 1)
    r = lesion_radius(prob)
    lo, hi = RADIAL_BANDS
    bands = [r < lo, (r >= lo) & (r <= hi), r > hi]
    return torch.cat([prob * band.to(prob.dtype) for band in bands] + [around], 1)


def region_enhancement(
    x: torch.Tensor,
    prob: torch.Tensor,
    phase_mask: torch.Tensor | None = None,
    reading: str = "shells",
) -> torch.Tensor:
    """Mean input intensity of each lesion region and of the parenchyma around it, per phase and
    channel, read through a (soft) lesion probability: (B, P, C, D, H, W), (B, 1, D, H, W) →
    (B, R·P·C), R = `region_count(reading)`.

    What a radiologist reads off ROIs (`lesion_region_weights`: core and rim, or radial bands).
    Returned relative to the surrounding parenchyma of the same phase (region − around), with the
    around level itself relative to its mean over phases, all × REGION_SCALE; absent phases give
    zeros.
    """
    regions = lesion_region_weights(prob, reading)
    w = regions / (regions.sum(dim=(2, 3, 4), keepdim=True) + 1e-6)
    means = torch.einsum("bpcdhw,brdhw->bprc", x, w)  # (B, P, R, C)
    around = means[:, :, -1:]
    level = phase_mean(around, phase_mask).unsqueeze(1)
    feats = torch.cat([means[:, :, :-1] - around, around - level], dim=2) * REGION_SCALE
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
        region_reading: str = "shells",
    ):
        super().__init__()
        if not deep_features and not region_inputs:
            raise ValueError(
                "deep_features=False needs region_kinetics: the head would read nothing"
            )
        self.lesion_pool = lesion_pool
        self.region_inputs = region_inputs
        self.region_reading = region_reading
        self.deep_features = deep_features
        deep = channels * (2 if lesion_pool else 1) if deep_features else 0
        self.out_features = deep + region_count(region_reading) * region_inputs
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
            regions = region_enhancement(x.float(), prob.float(), phase_mask, self.region_reading)
            pooled.append(regions.to(deep.dtype))
        features = torch.cat(pooled, dim=1)
        return features, self.fc(self.dropout(features))


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(−d)) for d > 0, accurate for small and large d.

    Below ln 2 as log tanh(d/2) + log(1 + e^{−d}) (1 − e^{−d} = tanh(d/2)·(1 + e^{−d})), as accurate
    as log(−expm1(−d)) but made of operators ONNX exports (it has no Expm1); from ln 2 on as
    log1p(−e^{−d}).
    """
    # each branch sees only inputs valid for it, so the unused one has no inf to turn the gradient NaN
    ln2 = math.log(2.0)
    small = d < ln2
    near = torch.where(small, d, torch.full_like(d, ln2))
    far = torch.where(small, torch.full_like(d, ln2), d)
    near_value = torch.log(torch.tanh(near / 2)) + torch.log1p(torch.exp(-near))
    return torch.where(small, near_value, torch.log1p(-torch.exp(-far)))


class OrdinalHead(nn.Module):
    """Cumulative-link (proportional-odds) classifier for K ordered classes: (..., F) → (..., K).

    One score s = w·z (no bias: the thresholds absorb it) and K − 1 ordered thresholds
    θ_k = θ_1 + Σ_{j<k} softplus(δ_j), so P(y > k) = σ(s − θ_k) is non-increasing in k for every input
    (rank-consistent, as CORAL). The output is log P(y = k):
    [log σ(θ_1 − s), log(σ(s − θ_1) − σ(s − θ_2)), ..., log σ(s − θ_{K−1})], each middle term in log
    space as log σ(a) + log σ(−b) + log(1 − e^{−(a − b)}) with a − b = softplus(δ) (clamped at the
    dtype's smallest normal number, so an underflowing gap gives a very small probability, not log 0),
    so softmax(output) is the class distribution and cross-entropy on the output is the
    cumulative-link negative log-likelihood. The thresholds start at logit(k/K): equal class
    probabilities at s = 0.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"an ordinal head needs >= 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.fc = nn.Linear(in_features, 1, bias=False)
        theta = torch.logit(torch.arange(1, num_classes, dtype=torch.float32) / num_classes)
        self.theta1 = nn.Parameter(theta[:1].clone())
        # inverse softplus of the initial gaps; no parameter at all for two classes (one threshold)
        self.gaps = nn.Parameter(torch.log(torch.expm1(theta.diff()))) if num_classes > 2 else None

    def thresholds(self) -> torch.Tensor:
        """θ_1 ≤ ... ≤ θ_{K−1}, shape (K − 1,)."""
        if self.gaps is None:
            return self.theta1
        return torch.cat([self.theta1, self.theta1 + torch.cumsum(F.softplus(self.gaps), 0)])

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """Latent score s = w·z: (..., F) → (...)."""
        return self.fc(z).squeeze(-1)

    def log_probs(self, s: torch.Tensor) -> torch.Tensor:
        """Scores (...) → log class probabilities (..., K)."""
        t = s.unsqueeze(-1) - self.thresholds()  # s − θ_k, decreasing in k
        parts = [F.logsigmoid(-t[..., :1])]
        if self.gaps is not None:
            gap = F.softplus(self.gaps)
            gap = gap.clamp_min(torch.finfo(gap.dtype).tiny)
            parts.append(F.logsigmoid(t[..., :-1]) + F.logsigmoid(-t[..., 1:]) + _log1mexp(gap))
        parts.append(F.logsigmoid(t[..., -1:]))
        return torch.cat(parts, dim=-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Features (..., F) → log P(y = k) (..., K), used as logits."""
        return self.log_probs(self.score(z))
