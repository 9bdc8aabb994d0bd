"""preprocess_study end to end: tensor layout, phase selection, CT/MRI intensities, warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from liverphase.errors import DatasetError
from liverphase.io.study import Study
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import preprocess_study
from test_preprocess_phantom import phantom_study

SMALL = {"size": (8, 24, 20), "register": False}
TOLERANCE_HU = {"core": 3.0, "rim": 3.0, "liver": 2.0}


@pytest.fixture(scope="module")
def study() -> Study:
    return phantom_study("q0", shape=(24, 56, 64), spacing=(2.5, 2.5, 4.0), seed=5)


def test_ct_tensor_layout_and_meta(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**SMALL))
    assert out.image.shape == (4, 3, 8, 24, 20) and out.image.dtype == np.float32
    assert out.image.flags["C_CONTIGUOUS"]
    assert out.image.min() >= 0.0 and out.image.max() <= 1.0
    assert out.mask.shape == (8, 24, 20) and out.mask.dtype == np.uint8
    meta = out.meta
    assert meta["phases"] == ["NC", "ART", "PV", "DL"] and meta["reference_phase"] == "PV"
    assert meta["shape"] == [4, 3, 8, 24, 20] and meta["roi_source"] == "mask"
    assert set(meta["timings"]) == {
        "canonical",
        "roi",
        "register",
        "resample",
        "intensity",
        "kinetics",
        "total",
    }
    assert meta["reference_geometry"]["size"] == list(study.reference.GetSize())
    # the lesion (hyper-enhancing in ART, 130 HU) is brighter than the liver around it in ART
    art, lesion = out.image[1, 2], out.mask > 0
    assert art[lesion].mean() > art[~lesion].mean() + 0.2


def test_phase_selection_and_order(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**SMALL, phases=("PV", "ART")))
    full = preprocess_study(study, PreprocessConfig(**SMALL))
    assert out.meta["phases"] == ["PV", "ART"] and out.image.shape[0] == 2
    np.testing.assert_array_equal(out.image[0], full.image[2])
    with pytest.raises(DatasetError, match="lacks phase"):
        preprocess_study(study, PreprocessConfig(**SMALL, phases=("PV", "T2")))


def test_one_raw_channel(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**SMALL, channels=1))
    windows = preprocess_study(study, PreprocessConfig(**SMALL))
    assert out.image.shape == (4, 1, 8, 24, 20)
    # raw window (40, 500) = [-210, 290] HU vs the abdomen window (40, 400) = [-160, 240]
    hu = windows.image[:, 0] * 400 - 160
    inside = (hu > -150) & (hu < 230)
    np.testing.assert_allclose(out.image[:, 0][inside], ((hu + 210) / 500)[inside], atol=1e-5)


def test_mri_normalisation(study: Study) -> None:
    # an MRI-like study: positive signal, no HU
    phases = {p: sitk.Cast(img, sitk.sitkFloat32) + 1000.0 for p, img in study.phases.items()}
    mri = Study("m0", phases, mask=study.mask, reference_phase="PV")
    out = preprocess_study(mri, PreprocessConfig(**SMALL, modality="mri"))
    assert out.image.shape == (4, 1, 8, 24, 20)
    assert out.image.min() >= 0 and out.image.max() <= 1 and out.image.std() > 0.01
    assert set(out.meta["normalisation"]) == {"NC", "ART", "PV", "DL"}
    z = preprocess_study(mri, PreprocessConfig(**SMALL, modality="mri", mri_norm="zscore"))
    assert z.image.min() < 0 < z.image.max()  # body-centred z-scores are not clipped
    assert not any("HU" in w for w in out.meta["warnings"])


def test_whole_image_roi_and_missing_roi(study: Study) -> None:
    out = preprocess_study(study, PreprocessConfig(**SMALL, roi_source="image"))
    assert out.meta["roi_source"] == "image"
    np.testing.assert_allclose(out.meta["lesion_size_mm"], [96.0, 140.0, 160.0])
    no_roi = Study("n0", dict(study.phases), reference_phase="PV")
    with pytest.raises(DatasetError, match="neither a lesion mask nor a bbox"):
        preprocess_study(no_roi, PreprocessConfig(**SMALL))
    # asking for the bbox when only a mask exists falls back to the mask, and says so
    fallback = preprocess_study(study, PreprocessConfig(**SMALL, roi_source="bbox"))
    assert fallback.meta["roi_source"] == "mask"
    assert any("unavailable" in w for w in fallback.meta["warnings"])


def test_non_hu_values_are_flagged(study: Study) -> None:
    shifted = {p: sitk.Cast(img, sitk.sitkFloat32) + 5000.0 for p, img in study.phases.items()}
    odd = Study("h0", shifted, mask=study.mask, reference_phase="PV")
    out = preprocess_study(odd, PreprocessConfig(**SMALL))
    assert any("outside" in w and "HU" in w for w in out.meta["warnings"])


def test_kinetics_do_not_depend_on_the_models_crop(study: Study) -> None:
    # a 3 mm margin crop would cut the 3-10 mm liver ring: kinetics use their own grid instead
    tight = preprocess_study(study, PreprocessConfig(**{**SMALL, "margin_mm": 3.0}))
    wide = preprocess_study(
        study, PreprocessConfig(**{**SMALL, "margin_mm": 15.0, "size": (12, 32, 32)})
    )
    k_tight, k_wide = tight.meta["kinetics"], wide.meta["kinetics"]
    assert json.dumps(k_tight, sort_keys=True) == json.dumps(k_wide, sort_keys=True)  # NaN-safe
    pv = k_tight["per_phase"]["PV"]
    assert 60 < pv["lesion"] < 90 and pv["liver"] > pv["lesion"] + 10  # washout against the ring
    # ring volume of a 12 mm sphere from 3 to 10 mm outside it, on the 1 mm kinetics grid (the scan
    # has 2.5 x 2.5 x 4 mm voxels)
    ring_mm3 = 4 / 3 * np.pi * (22.0**3 - 15.0**3)
    assert k_tight["spacing_mm"] == pytest.approx([1.0, 1.0, 1.0], rel=0.05)
    assert k_tight["regions_voxels"]["surround"] == pytest.approx(ring_mm3, rel=0.1)


def test_kinetics_read_the_same_regions_whatever_the_slice_thickness(study: Study) -> None:
    """The same anatomy scanned at 2.5 x 2.5 x 4 mm and at 1.25 x 1.25 x 2 mm: on the 1 mm grid
    the regions have their physical volumes in both, and the region means agree. (On each scan's own
    grid the 2 mm rim was empty at 4 mm slices, and the lesion 284 voxels against 1956.)"""
    fine = phantom_study("q1", shape=(48, 112, 128), spacing=(1.25, 1.25, 2.0), seed=5)
    coarse_k = preprocess_study(study, PreprocessConfig(**SMALL)).meta["kinetics"]
    fine_k = preprocess_study(fine, PreprocessConfig(**SMALL)).meta["kinetics"]
    sphere_mm3 = 4 / 3 * np.pi * 12.0**3
    for k in (coarse_k, fine_k):
        assert k["regions_voxels"]["lesion"] == pytest.approx(sphere_mm3, rel=0.1)
        assert k["regions_voxels"]["rim"] > 0.3 * k["regions_voxels"]["lesion"]
    for phase in ("NC", "ART", "PV", "DL"):
        a, b = coarse_k["per_phase"][phase], fine_k["per_phase"][phase]
        for region in ("core", "rim", "liver"):
            assert a[region] == pytest.approx(b[region], abs=TOLERANCE_HU[region])


def test_liver_reference_takes_out_a_phase_wide_offset(study: Study) -> None:
    # every phase is the PV image plus its own constant (a bolus or timing change moves the whole
    # phase): relative to the liver ring the phases are the same; in absolute HU they are not
    pv = sitk.Cast(study.phases["PV"], sitk.sitkFloat32)
    offsets = {"NC": -45.0, "ART": -20.0, "PV": 0.0, "DL": 25.0}
    moved = Study(
        "o0", {p: pv + c for p, c in offsets.items()}, mask=study.mask, reference_phase="PV"
    )
    liver = preprocess_study(moved, PreprocessConfig(**SMALL, intensity_reference="liver"))
    absolute = preprocess_study(moved, PreprocessConfig(**SMALL))
    for k in range(1, 4):
        np.testing.assert_allclose(liver.image[k], liver.image[0], atol=0.02)
    assert np.abs(absolute.image[3] - absolute.image[0]).max() > 0.3
    rings = {p: liver.meta["normalisation"][p]["liver_ring"] for p in offsets}
    for p, c in offsets.items():
        assert rings[p] - rings["PV"] == pytest.approx(c, abs=1.5)


def test_liver_reference_puts_the_ring_at_the_anchor(study: Study) -> None:
    from liverphase.preprocess.pipeline import _boxes
    from liverphase.preprocess.roi import outside_box

    cfg = PreprocessConfig(**SMALL, intensity_reference="liver", liver_anchor=60.0)
    out = preprocess_study(study, cfg)
    _, box, grid, _ = _boxes(study, cfg, None)
    ring = outside_box(grid, box)
    assert 0.2 < ring.mean() < 0.9 and not ring[4, 12, 10]  # the margin, not the lesion centre
    # window (60, 160) spans -20..140 HU: a ring at 60 HU reads 0.5 in every phase
    for k in range(4):
        assert np.median(out.image[k, 1][ring]) == pytest.approx(0.5, abs=0.05)
    mri = Study(
        "m1",
        {p: sitk.Cast(i, sitk.sitkFloat32) + 1000.0 for p, i in study.phases.items()},
        mask=study.mask,
        reference_phase="PV",
    )
    m = preprocess_study(
        mri, PreprocessConfig(**SMALL, modality="mri", intensity_reference="liver")
    )
    assert np.median(m.image[2, 0][ring]) == pytest.approx(0.5, abs=0.02)


def test_liver_reference_config_and_cache_key() -> None:
    from liverphase.errors import ConfigError
    from liverphase.preprocess.cache import cache_key

    base = PreprocessConfig(**SMALL)
    assert "intensity_reference" not in base.key_dict()  # caches built before the field stay valid
    liver = PreprocessConfig(**SMALL, intensity_reference="liver")
    assert cache_key([], base) != cache_key([], liver)
    with pytest.raises(ConfigError, match="intensity_reference"):
        PreprocessConfig(**SMALL, intensity_reference="liver", margin_mm=0.0).validate()
    with pytest.raises(ConfigError, match="intensity_reference"):
        PreprocessConfig(**SMALL, intensity_reference="spleen").validate()


def test_liver_reference_without_parenchyma_keeps_absolute_values(study: Study) -> None:
    # nothing in the soft-tissue range around the lesion: no level to read, so no shift (and a warning)
    dense = Study(
        "d0",
        {p: sitk.Cast(img, sitk.sitkFloat32) + 600.0 for p, img in study.phases.items()},
        mask=study.mask,
        reference_phase="PV",
    )
    liver = preprocess_study(dense, PreprocessConfig(**SMALL, intensity_reference="liver"))
    absolute = preprocess_study(dense, PreprocessConfig(**SMALL))
    np.testing.assert_array_equal(liver.image, absolute.image)
    assert sum("too little parenchyma" in w for w in liver.meta["warnings"]) == 4
