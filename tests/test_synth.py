"""Synthetic multi-phase CT: determinism, recorded breathing shifts, kinetics, anatomy, cohorts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from liverphase.errors import ConfigError
from liverphase.io.nifti import open_dataset
from liverphase.io.study import same_grid
from liverphase.synth.anatomy import LESION_LABELS, LIVER_TISSUE, T, render_labels
from liverphase.synth.ct import CTSynthConfig, sample_patient, synth_ct_cohort, synth_ct_study
from liverphase.synth.kinetics import lesion_region_hu, sample_contrast, sample_lesion_profile
from liverphase.synth.shapes import Domain, Grid

TINY = CTSynthConfig.preset("tiny")


def _study(seed: int, label: str = "HCC", config: CTSynthConfig = TINY, **kw):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    patient = sample_patient(rng, config, label)
    study, truth = synth_ct_study(rng, config, f"c{seed}", f"p{seed}", label, patient, **kw)
    return study, truth, patient


def _aligned(study, truth) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Every phase resampled onto the PV grid, undoing the recorded breathing shift."""
    ref = study.phases["PV"]
    out = {}
    for phase, img in study.phases.items():
        shift_xyz = tuple(truth["shifts_mm_zyx"][phase][::-1])
        moved = sitk.Resample(
            sitk.Cast(img, sitk.sitkFloat32),
            ref,
            sitk.TranslationTransform(3, shift_xyz),
            sitk.sitkLinear,
            -1000.0,
        )
        out[phase] = sitk.GetArrayFromImage(moved)
    return out


def test_study_is_deterministic_for_a_seed() -> None:
    a, ta, _ = _study(5)
    b, tb, _ = _study(5)
    c, _, _ = _study(6)
    assert ta == tb
    for phase in a.phases:
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(a.phases[phase]), sitk.GetArrayFromImage(b.phases[phase])
        )
    assert not same_grid(a.phases["PV"], c.phases["PV"]) or not np.array_equal(
        sitk.GetArrayFromImage(a.phases["PV"]), sitk.GetArrayFromImage(c.phases["PV"])
    )


def test_images_look_like_ct_and_mask_is_on_the_pv_grid() -> None:
    study, truth, _ = _study(1)
    assert list(study.phases) == ["NC", "ART", "PV", "DL"]
    for img in study.phases.values():
        arr = sitk.GetArrayFromImage(img)
        assert img.GetPixelID() == sitk.sitkInt16 and arr.min() >= -1024
        assert max(img.GetSize()) <= 48 and img.GetNumberOfPixels() <= 48**3
        assert (arr < -900).mean() > 0.0 or (arr > 0).mean() > 0.5  # air or an abdomen filling it
    mask = sitk.GetArrayFromImage(study.mask)
    assert same_grid(study.mask, study.phases["PV"]) and set(np.unique(mask)) == {0, 1}
    z0, y0, x0, z1, y1, x1 = study.bbox
    assert mask[z0:z1, y0:y1, x0:x1].sum() == mask.sum()
    assert truth["shifts_mm_zyx"]["PV"] == [0, 0, 0]
    assert 10 * 0.8 <= truth["lesion_diameter_mm"] <= 30 * 1.25


def test_recorded_breathing_shift_matches_the_lesion_displacement_in_the_images() -> None:
    """A cyst (dark in every phase) found by threshold in each phase moves by the recorded shift."""
    config = TINY.replace(
        noise_hu=(3.0, 3.0),
        classes=5,
        edge_lesion_fraction=0.0,
        lesion_diameter_mm=(20.0, 28.0),
        difficulty="easy",
    )
    for seed in (3, 4):
        study, truth, _ = _study(seed, "cyst", config)
        pv = study.phases["PV"]
        pv_centre = np.array(_centroid_mm(sitk.GetArrayFromImage(study.mask) > 0, pv))
        for phase, img in study.phases.items():
            arr = sitk.GetArrayFromImage(img)
            dark = (arr > -40) & (arr < 30)
            comps, n = ndimage.label(dark)
            best = max(
                (
                    c
                    for c in range(1, n + 1)
                    if np.linalg.norm(_centroid_mm(comps == c, img) - pv_centre) < 12
                ),
                key=lambda c: (comps == c).sum(),
            )
            moved = _centroid_mm(comps == best, img) - pv_centre
            shift_xyz = np.array(truth["shifts_mm_zyx"][phase][::-1])
            assert np.abs(moved - shift_xyz).max() < max(img.GetSpacing()), (
                phase,
                moved,
                shift_xyz,
            )
            # the renderer's own lesion centroid agrees with the shift too
            own = np.array(truth["lesion_centroid_mm"][phase]) - truth["lesion_centroid_mm"]["PV"]
            assert np.abs(own - shift_xyz).max() < max(img.GetSpacing())


def _centroid_mm(mask: np.ndarray, img: sitk.Image) -> np.ndarray:
    k, j, i = np.argwhere(mask).mean(0)
    return np.array(img.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k))))


def test_class_kinetics_in_an_easy_tiny_cohort() -> None:
    """HCC: arterial hyper-enhancement then washout; ICC: rim arterial, delayed central filling."""
    config = TINY.replace(
        difficulty="easy", edge_lesion_fraction=0.0, lesion_diameter_mm=(16.0, 30.0)
    )
    rel: dict[str, list] = {"HCC": [], "ICC": []}
    for seed in range(6):
        label = "HCC" if seed % 2 == 0 else "ICC"
        study, truth, patient = _study(100 + seed, label, config)
        vals = _aligned(study, truth)
        grid = Grid.of(study.phases["PV"])
        labels = render_labels(patient.anatomy, patient.lesion, Domain(grid=grid))
        lesion = sitk.GetArrayFromImage(study.mask) > 0
        near = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(
            lesion, iterations=2
        )
        liver = (labels == T.LIVER) & near
        dist = ndimage.distance_transform_edt(lesion, sampling=grid.spacing[::-1])
        central = lesion & (dist >= 0.5 * dist.max())
        outer = lesion & (dist <= 2.5)
        rel[label].append(
            {
                p: (
                    v[lesion].mean() - v[liver].mean(),
                    v[central].mean() - v[liver].mean(),
                    v[outer].mean() - v[central].mean(),
                )
                for p, v in vals.items()
            }
        )
    hcc = {p: np.mean([r[p][0] for r in rel["HCC"]]) for p in ("ART", "PV", "DL")}
    assert hcc["ART"] > 10 and hcc["PV"] < -5 and hcc["DL"] < -5, hcc
    icc_central = {p: np.mean([r[p][1] for r in rel["ICC"]]) for p in ("ART", "DL")}
    assert icc_central["DL"] > icc_central["ART"] + 10, icc_central
    icc_rim_art = np.mean([r["ART"][2] for r in rel["ICC"]])
    hcc_rim_art = np.mean([r["ART"][2] for r in rel["HCC"]])
    assert icc_rim_art > 5 and icc_rim_art > hcc_rim_art, (icc_rim_art, hcc_rim_art)


def test_cyst_does_not_enhance() -> None:
    config = TINY.replace(classes=5, difficulty="easy", lesion_diameter_mm=(18.0, 26.0))
    study, truth, _ = _study(8, "cyst", config)
    vals = _aligned(study, truth)
    core = ndimage.binary_erosion(sitk.GetArrayFromImage(study.mask) > 0, iterations=2)
    means = {p: float(v[core].mean()) for p, v in vals.items()}
    assert -5 < means["NC"] < 25 and max(means.values()) - min(means.values()) < 10, means


def test_lesion_lies_inside_the_liver_and_edge_lesions_touch_its_edge() -> None:
    for edge in (0.0, 1.0):
        config = TINY.replace(edge_lesion_fraction=edge)
        for seed in range(3):
            study, truth, patient = _study(200 + seed, ("HCC", "ICC")[seed % 2], config)
            domain = Domain(grid=Grid.of(study.phases["PV"]))
            without = render_labels(patient.anatomy, None, domain)
            lesion = sitk.GetArrayFromImage(study.mask) > 0
            assert np.isin(without[lesion], (*LIVER_TISSUE, T.DUCT)).all()
            shell = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
            outside = ~np.isin(without[shell], (*LIVER_TISSUE, T.DUCT, T.GALLBLADDER))
            assert truth["lesion_touches_edge"] == bool(edge)
            if edge:
                assert outside.mean() > 0.02
            else:
                assert outside.mean() < 0.1
            with_lesion = render_labels(patient.anatomy, patient.lesion, domain)
            np.testing.assert_array_equal(np.isin(with_lesion, LESION_LABELS), lesion)


def test_absolute_hu_separates_easy_classes_but_not_realistic_ones() -> None:
    """At realistic difficulty bolus, timing and atypical lesions blur absolute HU."""
    aucs = {}
    for difficulty in ("easy", "realistic"):
        rng = np.random.default_rng(0)
        art, y, variants = [], [], []
        for i in range(400):
            label = ("HCC", "ICC")[i % 2]
            contrast = sample_contrast(rng, difficulty)
            profile = sample_lesion_profile(rng, label, difficulty, 0.2, 25.0)
            art.append(lesion_region_hu(profile, contrast)[T.LESION_CORE][1])
            y.append(i % 2)
            variants.append(profile.variant)
        aucs[difficulty] = 1 - roc_auc_score(y, art)
        atypical = np.mean([v != "typical" for v in variants])
        assert (atypical == 0) if difficulty == "easy" else (0.12 < atypical < 0.28)
    assert aucs["easy"] > 0.99 and aucs["realistic"] < 0.9, aucs


def test_fixed_grid_and_config_validation() -> None:
    config = TINY.replace(grid_size=(40, 36, 12), grid_spacing_mm=(2.0, 2.0, 5.0))
    study, _, _ = _study(9, config=config)
    for img in study.phases.values():
        assert img.GetSize() == (40, 36, 12) and img.GetSpacing() == (2.0, 2.0, 5.0)
    with pytest.raises(ConfigError, match="preset"):
        CTSynthConfig.preset("huge")
    with pytest.raises(ConfigError, match="difficulty"):
        CTSynthConfig.preset("tiny", difficulty="hard")
    with pytest.raises(ConfigError, match="classes"):
        CTSynthConfig.preset("tiny", classes=3)
    with pytest.raises(ConfigError, match="lesion_diameter_mm"):
        CTSynthConfig.preset("tiny", lesion_diameter_mm=(10.0, 80.0))
    default = CTSynthConfig.preset("default")
    assert default.fov_mm == (240.0, 200.0, 96.0) and default.inplane_spacing_mm == (0.6, 1.8)


# ---- cohorts -----------------------------------------------------------------------------------------
def _cases_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "cases.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_cohort_layout_and_determinism(tmp_path: Path) -> None:
    a = synth_ct_cohort(tmp_path / "a", cases=4, seed=2, preset="tiny", flip_fraction=0.5)
    b = synth_ct_cohort(tmp_path / "b", cases=4, seed=2, preset="tiny", flip_fraction=0.5)
    assert (a / "cases.csv").read_text() == (b / "cases.csv").read_text()
    assert (
        json.loads((a / "synth.json").read_text())["cases"]
        == json.loads((b / "synth.json").read_text())["cases"]
    )
    for name in sorted(p.name for p in (a / "imagesTr").iterdir()):
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(a / "imagesTr" / name))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(b / "imagesTr" / name))),
        )
    ds = open_dataset(a)
    assert ds.phases == ["NC", "ART", "PV", "DL"] and ds.reference_phase == "PV"
    assert ds.class_names == ["HCC", "ICC"]
    rows = _cases_csv(a)
    assert sorted(r["label"] for r in rows) == ["HCC", "HCC", "ICC", "ICC"]
    for row in rows:
        assert row["shift_PV_mm"] == "0 0 0"
        for phase in ("NC", "ART", "DL"):
            dz, dy, dx = (float(v) for v in row[f"shift_{phase}_mm"].split())
            assert abs(dz) <= 6.0 and abs(dz) >= abs(dx)
        study = ds.load_study(row["case_id"])
        assert study.mask is not None and same_grid(study.mask, study.phases["PV"])
        origins = {img.GetOrigin() for img in study.phases.values()}
        assert len(origins) > 1  # phases sit at different positions
    assert any(r["flip_axes"] for r in rows)
    # refuses to overwrite a folder that is not an earlier cohort; replaces an earlier one
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an earlier synthetic cohort"):
        synth_ct_cohort(tmp_path / "other", cases=1, seed=0, preset="tiny")
    synth_ct_cohort(a, cases=1, seed=0, preset="tiny")
    assert len(_cases_csv(a)) == 1


def test_two_study_patients_and_five_classes(tmp_path: Path) -> None:
    root = synth_ct_cohort(
        tmp_path / "c",
        cases=7,
        seed=4,
        classes=5,
        preset="tiny",
        second_study_fraction=0.8,
        flip_fraction=0.0,
    )
    rows = _cases_csv(root)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    pairs = [v for v in by_patient.values() if len(v) == 2]
    assert pairs and all(v[0]["label"] == v[1]["label"] for v in pairs)
    truth = {c["case_id"]: c for c in json.loads((root / "synth.json").read_text())["cases"]}
    for first, second in pairs:
        t1, t2 = truth[first["case_id"]], truth[second["case_id"]]
        assert t1["lesion_centre_mm"] == t2["lesion_centre_mm"]  # same patient, same lesion
        assert t2["lesion_diameter_mm"] >= t1["lesion_diameter_mm"]
    labels = {r["label"] for r in rows}
    assert labels <= {"HCC", "ICC", "hemangioma", "cyst", "metastasis"} and len(labels) >= 4
    assert open_dataset(root).class_names == ["HCC", "ICC", "hemangioma", "cyst", "metastasis"]
