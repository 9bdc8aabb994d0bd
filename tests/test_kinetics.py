"""Kinetics measurement on arrays with known region values."""

from __future__ import annotations

import numpy as np

from liverphase.preprocess.kinetics import kinetics_feature_vector, lesion_regions, measure_kinetics


def _sphere(shape, centre, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


def test_regions_partition_the_lesion_and_ring_lies_outside() -> None:
    mask = _sphere((30, 30, 30), (15, 15, 15), 8).astype(np.uint8)
    r = lesion_regions(mask, (1.0, 1.0, 1.0))
    assert not (r["core"] & r["rim"]).any()
    assert ((r["core"] | r["rim"]) == r["lesion"]).all()
    assert not (r["surround"] & r["lesion"]).any()
    # ring between 3 and 10 mm from the surface
    zz = np.nonzero(r["surround"][15, 15])[0]
    assert zz.min() >= 15 - 8 - 10 and zz.max() <= 15 + 8 + 10


def test_known_values_per_region_and_relative_enhancement() -> None:
    shape = (32, 32, 32)
    lesion = _sphere(shape, (16, 16, 16), 9)
    mask = lesion.astype(np.uint8)
    regions = lesion_regions(mask, (1.0, 1.0, 1.0))
    phases = ["NC", "ART", "PV"]
    liver = np.array([55.0, 75.0, 115.0])
    core = np.array([40.0, 120.0, 80.0])
    rim = np.array([45.0, 130.0, 90.0])
    values = np.empty((3, *shape), np.float32)
    for i in range(3):
        values[i] = liver[i]
        values[i][regions["core"]] = core[i]
        values[i][regions["rim"]] = rim[i]
    k = measure_kinetics(values, mask, (1.0, 1.0, 1.0), phases, reference_phase="PV")
    art = k["per_phase"]["ART"]
    assert art["core"] == 120.0 and art["rim"] == 130.0 and art["liver"] == 75.0
    assert art["rim_minus_core"] == 10.0
    assert art["lesion_enhancement"] == art["lesion"] - k["per_phase"]["NC"]["lesion"]
    assert art["liver_enhancement"] == 20.0
    assert np.isclose(art["relative_enhancement"], art["lesion_enhancement"] / 30.0)
    vec, names = kinetics_feature_vector(k)
    assert len(vec) == len(names) == 3 * 7 and names[0] == "NC_lesion"


def test_surround_excludes_fat_in_ct() -> None:
    shape = (32, 32, 32)
    lesion = _sphere(shape, (16, 16, 16), 6)
    values = np.full((1, *shape), 100.0, np.float32)
    values[0, :, :, :10] = -100.0  # fat on one side
    k = measure_kinetics(values, lesion.astype(np.uint8), (1, 1, 1), ["PV"], reference_phase="PV")
    assert k["per_phase"]["PV"]["liver"] == 100.0
    k_mri = measure_kinetics(values, lesion.astype(np.uint8), (1, 1, 1), ["PV"], ct=False)
    assert k_mri["per_phase"]["PV"]["liver"] < 100.0


def _kin(core, rim, liver, phases=("NC", "ART", "PV", "DL")):
    per = {}
    for i, p in enumerate(phases):
        lesion = (core[i] + rim[i]) / 2
        per[p] = {
            "core": core[i],
            "rim": rim[i],
            "liver": liver[i],
            "lesion": lesion,
            "lesion_minus_liver": lesion - liver[i],
            "rim_minus_core": rim[i] - core[i],
        }
    return {"phases": list(phases), "per_phase": per}


def test_named_patterns_textbook_hcc_and_icc(tmp_path) -> None:
    from matplotlib.image import imread

    from liverphase.explain.kinetics import named_patterns, plot_kinetics

    liver = (55, 75, 115, 95)
    hcc = named_patterns(_kin(core=(40, 130, 90, 70), rim=(42, 128, 100, 95), liver=liver))
    assert hcc["arterial_hyperenhancement"] and hcc["washout"] and hcc["capsule"]
    assert not hcc["progressive_delayed_enhancement"] and not hcc["rim_arterial_enhancement"]
    icc = named_patterns(_kin(core=(40, 55, 80, 100), rim=(42, 110, 100, 95), liver=liver))
    assert icc["rim_arterial_enhancement"] and icc["progressive_delayed_enhancement"]
    assert not icc["arterial_hyperenhancement"]
    no_late = named_patterns(
        _kin(core=(40, 130), rim=(40, 130), liver=(55, 75), phases=("NC", "ART"))
    )
    assert no_late["washout"] is None and no_late["capsule"] is None
    png = plot_kinetics(
        _kin(core=(40, 130, 90, 70), rim=(42, 128, 100, 95), liver=liver), tmp_path / "k.png"
    )
    assert imread(png).shape[0] > 100
