"""Segmentation metrics against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from liverphase.evaluate.segmentation import (
    dice_by_size,
    segmentation_metrics,
    segmentation_section,
)


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
    assert r["true_volume_ml"] == pytest.approx(0.6)


def test_shifted_box_known_dice_and_distance() -> None:
    a = _box((10, 20, 30), (2, 5, 5), (8, 15, 15))
    b = _box((10, 20, 30), (2, 5, 8), (8, 15, 18))  # shifted 3 voxels in x
    r = segmentation_metrics(b, a, (1.0, 1.0, 2.0))
    assert r["dice"] == pytest.approx(2 * 6 * 10 * 7 / (2 * 600))
    assert r["hd95"] == pytest.approx(6.0)  # 3 voxels x 2 mm
    assert r["volume_error"] == pytest.approx(0.0)


def test_metrics_around_the_masks_equal_whole_scan_metrics() -> None:
    from liverphase.evaluate.segmentation import _around

    rng = np.random.default_rng(0)
    a = _box((30, 40, 50), (5, 8, 10), (15, 20, 25))
    b = _box((30, 40, 50), (7, 9, 12), (18, 24, 27))
    b[20, 30, 40] = 1  # a stray voxel far off: it must stay inside the window
    spacing = tuple(rng.uniform(0.6, 3.0, 3))
    whole = segmentation_metrics(b, a, spacing)
    box = _around(b, a)
    assert b[box].sum() == b.sum() and a[box].sum() == a.sum()
    assert segmentation_metrics(b[box], a[box], spacing) == pytest.approx(whole)


def test_empty_prediction() -> None:
    a = _box((8, 8, 8), (2, 2, 2), (6, 6, 6))
    r = segmentation_metrics(np.zeros_like(a), a, (1, 1, 1))
    assert r["dice"] == 0.0 and np.isnan(r["hd95"]) and r["volume_error"] == -1.0


def test_segmentation_csv_round_trip(tmp_path) -> None:
    from liverphase.evaluate.segmentation import read_segmentation_csv, write_segmentation_csv

    rows = [
        {
            "case_id": "A",
            "patient_id": "P1",
            "fold": 0,
            "dice": 0.5,
            "hd95": float("nan"),
            "surface_dice": 0.25,
            "volume_error": -0.1,
            "volume_ml": 2.0,
        },
        {
            "case_id": "B",
            "patient_id": "P2",
            "fold": 1,
            "dice": 1.0,
            "hd95": 0.0,
            "surface_dice": 1.0,
            "volume_error": 0.0,
            "volume_ml": 3.5,
        },
    ]
    write_segmentation_csv(tmp_path / "segmentation.csv", rows)
    back = read_segmentation_csv(tmp_path / "segmentation.csv")
    assert back["A"]["dice"] == 0.5 and np.isnan(back["A"]["hd95"])
    assert back["B"]["volume_ml"] == 3.5 and list(back) == ["A", "B"]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind


def test_segmentation_comparison_dice_ci_and_paired_p(tmp_path) -> None:
    from liverphase.evaluate.compare import segmentation_comparison
    from liverphase.evaluate.segmentation import write_segmentation_csv

    rng = np.random.default_rng(0)
    ids = [f"C{i}" for i in range(40)]
    groups = [f"P{i // 2}" for i in range(40)]
    base = rng.uniform(0.6, 0.8, 40)
    runs = {}
    for label, dice in (("ref", base), ("same", base), ("better", base + 0.1), ("none", None)):
        runs[label] = tmp_path / label
        runs[label].mkdir()
        if dice is not None:
            write_segmentation_csv(
                runs[label] / "segmentation.csv",
                [
                    {"case_id": c, "patient_id": g, "dice": d, "hd95": 3.0, "surface_dice": d}
                    for c, g, d in zip(ids, groups, dice, strict=True)
                ],
            )
    out = segmentation_comparison(runs, "ref", ids, groups, n_boot=500)
    assert set(out) == {"ref", "same", "better"}  # a run without segmentation.csv adds nothing
    assert out["ref"]["dice"] == pytest.approx(base.mean())
    lo, hi = out["ref"]["dice_ci"]
    assert lo < base.mean() < hi and hi - lo < 0.1
    assert "dice_p" not in out["ref"] and out["same"]["dice_p"] == 1.0
    assert out["better"]["dice_p"] < 0.01
    assert out["better"]["hd95"] == pytest.approx(3.0)


def test_paired_bootstrap_p_known_answers() -> None:
    from liverphase.evaluate.stats import paired_bootstrap_p

    groups = np.repeat(np.arange(20), 2)
    assert paired_bootstrap_p(np.zeros(40), groups) == 1.0
    assert paired_bootstrap_p(np.full(40, 0.05), groups) == 0.0
    noise = np.random.default_rng(1).normal(0.0, 1.0, 40)
    assert paired_bootstrap_p(noise - noise.mean(), groups) > 0.5  # centred: no evidence
    assert np.isnan(paired_bootstrap_p(np.full(3, np.nan), None))


def test_dice_by_size_bins_by_true_volume() -> None:
    rows = [
        {"true_volume_ml": v, "dice": d, "surface_dice": 0.5, "hd95": h, "volume_error": e}
        for v, d, h, e in [
            (9.0, 0.9, 1.0, 0.0),
            (0.5, 0.2, 5.0, 3.0),
            (3.0, 0.6, 2.0, 0.5),
            (1.0, 0.4, float("nan"), 1.0),
            (8.0, 0.8, 3.0, -0.2),
            (2.0, 0.5, 4.0, 0.3),
            (float("nan"), 0.0, 9.0, 9.0),  # no true volume (old csv): left out
        ]
    ]
    bins = dice_by_size(rows)
    assert [b["cases"] for b in bins] == [2, 2, 2]
    assert [b["volume"] for b in bins] == ["0.50–1.00", "2.00–3.00", "8.00–9.00"]
    assert [b["dice"] for b in bins] == pytest.approx([0.3, 0.55, 0.85])
    assert bins[0]["hd95"] == 5.0 and bins[2]["hd95"] == pytest.approx(2.0)  # NaN skipped
    assert bins[0]["volume_error"] == pytest.approx(2.0)
    text = segmentation_section(rows)
    assert "## Segmentation" in text and "| 0.50–1.00 | 2 | 0.300 |" in text
