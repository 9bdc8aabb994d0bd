"""Synthetic DCE-MRI (PRE, ART, PV, TP, HBP): layout, determinism, signal per phase, Rician noise,
unlabeled studies, sites, class correlates, DICOM export."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from liverphase.errors import ConfigError
from liverphase.io.dicom import read_dicom_study
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.study import same_grid
from liverphase.phases import DCE_PHASES
from liverphase.synth.anatomy import LESION_LABELS, T
from liverphase.synth.mri_dce import DCESynthConfig, synth_dce_cohort, synth_dce_study
from liverphase.synth.mri_dce_kinetics import (
    DCE_CLASSES,
    PERITUMORAL,
    SITES,
    DCEContrast,
    dce_luts,
    sample_hcc_features,
)
from liverphase.synth.mri_signal import RAYLEIGH_MEAN, bias_field, random_bias_waves, rician
from liverphase.synth.shapes import Grid, member

TINY = DCESynthConfig.preset("tiny")
# coarse voxels over the whole abdomen and some air around it (aorta, spleen, background)
WIDE = TINY.replace(
    center_on="body",
    fov_mm=(360.0, 300.0, 140.0),
    inplane_spacing_mm=(5.0, 5.0),
    slice_spacing_mm=(5.0, 5.0),
    lesion_diameter_mm=(12.0, 30.0),
)


@pytest.fixture(scope="module")
def cohort_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site A: 8 labeled studies (the first as DICOM too) and 3 unlabeled."""
    out = tmp_path_factory.mktemp("dce") / "a"
    return synth_dce_cohort(out, cases=8, seed=5, unlabeled=3, site="A", dicom=1, preset="tiny")


@pytest.fixture(scope="module")
def cohort_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site B, same seed: 6 labeled studies."""
    return synth_dce_cohort(
        tmp_path_factory.mktemp("dce") / "b", cases=6, seed=5, site="B", preset="tiny"
    )


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "cases.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _truth(root: Path) -> list[dict]:
    return json.loads((root / "synth.json").read_text())["cases"]


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img).astype(np.float64)


# ---- layout -----------------------------------------------------------------------------------------
def test_layout_dataset_json_and_cases_csv(cohort_a: Path) -> None:
    meta = json.loads((cohort_a / "dataset.json").read_text())
    assert meta["channel_names"] == {str(k): p for k, p in enumerate(DCE_PHASES)}
    assert meta["modality"] == "MR" and meta["reference_phase"] == "PV"
    assert meta["class_names"] == ["non-proliferative", "proliferative"]
    assert meta["labels"] == {"background": 0, "lesion": 1} and meta["numTraining"] == 11
    rows = _rows(cohort_a)
    assert len(rows) == 11 and {r["site"] for r in rows} == {"A"}
    for r in rows:
        cid = r["case_id"]
        for k in range(5):
            assert (cohort_a / "imagesTr" / f"{cid}_{k:04d}.nii.gz").is_file()
        mask = read_image(cohort_a / "labelsTr" / f"{cid}.nii.gz")
        pv = read_image(cohort_a / "imagesTr" / f"{cid}_0002.nii.gz")
        assert same_grid(mask, pv) and set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 1}
        assert r["bbox"] and pv.GetPixelID() == sitk.sitkInt16
    # every case's truth is in synth.json, features included
    truth = _truth(cohort_a)
    assert [t["case_id"] for t in truth] == [r["case_id"] for r in rows]
    assert {"diameter_mm", "rim_aphe", "necrosis", "peritumoral_hypo"} <= set(truth[0]["features"])


def test_labeled_cohort_reads_back_with_open_dataset(cohort_b: Path) -> None:
    ds = open_dataset(cohort_b)
    assert ds.phases == list(DCE_PHASES) and ds.modality == "mri"
    assert ds.class_names == list(DCE_CLASSES)
    study = ds.load_study(ds.cases[0].case_id)
    assert list(study.phases) == list(DCE_PHASES) and study.label in DCE_CLASSES


def test_unlabeled_cohort_reads_back_with_open_dataset(cohort_a: Path) -> None:
    ds = open_dataset(cohort_a)
    for rec in ds.cases:
        study = ds.load_study(rec.case_id)
        assert len(study.phases) == 5 and study.mask is not None
    assert [c.label for c in ds.cases][-3:] == [None, None, None]


def test_unlabeled_rows_have_empty_labels(cohort_a: Path) -> None:
    rows, truth = _rows(cohort_a), _truth(cohort_a)
    assert [r["label"] for r in rows[-3:]] == ["", "", ""]
    assert all(r["label"] in DCE_CLASSES for r in rows[:8])
    assert [t["labeled"] for t in truth] == [True] * 8 + [False] * 3
    assert all(t["label"] in DCE_CLASSES for t in truth)  # the hidden class is kept as truth
    labeled_patients = {r["patient_id"] for r in rows[:8]}
    assert not labeled_patients & {r["patient_id"] for r in rows[8:]}


def test_classes_balanced_among_labeled_studies(cohort_a: Path, cohort_b: Path) -> None:
    for root, n in ((cohort_a, 8), (cohort_b, 6)):
        labels = [r["label"] for r in _rows(root) if r["label"]]
        assert len(labels) == n
        assert abs(labels.count("proliferative") - labels.count("non-proliferative")) <= 2


# ---- determinism ------------------------------------------------------------------------------------
def test_study_is_deterministic_for_a_seed() -> None:
    def make(seed: int) -> tuple:
        rng = np.random.default_rng(seed)
        return synth_dce_study(rng, TINY, "c", "p", "proliferative", site="B")

    (a, ta), (b, tb), (c, _) = make(3), make(3), make(4)
    assert ta == tb
    for phase in DCE_PHASES:
        np.testing.assert_array_equal(_arr(a.phases[phase]), _arr(b.phases[phase]))
    assert not np.array_equal(_arr(a.phases["PV"]), _arr(c.phases["PV"]))


def test_cohort_is_deterministic(tmp_path: Path) -> None:
    a = synth_dce_cohort(tmp_path / "a", cases=2, seed=9, unlabeled=1, preset="tiny")
    b = synth_dce_cohort(tmp_path / "b", cases=2, seed=9, unlabeled=1, preset="tiny")
    assert (a / "cases.csv").read_text() == (b / "cases.csv").read_text()
    assert (a / "synth.json").read_text() == (b / "synth.json").read_text()
    for path in sorted((a / "imagesTr").iterdir()):
        np.testing.assert_array_equal(
            _arr(read_image(path)), _arr(read_image(b / "imagesTr" / path.name))
        )


# ---- signal per phase -------------------------------------------------------------------------------
def _label_means(study, label: int | tuple[int, ...], erode: bool = True) -> dict[str, float]:  # noqa: ANN001
    out = {}
    for phase in DCE_PHASES:
        where = member(study.metadata["labels"][phase], np.atleast_1d(label).tolist())
        # interior voxels only: partial volume blurs each structure's edge into its neighbours
        if erode and where.sum() > 50:
            where = ndimage.binary_erosion(where, iterations=1)
        out[phase] = float(_arr(study.phases[phase])[where].mean()) if where.any() else np.nan
    return out


def _lesion_and_ring(study) -> tuple[dict[str, float], dict[str, float]]:  # noqa: ANN001
    """Mean lesion signal and mean signal of the liver within 3 voxels of it, per phase (the
    coil bias is about the same in both)."""
    lesion, ring = {}, {}
    for phase in DCE_PHASES:
        labels, arr = study.metadata["labels"][phase], _arr(study.phases[phase])
        inside = member(labels, LESION_LABELS)
        near = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(inside)
        lesion[phase] = float(arr[inside].mean())
        ring[phase] = float(arr[near & (labels == T.LIVER)].mean())
    return lesion, ring


@pytest.mark.parametrize(("seed", "site"), [(1, "A"), (2, "B"), (3, "A"), (4, "B")])
def test_signal_ordering_over_phases(seed: int, site: str) -> None:
    rng = np.random.default_rng(seed)
    study, _ = synth_dce_study(rng, WIDE, "c", "p", DCE_CLASSES[seed % 2], site=site)
    liver = _label_means(study, T.LIVER)
    assert liver["PRE"] < liver["ART"] < liver["PV"] < liver["HBP"], liver
    aorta = _label_means(study, T.AORTA)
    assert max(aorta, key=aorta.get) == "ART", aorta  # early or late arterial: aorta peaks
    portal = _label_means(study, (T.PORTAL_VEIN, T.PORTAL_BRANCH), erode=False)
    assert max(portal, key=portal.get) == "PV", portal
    # HBP: the spleen enhances less than the liver (the ratio to PRE cancels the coil bias)
    spleen = _label_means(study, T.SPLEEN)
    assert spleen["HBP"] / spleen["PRE"] < liver["HBP"] / liver["PRE"]
    lesion, ring = _lesion_and_ring(study)
    assert lesion["HBP"] < 0.9 * ring["HBP"] and lesion["PRE"] < ring["PRE"]
    # fat bright-ish, cerebrospinal fluid dark on T1
    fat, csf = _label_means(study, T.FAT)["PRE"], _label_means(study, T.CANAL, False)["PRE"]
    assert csf < 0.5 * liver["PRE"] < fat


def test_lesion_hypointense_in_hbp_for_both_classes() -> None:
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        label, site = DCE_CLASSES[seed % 2], "AB"[seed // 2 % 2]
        study, truth = synth_dce_study(rng, TINY, "c", "p", label, site=site)
        lesion, ring = _lesion_and_ring(study)
        assert lesion["HBP"] < 0.9 * ring["HBP"], (label, truth["features"])


def test_arterial_timing_changes_vessel_and_lesion_signal() -> None:
    site = SITES["A"]
    early, late = DCEContrast(timing=0.0), DCEContrast(timing=1.0)
    f = sample_hcc_features(np.random.default_rng(0), False, (10.0, 50.0))
    lut_e, lut_l = dce_luts(early, f, site), dce_luts(late, f, site)
    art = DCE_PHASES.index("ART")
    assert lut_e[art, T.AORTA] > lut_l[art, T.AORTA]  # early arterial: aorta brightest
    assert lut_e[art, T.LESION_RIM] < lut_l[art, T.LESION_RIM]  # late: tumour enhances more
    assert lut_e[art, T.PORTAL_VEIN] < lut_l[art, T.PORTAL_VEIN]
    np.testing.assert_allclose(lut_e[[0, 2, 3, 4]], lut_l[[0, 2, 3, 4]])  # only ART moves


# ---- noise, bias, sites -----------------------------------------------------------------------------
def test_rician_noise_has_a_positive_background() -> None:
    rng = np.random.default_rng(0)
    zero = rician(np.zeros(200_000, np.float32), 10.0, rng)
    assert zero.min() >= 0 and abs(zero.mean() - 10 * RAYLEIGH_MEAN) < 0.1
    assert abs(zero.var() - (2 - np.pi / 2) * 100) < 1.0  # Rayleigh variance
    bright = rician(np.full(200_000, 200.0, np.float32), 10.0, rng)
    assert abs(bright.mean() - np.sqrt(200**2 + 10**2)) < 0.2  # high SNR: about Gaussian
    # in a rendered study, air far from the body is Rayleigh with the recorded sigma
    study, truth = synth_dce_study(np.random.default_rng(7), WIDE, "c", "p", "proliferative")
    for phase in ("PRE", "HBP"):
        air = ndimage.binary_erosion(study.metadata["labels"][phase] == T.AIR, iterations=2)
        values = _arr(study.phases[phase])[air]
        assert air.sum() > 500 and values.min() >= 0
        assert values.mean() == pytest.approx(truth["noise_sigma"] * RAYLEIGH_MEAN, rel=0.1)


def test_bias_field_is_smooth_and_scales_with_strength() -> None:
    grid = Grid((40, 40, 10), (5.0, 5.0, 5.0), (-100.0, -100.0, -25.0))
    waves = random_bias_waves(np.random.default_rng(1))
    weak, strong = bias_field(grid, waves, 0.05), bias_field(grid, waves, 0.3)
    assert weak.shape == grid.shape and (weak > 0).all()
    np.testing.assert_allclose(np.log(strong), np.log(weak) * 6, rtol=1e-4, atol=1e-5)
    assert np.abs(np.diff(np.log(strong), axis=2)).max() < 0.05  # no jumps between voxels


def test_site_b_differs_from_site_a_and_ids_never_collide(cohort_a: Path, cohort_b: Path) -> None:
    ta, tb = _truth(cohort_a), _truth(cohort_b)
    for truths, site in ((ta, SITES["A"]), (tb, SITES["B"])):
        for t in truths:
            assert t["site"] == site.name and t["field_strength_t"] == site.field_strength_t
            assert site.bias[0] <= t["bias_strength"] <= site.bias[1]
            assert site.noise[0] <= t["noise_rel"] <= site.noise[1]
            assert site.timing[0] <= t["contrast"]["timing"] <= site.timing[1]
    assert max(t["bias_strength"] for t in ta) < min(t["bias_strength"] for t in tb)
    assert np.mean([t["noise_rel"] for t in ta]) > np.mean([t["noise_rel"] for t in tb])
    inplane = {s: [t["grids"]["PV"]["spacing"][0] for t in tr] for s, tr in (("A", ta), ("B", tb))}
    assert min(inplane["A"]) >= TINY.inplane_spacing_mm[0] > max(inplane["B"])
    thick = [t["grids"]["PV"]["spacing"][2] for t in tb]
    assert min(thick) >= TINY.slice_spacing_mm[0] * SITES["B"].spacing_factor[1]
    # 3 T: stronger unenhanced T1 contrast between tissues (spleen/liver ratio further from 1)
    a = dce_luts(DCEContrast(), None, SITES["A"])
    b = dce_luts(DCEContrast(), None, SITES["B"])
    assert b[0, T.SPLEEN] / b[0, T.LIVER] < a[0, T.SPLEEN] / a[0, T.LIVER] < 1
    # ids: site in the prefix, no shared case or patient id, other patients for the same seed
    ra, rb = _rows(cohort_a), _rows(cohort_b)
    assert all(r["case_id"].startswith("DA5-") for r in ra)
    assert all(r["case_id"].startswith("DB5-") for r in rb)
    assert not {r["case_id"] for r in ra} & {r["case_id"] for r in rb}
    assert not {r["patient_id"] for r in ra} & {r["patient_id"] for r in rb}
    assert ta[0]["lesion_centre_mm"] != tb[0]["lesion_centre_mm"]


def test_breathing_shifts_are_recorded(cohort_a: Path) -> None:
    for t in _truth(cohort_a)[:4]:
        for phase in DCE_PHASES:
            own = np.subtract(t["lesion_centroid_mm"][phase], t["lesion_centroid_mm"]["PV"])
            shift_xyz = np.array(t["shifts_mm_zyx"][phase][::-1])
            assert np.abs(own - shift_xyz).max() < max(t["grids"][phase]["spacing"])


# ---- class correlates -------------------------------------------------------------------------------
def test_class_correlates_exist_on_average_but_overlap() -> None:
    rng = np.random.default_rng(0)
    draws = {c: [sample_hcc_features(rng, c, (10.0, 56.0)) for _ in range(1500)] for c in (0, 1)}
    names = ("diameter_mm", "rim_aphe", "necrosis", "margin_irregularity", "peritumoral_hypo")
    x = np.array([[float(getattr(f, n)) for n in names] for c in (0, 1) for f in draws[c]])
    y = np.repeat([0, 1], 1500)
    for k, name in enumerate(names):
        assert x[y == 1, k].mean() > x[y == 0, k].mean(), name  # proliferative: more of each
        assert 0.58 < roc_auc_score(y, x[:, k]) < 0.76, name  # ... but no feature separates
    capsule = [float(f.capsule) for c in (0, 1) for f in draws[c]]
    assert abs(roc_auc_score(y, capsule) - 0.5) < 0.05  # a nuisance feature
    x[:, 0] = np.log(x[:, 0])
    half = np.arange(len(y)) % 2 == 0  # fit on half, score the other half
    model = LogisticRegression(max_iter=1000).fit(x[half], y[half])
    combined = roc_auc_score(y[~half], model.predict_proba(x[~half])[:, 1])
    assert 0.8 < combined < 0.92


def test_features_show_in_the_signal() -> None:
    site, contrast = SITES["A"], DCEContrast(timing=0.8)
    base = sample_hcc_features(np.random.default_rng(1), True, (10.0, 50.0))
    art, pv, hbp = (DCE_PHASES.index(p) for p in ("ART", "PV", "HBP"))
    rim = dce_luts(contrast, replace(base, rim_aphe=True), site)
    diffuse = dce_luts(contrast, replace(base, rim_aphe=False), site)
    assert rim[art, T.LESION_RIM] > 1.5 * rim[art, T.LESION_CORE]
    assert diffuse[art, T.LESION_RIM] == diffuse[art, T.LESION_CORE]
    necrotic = dce_luts(contrast, replace(base, necrosis=True), site)
    assert necrotic[pv, T.LESION_CENTER] < 0.6 * necrotic[pv, T.LESION_CORE]
    peri = dce_luts(contrast, replace(base, peritumoral_uptake=0.4), site)
    assert peri[hbp, PERITUMORAL] < peri[hbp, T.LIVER]
    np.testing.assert_allclose(peri[:hbp, PERITUMORAL], peri[:hbp, T.LIVER])


def test_peritumoral_band_is_rendered_dark_in_hbp() -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        study, truth = synth_dce_study(rng, TINY, "c", "p", "proliferative")
        if truth["features"]["peritumoral_hypo"]:
            break
    else:
        raise AssertionError("no peritumoral hypointensity in 40 proliferative draws")
    peri, liver = _label_means(study, PERITUMORAL, erode=False), _label_means(study, T.LIVER)
    assert peri["HBP"] < 0.9 * liver["HBP"]
    assert peri["PV"] == pytest.approx(liver["PV"], rel=0.12)  # only HBP is affected


# ---- DICOM and errors -------------------------------------------------------------------------------
def test_dicom_study_reads_back_with_mr_phase_names(cohort_a: Path) -> None:
    ds_rows = _rows(cohort_a)
    case = ds_rows[0]["case_id"]
    assert sorted(p.name for p in (cohort_a / "dicom").iterdir()) == [case, f"{case}_mask.nii.gz"]
    dicom = read_dicom_study(cohort_a / "dicom" / case)
    assert list(dicom.phases) == list(DCE_PHASES)
    assert dicom.metadata["modality"] == "MR" and dicom.patient_id == ds_rows[0]["patient_id"]
    for k, phase in enumerate(DCE_PHASES):
        nifti = read_image(cohort_a / "imagesTr" / f"{case}_{k:04d}.nii.gz")
        np.testing.assert_array_equal(_arr(dicom.phases[phase]), _arr(nifti))
        assert same_grid(dicom.phases[phase], nifti, tol=1e-3)
    mask = read_image(cohort_a / "dicom" / f"{case}_mask.nii.gz")
    assert same_grid(mask, dicom.phases["PV"], tol=1e-3)
    offsets = list(dicom.metadata["acquisition_offsets_s"].values())
    assert offsets == sorted(offsets) and offsets[-1] > 1000  # HBP about 20 min later


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site"):
        synth_dce_cohort(tmp_path / "x", cases=2, seed=0, site="C", preset="tiny")
    with pytest.raises(ConfigError, match="dicom"):
        synth_dce_cohort(tmp_path / "x", cases=2, seed=0, dicom=3, preset="tiny")
    with pytest.raises(ConfigError, match="preset"):
        synth_dce_cohort(tmp_path / "x", cases=2, seed=0, preset="huge")
    with pytest.raises(ConfigError, match="lesion_diameter_mm"):
        DCESynthConfig.preset("tiny", lesion_diameter_mm=(10.0, 90.0))
    assert not (tmp_path / "x").exists()
