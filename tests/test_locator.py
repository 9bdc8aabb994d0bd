"""The lesion locator: the coarse grid covers the scan, a lesion lands where it is, the detection
criterion has known answers, the strongest component wins, a trained locator finds blobs it never
saw, and a saved locator loads only as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tests.conftest import make_image

from liverphase.errors import BundleError
from liverphase.preprocess.coarse import (
    coarse_grid,
    coarse_target,
    coarse_volume,
    lesion_found,
    probability_on,
    strongest_component,
)
from liverphase.train.locator import (
    WEIGHTS,
    CoarseCase,
    Locator,
    LocatorConfig,
    build_locator,
    evaluate_locator,
    save_locator,
    train_locator,
)

TINY = LocatorConfig(
    spacing_mm=4.0, canvas=(8, 16, 16), channels=(8, 16, 32), epochs=12, batch_size=4, lr=3e-3
)


def _ball(shape, centre, radius) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.asarray(centre)
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= radius**2


def test_coarse_grid_covers_the_reference_extent() -> None:
    ref = make_image(np.zeros((10, 30, 40), np.float32), spacing=(1.5, 1.0, 2.0), origin=(5, -3, 7))
    grid = coarse_grid(ref, 4.0)
    # corners of the two grids (voxel edges, not centres) coincide at the start
    ref_corner = np.asarray(ref.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    grid_corner = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    assert np.allclose(ref_corner, grid_corner)
    assert grid.GetSize() == (15, 8, 5)  # ceil(60/4), ceil(30/4), ceil(20/4)


def test_a_bright_lesion_lands_where_it_is_on_the_coarse_grid() -> None:
    arr = np.full((20, 40, 40), 100.0, np.float32)
    lesion = _ball(arr.shape, (10, 12, 28), 4)
    arr[lesion] = 200.0
    img = make_image(arr, spacing=(1.0, 1.0, 2.0), origin=(-20.0, 10.0, 0.0))
    mask = make_image(lesion.astype(np.uint8), spacing=(1.0, 1.0, 2.0), origin=(-20.0, 10.0, 0.0))
    vol = coarse_volume({"PV": img, "ART": img}, img, ["ART", "PV", "DL"], 4.0)
    assert vol.image.shape[0] == 3 and not vol.image[2].any()  # the absent phase is zero
    target = coarse_target(mask, vol.grid)
    bright = vol.image[1] > 0.9  # 200 HU is above the liver window's top
    assert target.any()
    # the target and the bright voxels agree on the coarse grid, centre within a coarse voxel
    c_t = np.asarray(np.nonzero(target)).mean(1)
    c_b = np.asarray(np.nonzero(bright)).mean(1)
    assert np.abs(c_t - c_b).max() <= 1.0
    # and back on the fine grid, the lesion's centre is where it started (within 4 mm)
    fine = probability_on(target.astype(np.float32), vol.grid, img) > 0.5
    found = lesion_found(fine, lesion, (2.0, 1.0, 1.0))
    assert found["detected"] and found["centre_error_mm"] < 4.0


def test_a_tiny_lesion_keeps_one_coarse_voxel() -> None:
    lesion = np.zeros((16, 16, 16), np.uint8)
    lesion[8, 8, 8] = 1
    mask = make_image(lesion, spacing=(1.0, 1.0, 1.0))
    grid = coarse_grid(mask, 4.0)
    assert coarse_target(mask, grid).sum() == 1


def test_lesion_found_known_answers() -> None:
    truth = _ball((30, 30, 50), (15, 15, 15), 5)
    same = lesion_found(truth, truth, (1.0, 1.0, 1.0))
    assert same["dice"] == pytest.approx(1.0) and same["detected"]
    assert same["centre_error_mm"] == pytest.approx(0.0)
    # 5-voxel ball: radius floor 10 mm; a copy 8 mm away is found, 12 mm away is not
    near = lesion_found(np.roll(truth, 8, axis=2), truth, (1.0, 1.0, 1.0))
    far = lesion_found(np.roll(truth, 12, axis=2), truth, (1.0, 1.0, 1.0))
    assert near["detected"] and near["centre_error_mm"] == pytest.approx(8.0)
    assert not far["detected"] and far["dice"] == 0.0
    # spacing scales the distance: the 8-voxel shift along x at 2 mm is 16 mm
    assert not lesion_found(np.roll(truth, 8, axis=2), truth, (1.0, 1.0, 2.0))["detected"]
    empty = lesion_found(np.zeros_like(truth), truth, (1.0, 1.0, 1.0))
    assert not empty["detected"] and empty["centre_error_mm"] is None


def test_strongest_component_by_mass_and_fallback() -> None:
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:3, 1:3, 1:3] = 0.6  # 8 voxels, mass 4.8
    prob[6:8, 6:8, 6] = 0.99  # 4 voxels, mass 3.96
    mask, used = strongest_component(prob, 0.5)
    assert used == 0.5 and mask.sum() == 8 and mask[1, 1, 1]
    weak = prob * 0.5  # nothing above 0.5: half the peak instead, never an empty answer
    mask, used = strongest_component(weak, 0.5)
    assert used == pytest.approx(0.495 / 2) and mask.any()


def _blob_cases(n: int, seed: int) -> list[CoarseCase]:
    """Coarse cases: noise, a body, and one bright ball at a random place."""
    rng = np.random.default_rng(seed)
    shape, out = (8, 16, 16), []
    for i in range(n):
        centre = rng.integers([2, 3, 3], [6, 13, 13])
        ball = _ball(shape, centre, 1.6)
        image = 0.4 + 0.05 * rng.standard_normal((2, *shape)).astype(np.float32)
        image[0][ball] += 0.4
        image[1][ball] -= 0.2
        out.append(
            CoarseCase(
                f"c{i}",
                f"p{i}",
                "HCC",
                image.astype(np.float32),
                ball.astype(np.uint8),
                (4.0, 4.0, 4.0),
            )
        )
    return out


def test_a_trained_locator_finds_lesions_it_never_saw() -> None:
    train, val, test = _blob_cases(24, 0), _blob_cases(6, 1), _blob_cases(10, 2)
    untrained = build_locator(2, TINY).eval()
    before = evaluate_locator(untrained, test, TINY)["detection"]
    net, history = train_locator(train, val, 2, TINY)
    after = evaluate_locator(net, test, TINY)
    assert after["detection"] >= 0.8 > before
    assert after["dice"] > 0.3
    assert len(history["history"]) == TINY.epochs
    assert history["best"]["detection"] == max(r["detection"] for r in history["history"])


def test_saved_locator_round_trip_and_refuses_changed_weights(tmp_path: Path) -> None:
    net = build_locator(2, TINY)
    meta = {"config": TINY.to_dict(), "phases": ["ART", "PV"], "modality": "ct"}
    folder = save_locator(tmp_path / "loc", net, meta)
    loaded = Locator(folder)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v)
    assert loaded.config == TINY
    # the search answers on the study's own grid, always with a candidate
    ref = make_image(np.full((10, 30, 30), 50, np.int16), spacing=(1.0, 1.0, 3.0), origin=(4, 5, 6))
    found = loaded.find({"ART": ref, "PV": ref}, ref)
    assert found.mask.GetSize() == ref.GetSize() and found.mask.GetOrigin() == ref.GetOrigin()
    assert sitk.GetArrayViewFromImage(found.mask).any()
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        Locator(folder)
