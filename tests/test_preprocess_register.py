"""Inter-phase registration: known shifts recovered, the guard, determinism, the effect on images."""

from __future__ import annotations

import numpy as np
import pytest

from liverphase.io.study import Study
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import preprocess_study
from liverphase.preprocess.register import transform_from_dict
from test_preprocess_phantom import phantom_study

SPACING = (1.6, 1.6, 2.5)  # x, y, z mm
SHIFTS = {
    "ART": (3 * 1.6, 1 * 1.6, -2 * 2.5),  # (3, 1, -2) voxels: 7.1 mm
    "NC": (-2.3, 2.7, 3.1),  # not a whole number of voxels
}
CFG = {"size": (16, 32, 32)}


@pytest.fixture(scope="module")
def study() -> Study:
    return phantom_study("s0", shifts=SHIFTS, shape=(40, 88, 100), spacing=SPACING, seed=11)


@pytest.fixture(scope="module")
def registered(study: Study):
    return preprocess_study(study, PreprocessConfig(**CFG))


def _residual(meta: dict, phase: str, truth) -> float:
    """Distance (mm) between where the transform sends the lesion centre and where it really is."""
    centre = (np.asarray(meta["lesion_box_mm"]["lo"]) + np.asarray(meta["lesion_box_mm"]["hi"])) / 2
    tx = transform_from_dict(meta["registration"][phase])
    return float(np.linalg.norm(np.subtract(tx.TransformPoint(tuple(centre)), centre + truth)))


def test_known_shifts_recovered_within_1mm(registered) -> None:
    meta = registered.meta
    for phase in ("ART", "NC", "DL"):
        truth = np.asarray(SHIFTS.get(phase, (0.0, 0.0, 0.0)))
        assert meta["registration"][phase]["accepted"], meta["registration"][phase]
        assert _residual(meta, phase, truth) < 1.0, phase
        rec = meta["registration"][phase]
        assert rec["ncc_after"] >= rec["ncc_before"] - 1e-3
    art = meta["registration"]["ART"]
    assert art["shift_mm"] == pytest.approx(np.linalg.norm(SHIFTS["ART"]), abs=1.0)
    assert art["ncc_after"] > art["ncc_before"] + 0.01  # the shift really hurt and was undone
    assert "PV" not in meta["registration"]  # the reference is not registered
    assert meta["warnings"] == []


def test_registration_aligns_the_lesion(study: Study, registered) -> None:
    unregistered = preprocess_study(study, PreprocessConfig(**CFG, register=False))
    art = registered.meta["phases"].index("ART")
    lesion = registered.mask > 0
    # ART is the hyper-enhancing phase: narrow-window lesion intensity rises once aligned
    aligned = registered.image[art, 2][lesion].mean()
    misaligned = unregistered.image[art, 2][lesion].mean()
    assert aligned > misaligned + 0.1
    assert all(not r["accepted"] for r in unregistered.meta["registration"].values())
    assert all(r["parameters"] == [0.0] * 6 for r in unregistered.meta["registration"].values())


def test_registration_is_deterministic(study: Study, registered) -> None:
    again = preprocess_study(study, PreprocessConfig(**CFG))
    for phase in ("ART", "NC", "DL"):
        assert (
            again.meta["registration"][phase]["parameters"]
            == (registered.meta["registration"][phase]["parameters"])
        )
    np.testing.assert_array_equal(again.image, registered.image)


def test_guard_keeps_identity_when_moving_too_far(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**CFG, register_max_shift_mm=3.0))
    art = out.meta["registration"]["ART"]
    assert not art["accepted"] and art["max_shift_mm"] > 3.0
    assert art["warning"].startswith("registration kept the identity: moved")
    assert any(w.startswith("ART: registration kept the identity") for w in out.meta["warnings"])
    tx = transform_from_dict(art)
    assert tx.TransformPoint((1.0, 2.0, 3.0)) == pytest.approx((1.0, 2.0, 3.0))


def test_affine_option_recovers_shift(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**CFG, register_transform="affine"))
    assert out.meta["registration"]["ART"]["kind"] == "affine"
    assert len(out.meta["registration"]["ART"]["parameters"]) == 12
    assert _residual(out.meta, "ART", np.asarray(SHIFTS["ART"])) < 1.0


def test_coarsen_keeps_extent_and_only_coarsens() -> None:
    import SimpleITK as sitk

    from liverphase.preprocess.geometry import coarsen_to_spacing, corner_points

    arr = np.random.default_rng(0).normal(100.0, 20.0, (30, 70, 90)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.7, 2.5))
    img.SetOrigin((-10.0, 5.0, 3.0))
    out = coarsen_to_spacing(img, (2.0, 2.0, 2.0))
    # x and y coarsened to 2 mm, z (already coarser) kept
    assert out.GetSpacing() == pytest.approx((2.0, 2.0, 2.5))
    assert out.GetSize() == (31, 24, 30)  # whole voxels inside 63 x 49 x 75 mm
    lo_in, hi_in = corner_points(img).min(0), corner_points(img).max(0)
    lo_out, hi_out = corner_points(out).min(0), corner_points(out).max(0)
    assert np.all(lo_out >= lo_in - 1e-6) and np.all(hi_out <= hi_in + 1e-6)
    assert np.all(hi_out - lo_out > hi_in - lo_in - 2.0)
    # anti-aliased: the mean kept, the noise reduced
    vals = sitk.GetArrayFromImage(out)
    assert abs(vals.mean() - 100.0) < 1.0 and vals.std() < 0.6 * arr.std()
    # nothing finer than the input is made
    same = coarsen_to_spacing(img, (0.5, 0.5, 0.5))
    assert same.GetSize() == img.GetSize() and same.GetSpacing() == img.GetSpacing()
