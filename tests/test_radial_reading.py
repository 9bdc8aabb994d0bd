"""The radial region reading: bands of the lesion's normalised radius, for the models' region heads."""

from __future__ import annotations

import pytest
import torch

from liverphase.models import create_model
from liverphase.models.heads import (
    REGION_SCALE,
    inverse_3x3,
    lesion_radius,
    lesion_region_weights,
    region_count,
    region_enhancement,
)

GRID = (16, 48, 40)


def ellipsoid_rho(
    centre: tuple[float, float, float],
    axes: tuple[float, float, float],
    grid: tuple[int, int, int] = GRID,
) -> torch.Tensor:
    """Analytic normalised radius (D, H, W) of an axis-aligned ellipsoid in voxel units."""
    zyx = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in grid], indexing="ij")
    return sum(((g - c) / a) ** 2 for g, c, a in zip(zyx, centre, axes, strict=True)).sqrt()


def test_lesion_radius_is_the_ellipsoids_own_normalised_radius() -> None:
    # a flat lesion on an anisotropic crop: 5 voxels deep, 18 and 14 voxels across
    rho = ellipsoid_rho((7.5, 22.0, 19.0), (5.0, 18.0, 14.0))
    prob = (rho <= 1).float()[None, None]
    r = lesion_radius(prob)[0, 0]
    inside = rho <= 1
    assert r.shape == rho.shape
    # within the lesion the moment ellipsoid's radius matches the true one to a few hundredths
    assert (r[inside] - rho[inside]).abs().mean() < 0.04
    assert (r[inside] - rho[inside]).abs().max() < 0.15
    # shifting the lesion moves the radius with it (compared where the shifted lesion lies)
    shift = (2, -5, 3)
    shifted = lesion_radius(torch.roll(prob, shifts=shift, dims=(2, 3, 4)))[0, 0]
    moved = torch.roll(inside, shifts=shift, dims=(0, 1, 2))
    torch.testing.assert_close(
        shifted[moved], torch.roll(r, shifts=shift, dims=(0, 1, 2))[moved], atol=1e-4, rtol=0
    )


def test_inverse_3x3_matches_torch() -> None:
    m = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(0)) + 3 * torch.eye(3)
    torch.testing.assert_close(inverse_3x3(m), torch.linalg.inv(m), atol=1e-5, rtol=1e-5)


def test_lesion_radius_falls_back_to_the_soft_probability_below_one_half() -> None:
    rho = ellipsoid_rho((8.0, 24.0, 20.0), (4.0, 12.0, 12.0))
    low = 0.4 * (rho <= 1).float()[None, None]  # nothing reaches 0.5
    r = lesion_radius(low)[0, 0]
    assert torch.isfinite(r).all()
    assert r[8, 24, 20] < 0.1 and 0.8 < r[8, 24, 31] < 1.2


def test_radial_reading_recovers_a_bright_centre_and_a_dark_edge() -> None:
    rho = ellipsoid_rho((7.5, 23.5, 19.5), (6.0, 18.0, 15.0))
    lesion = rho <= 1
    prob = lesion.float()[None, None]
    x = torch.full((1, 2, 1, *GRID), 0.5)  # parenchyma 0.5 in both phases
    # phase 1: centre +0.3, middle +0.1, outer band -0.1 against the parenchyma
    values = torch.where(rho < 0.45, 0.8, torch.where(rho <= 0.75, 0.6, 0.4))
    x[0, 1, 0] = torch.where(lesion, values, torch.tensor(0.5))
    feats = region_enhancement(x, prob, reading="radial").view(2, 4)
    assert feats.shape == (2, 4) and region_count("radial") == 4
    torch.testing.assert_close(feats[0], torch.zeros(4), atol=1e-4, rtol=0)
    # the voxelised bands sit within a few hundredths of the analytic ones
    want = torch.tensor([0.3, 0.1, -0.1, 0.0]) * REGION_SCALE
    torch.testing.assert_close(feats[1], want, atol=0.25, rtol=0)
    assert feats[1, 0] > 2.5 and feats[1, 2] < -0.8
    # the shells reading merges the bright centre into its core: what the radial bands keep apart
    shells = region_enhancement(x, prob, reading="shells").view(2, 3)
    assert shells[1, 0] < feats[1, 0] - 0.5


def test_a_mask_too_large_keeps_the_radial_contrast_the_shells_lose() -> None:
    rho = ellipsoid_rho((7.5, 23.5, 19.5), (6.0, 18.0, 15.0))
    x = torch.full((1, 1, 1, *GRID), 0.5)
    x[0, 0, 0] = torch.where(rho < 0.45, 0.8, torch.where(rho <= 0.75, 0.6, 0.5))
    x[0, 0, 0] = torch.where((rho > 0.75) & (rho <= 1), 0.4, x[0, 0, 0])

    def contrast(mask: torch.Tensor, reading: str) -> float:
        f = region_enhancement(x, mask.float()[None, None], reading=reading)[0]
        return float(f[0] - f[region_count(reading) - 2])  # centre (core) minus edge band (rim)

    for reading in ("radial", "shells"):
        assert contrast(rho <= 1, reading) > 1.5
    # a mask 15% too large on every side: the radial bands scale with it, the shells' rim
    # becomes parenchyma and the core takes in the dark edge
    assert contrast(rho <= 1.15, "radial") > 0.6 * contrast(rho <= 1, "radial")
    assert contrast(rho <= 1.15, "shells") < 0.2 * contrast(rho <= 1, "shells")
    weights = lesion_region_weights((rho <= 1.15).float()[None, None], "radial")[0]
    assert weights.shape[0] == 4 and all(w.sum() > 0 for w in weights)
    torch.testing.assert_close(weights[:3].sum(0), (rho <= 1.15).float())  # bands split the lesion


@pytest.mark.parametrize(
    ("name", "options", "channels"),
    [
        ("std_net", {"scales": 3, "base_channels": 8}, 1),
        ("unet_channels", {"base_channels": 8}, 1),
        ("miff_spm", {"spm_hidden": 16}, 2),
    ],
)
@pytest.mark.parametrize("region_kinetics", [True, False])
def test_unknown_region_reading_is_refused(
    name: str, options: dict, channels: int, region_kinetics: bool
) -> None:
    """Every model refuses a misspelt reading, even with the region head off (a typo never passes)."""
    with pytest.raises(ValueError, match="region_reading"):
        region_count("onion")
    with pytest.raises(ValueError, match="region_reading"):
        create_model(
            name,
            num_classes=2,
            phases=("ART", "PV"),
            in_channels=channels,
            region_kinetics=region_kinetics,
            region_reading="onion",
            **options,
        )


@pytest.mark.parametrize(
    ("name", "options", "channels"),
    [
        ("std_net", {"scales": 3, "base_channels": 8, "deep_features": False}, 1),
        ("unet_channels", {"base_channels": 8, "deep_features": False}, 1),
        ("miff_spm", {"spm_hidden": 16}, 2),
    ],
)
def test_models_read_four_radial_numbers_per_phase_and_channel(
    name: str, options: dict, channels: int
) -> None:
    torch.manual_seed(0)
    model = create_model(
        name,
        num_classes=2,
        phases=("ART", "PV"),
        in_channels=channels,
        region_kinetics=True,
        region_reading="radial",
        **options,
    )
    x = torch.rand(2, 2, channels, 16, 32, 32)
    if name == "miff_spm":
        rho = ellipsoid_rho((7.5, 16.0, 16.0), (5.0, 10.0, 10.0), (16, 32, 32))
        x[:, :, -1] = (rho <= 1).float()
        assert model.region_head.in_features == 4 * 2 * 1
    else:
        assert model.head.fc.in_features == 4 * 2 * 1
    out = model(x)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    out.logits.sum().backward()
    head = model.region_head if name == "miff_spm" else model.head.fc
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
