"""Segmentation metrics against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from liverphase.evaluate.segmentation import segmentation_metrics


def _box(shape, lo, hi):
    m = np.zeros(shape, np.uint8)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return m


def test_identical_masks() -> None:
    m = _box((10, 20, 20), (2, 5, 5), (8, 15, 15))
    r = segmentation_metrics(m, m, (1.0, 1.0, 1.0))
    assert r["dice"] == pytest.approx(1.0) and r["hd95"] == pytest.approx(0.0)
    assert r["surface_dice"] == pytest.approx(1.0) and r["volume_error"] == pytest.approx(0.0)
    assert r["volume_ml"] == pytest.approx(6 * 10 * 10 / 1000)


def test_shifted_box_known_dice_and_distance() -> None:
    a = _box((10, 20, 30), (2, 5, 5), (8, 15, 15))
    b = _box((10, 20, 30), (2, 5, 8), (8, 15, 18))  # shifted 3 voxels in x
    r = segmentation_metrics(b, a, (1.0, 1.0, 2.0))
    assert r["dice"] == pytest.approx(2 * 6 * 10 * 7 / (2 * 600))
    assert r["hd95"] == pytest.approx(6.0)  # 3 voxels x 2 mm
    assert r["volume_error"] == pytest.approx(0.0)


def test_empty_prediction() -> None:
    a = _box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    r = segmentation_metrics(np.zeros_like(a), a, (1, 1, 1))
    assert r["dice"] == 0.0 and np.isnan(r["hd95"]) and r["volume_error"] == -1.0
