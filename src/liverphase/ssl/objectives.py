"""Redundancy-reduction objectives on two views' embeddings (N, D): Barlow Twins and VICReg.

Barlow Twins (Zbontar et al. 2021) is MONAI's `BarlowTwinsLoss`, wrapped. Its definition in MONAI
1.6.1 (monai/losses/barlow_twins.py), read from the installed source: each embedding is centred on
its batch mean and divided by its batch standard deviation with Bessel's correction plus 1e-6
(`(z - z.mean(0)) / (z.std(0) + 1e-6)`), C = z_aᵀ z_b / N, and the loss is
Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² (λ = 5e-3 by default). The paper's C is the Pearson
cross-correlation (the official code batch-normalises with the biased variance); with the unbiased
std divided by N, MONAI's C is (N − 1)/N times it, so C_ii of identical views is (N − 1)/N, not 1,
and the loss cannot reach zero: its floor is D/N² from the diagonal (e.g. 32 for D = 512 at
batch 4). The gradient still points where the paper's does (towards C_ii = 1, C_ij = 0).

VICReg (Bardes et al. 2022) is written here as the authors' code computes it: invariance = mean
squared difference of the two embeddings; variance = mean over dimensions of max(0, γ − sqrt(Var_j
+ ε)) (Var with Bessel's correction, γ = 1, ε = 1e-4), averaged over the two branches (the paper's
Eq. 6 sums them; its 25/25/1 weights were tuned with the code's average); covariance = sum of the
squared off-diagonal entries of each branch's covariance matrix (Bessel) divided by D, summed over
the two branches. Weights λ, μ, ν = 25, 25, 1.
"""

from __future__ import annotations

import torch
from monai.losses import BarlowTwinsLoss
from torch import nn
from torch.nn import functional as F


def _check_pair(z_a: torch.Tensor, z_b: torch.Tensor) -> None:
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"expected two (N, D) embeddings, got {tuple(z_a.shape)}, {tuple(z_b.shape)}"
        )
    if z_a.shape[0] < 2:
        raise ValueError(f"batch statistics need at least 2 samples, got {z_a.shape[0]}")


def barlow_twins_loss(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = 5e-3) -> torch.Tensor:
    """Barlow Twins loss of two (N, D) embeddings: MONAI's `BarlowTwinsLoss` (see module doc)."""
    _check_pair(z_a, z_b)
    return BarlowTwinsLoss(lambd=lambd)(z_a, z_b)


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_terms(
    z_a: torch.Tensor, z_b: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """VICReg's three unweighted terms: invariance, variance, covariance (see module doc)."""
    _check_pair(z_a, z_b)
    n, d = z_a.shape
    invariance = F.mse_loss(z_a, z_b)
    variance = z_a.new_zeros(())
    covariance = z_a.new_zeros(())
    for z in (z_a, z_b):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + F.relu(gamma - std).mean() / 2
        cov = (z.T @ z) / (n - 1)
        covariance = covariance + off_diagonal(cov).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg loss λ·invariance + μ·variance + ν·covariance, and the three terms (detached)."""
    terms = vicreg_terms(z_a, z_b, gamma, eps)
    loss = (
        sim_weight * terms["invariance"]
        + var_weight * terms["variance"]
        + cov_weight * terms["covariance"]
    )
    return loss, {k: v.detach() for k, v in terms.items()}


class Projector(nn.Module):
    """The expander MLP of Barlow Twins / VICReg: (Linear → BatchNorm → ReLU) × (layers − 1) → Linear."""

    def __init__(
        self, in_features: int, hidden: int = 512, out: int = 512, layers: int = 3
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"projector layers must be >= 1, got {layers}")
        parts: list[nn.Module] = []
        width = in_features
        for _ in range(layers - 1):
            parts += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True)]
            width = hidden
        parts.append(nn.Linear(width, out, bias=False))
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) → (N, out)."""
        return self.net(x)
