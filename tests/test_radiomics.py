"""Radiomics baseline: liver shape, normalised first-order and GLCM features, and its CV on a run's folds."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import liverphase.evaluate.radiomics as rad_cv
from liverphase.data.splits import patient_folds, splits_from_json, write_splits
from liverphase.io.nifti import flip_storage
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.study import Study
from liverphase.preprocess.radiomics import (
    FIRST_ORDER_FEATURES,
    GLCM_FEATURES,
    feature_names,
    radiomics_features,
    sequence_features,
    shape_features,
)

STAGES = ("mild", "moderate", "severe")


def _image(arr: np.ndarray, spacing, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    return img


def _coords(shape, spacing, centre_shift=(0.3, 0.2, 0.1)):
    """Physical x, y, z (mm) of voxel centres relative to a point near the volume's centre."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (
        (x - shape[2] / 2 + centre_shift[0]) * spacing[0],
        (y - shape[1] / 2 + centre_shift[1]) * spacing[1],
        (z - shape[0] / 2 + centre_shift[2]) * spacing[2],
    )


def _bumpy_ball(radius: float, amplitude: float, frequency: int) -> np.ndarray:
    """A ball on a 1 mm grid whose radius swings by ±amplitude·radius with the angles."""
    px, py, pz = _coords((64, 64, 64), (1.0, 1.0, 1.0))
    r = np.sqrt(px**2 + py**2 + pz**2) + 1e-9
    theta, phi = np.arccos(pz / r), np.arctan2(py, px)
    bump = 1 + amplitude * np.sin(frequency * theta) * np.cos(frequency * phi)
    return (r <= radius * bump).astype(np.uint8)


# ---------------------------------------------------------------- shape


def test_shape_volume_elongation_flatness_and_feret_known_answers():
    spacing = (0.8, 1.1, 2.5)
    shape = (40, 90, 110)
    px, py, pz = _coords(shape, spacing)
    a, b, c = 30.0, 20.0, 12.0
    mask = ((px / a) ** 2 + (py / b) ** 2 + (pz / c) ** 2 <= 1).astype(np.uint8)
    f = shape_features(_image(mask, spacing))
    # volume: the voxel count times the voxel volume, in ml
    assert f["volume_ml"] == pytest.approx(mask.sum() * np.prod(spacing) / 1000.0, rel=1e-12)
    # a solid ellipsoid's principal moments are a²/5, b²/5, c²/5: sqrt ratios a/b and b/c
    assert f["elongation"] == pytest.approx(a / b, rel=0.02)
    assert f["flatness"] == pytest.approx(b / c, rel=0.03)
    # the longest chord is the major axis (voxel centres: up to one voxel short)
    assert 2 * a - 2 * spacing[0] <= f["feret_mm"] <= 2 * a + 1e-6
    ball = shape_features(_image(_bumpy_ball(22.0, 0.0, 1), (1.0, 1.0, 1.0)))
    assert ball["sphericity"] == pytest.approx(1.0, abs=0.02)
    assert ball["surface_cm2"] == pytest.approx(4 * math.pi * 22.0**2 / 100, rel=0.03)
    assert f["sphericity"] < 0.9


def test_bumpy_surface_scores_higher_irregularity_than_smooth():
    smooth = shape_features(_image(_bumpy_ball(22.0, 0.0, 12), (1.0, 1.0, 1.0)))
    mild = shape_features(_image(_bumpy_ball(22.0, 0.03, 12), (1.0, 1.0, 1.0)))
    bumpy = shape_features(_image(_bumpy_ball(22.0, 0.06, 12), (1.0, 1.0, 1.0)))
    # the smoothed mask keeps the volume, so a smooth ball barely differs from it
    assert smooth["surface_ratio"] == pytest.approx(1.0, abs=0.01)
    assert smooth["nodularity_mm"] < 0.05
    assert smooth["surface_ratio"] < mild["surface_ratio"] < bumpy["surface_ratio"]
    assert smooth["nodularity_mm"] < mild["nodularity_mm"] < bumpy["nodularity_mm"]
    assert bumpy["sphericity"] < smooth["sphericity"]
    # the bumps barely change the volume: irregularity is not size
    assert bumpy["volume_ml"] == pytest.approx(smooth["volume_ml"], rel=0.01)


# ---------------------------------------------------------------- intensity and texture


def _disc_mask(shape) -> np.ndarray:
    _, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    disc = (y - shape[1] / 2 + 0.5) ** 2 + (x - shape[2] / 2 + 0.5) ** 2 <= 12**2
    return np.broadcast_to(disc, shape).astype(np.uint8)


def _texture(pattern: np.ndarray) -> dict[str, float]:
    """sequence_features of a pattern inside discs, on a grid already at 1.5 mm in-plane."""
    spacing = (1.5, 1.5, 3.0)
    mask = _disc_mask(pattern.shape)
    return sequence_features(_image(pattern.astype(np.float32), spacing), _image(mask, spacing))


def test_glcm_of_stripes_matches_hand_computation_and_exceeds_homogeneous():
    shape = (4, 32, 32)
    x = np.arange(shape[2])
    fine = np.broadcast_to(np.where(x % 2 == 0, 100.0, 200.0), shape)
    coarse = np.broadcast_to(np.where((x // 4) % 2 == 0, 100.0, 200.0), shape)
    flat = np.full(shape, 100.0)
    f, c, h = _texture(fine), _texture(coarse), _texture(flat)
    # 1-pixel stripes quantise to levels 0 and 31: at distance 1, every liver pair differs along
    # 0°, 45° and 135° and none along 90°; at distance 2 (offsets (0,2), (2,0), (2,±2)) none differs
    assert f["contrast_d1"] == pytest.approx(0.75 * 31**2)
    assert f["dissimilarity_d1"] == pytest.approx(0.75 * 31)
    assert f["homogeneity_d1"] == pytest.approx(0.25 + 0.75 / (1 + 31**2))
    assert f["correlation_d1"] == pytest.approx(0.25 * 1 + 0.75 * -1)
    assert f["contrast_d2"] == pytest.approx(0.0, abs=1e-12)
    assert f["correlation_d2"] == pytest.approx(1.0)
    # a uniform liver is one grey level: no contrast, all energy
    assert h["contrast_d1"] == 0.0 and h["energy_d1"] == pytest.approx(1.0)
    assert h["asm_d2"] == pytest.approx(1.0) and h["homogeneity_d2"] == pytest.approx(1.0)
    assert h["std"] == 0.0 and h["entropy"] == 0.0 and h["uniformity"] == 1.0
    assert f["contrast_d1"] > c["contrast_d1"] > h["contrast_d1"]


def _textured_liver(seed: int = 0):
    """A noisy, smoothly textured ellipsoidal liver at 0.9 x 0.9 x 3 mm (texture is resampled)."""
    spacing = (0.9, 0.9, 3.0)
    shape = (16, 80, 90)
    rng = np.random.default_rng(seed)
    px, py, pz = _coords(shape, spacing)
    mask = ((px / 35) ** 2 + (py / 30) ** 2 + (pz / 20) ** 2 <= 1).astype(np.uint8)
    tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), (0.5, 2, 2))
    arr = np.where(mask, 500 * (1 + 0.15 * tex / tex.std()), 80.0) + rng.normal(0, 5, shape)
    return arr.astype(np.float32), mask, spacing


def test_normalisation_makes_features_invariant_to_intensity_scale_and_storage_flips():
    arr, mask, spacing = _textured_liver()
    base = sequence_features(_image(arr, spacing), _image(mask, spacing))
    tripled = sequence_features(_image(arr * 3, spacing), _image(mask, spacing))
    names = [*FIRST_ORDER_FEATURES, *GLCM_FEATURES]
    assert all(np.isfinite(base[n]) for n in names)
    # float32 voxels: 3·x rounds to the 24-bit mantissa, so agreement to 1e-6, not exactly
    np.testing.assert_allclose([tripled[n] for n in names], [base[n] for n in names], rtol=1e-6)
    # the median is the unit: mean and percentiles sit around 1 whatever the scanner scale
    assert base["p10"] < 1.0 < base["p90"] and base["mean"] == pytest.approx(1.0, abs=0.05)
    # the same study stored with x and z reversed has the same axial slices, hence features
    img, msk = _image(arr, spacing), _image(mask, spacing)
    flipped = sequence_features(flip_storage(img, (0, 2)), flip_storage(msk, (0, 2)))
    np.testing.assert_allclose([flipped[n] for n in names], [base[n] for n in names], rtol=1e-9)


def test_missing_sequence_gives_nan_features_and_the_classifier_imputes_them():
    arr, mask, spacing = _textured_liver()
    study = Study(
        "c0", {"T1W": _image(arr, spacing)}, mask=_image(mask, spacing), reference_phase="T1W"
    )
    f = radiomics_features(study, ["T1W", "T2W"])
    assert list(f) == feature_names(["T1W", "T2W"])
    assert all(math.isnan(v) for k, v in f.items() if k.startswith("T2W_"))
    assert all(np.isfinite(v) for k, v in f.items() if not k.startswith("T2W_"))
    # the classifier runs with NaN columns; missingness becomes indicator features it can use:
    # here every severe case lacks the second block, the only difference between the classes
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    x = rng.normal(0, 1, (30, 6))
    x[y == 2, 3:] = np.nan
    model = rad_cv.make_classifier(1.0).fit(x, y)
    np.testing.assert_array_equal(model.named_steps["impute"].indicator_.features_, [3, 4, 5])
    probs = rad_cv.full_probs(model, x, 3)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0)
    assert (probs[y == 2, 2] > 0.9).all()
    # a sequence no training case has: its columns are kept (as 0), the fit neither fails nor warns
    x[:, 4] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = rad_cv.make_classifier(1.0).fit(x, y)
    assert model.named_steps["scale"].n_features_in_ == 6 + 3


def test_inner_c_search_is_grouped_by_patient_and_sees_only_its_rows(monkeypatch):
    seen = []

    class Recording(rad_cv.GridSearchCV):
        def fit(self, x, y=None, **kw):  # noqa: ANN001, ANN201
            seen.append((np.array(x), list(self.cv)))
            return super().fit(x, y, **kw)

    monkeypatch.setattr(rad_cv, "GridSearchCV", Recording)
    rng = np.random.default_rng(1)
    groups = np.repeat([f"P{i}" for i in range(15)], 2)  # 2 scans per patient
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(0, 1, (30, 4)) + y[:, None]
    model, c = rad_cv.fit_fold(x, y, groups, 3, seed=0)
    assert c in rad_cv.C_GRID
    ((got_x, splits),) = seen
    np.testing.assert_array_equal(got_x, x)
    assert len(splits) == 5  # 5 patients per class: 5 inner folds
    tested = np.concatenate([te for _, te in splits])
    assert sorted(tested) == list(range(30))  # the inner test folds partition the rows
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
    # a class with a single patient: no inner CV can hold it out, C stays at 1
    _, c_single = rad_cv.fit_fold(x[:22], y[:22], groups[:22], 3)
    assert c_single == 1.0 and len(seen) == 1


# ---------------------------------------------------------------- cross-validation on a run's folds


def _stage_study(i: int, rng: np.random.Generator) -> Study:
    """Stage i % 3: heterogeneity of both sequences and a smaller liver grow with the stage; each
    scan has its own scanner scale; T2W lies on another grid than the T1W mask."""
    stage = i % 3
    phases = {}
    for seq, spacing, origin in (
        ("T1W", (2.0, 2.0, 4.0), (0.0, 0.0, 0.0)),
        ("T2W", (2.5, 2.5, 5.0), (1.3, -0.7, 2.0)),
    ):
        shape = (
            int(round(64 / spacing[2])),
            int(round(96 / spacing[1])),
            int(round(96 / spacing[0])),
        )
        z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
        px = origin[0] + x * spacing[0] - 48
        py = origin[1] + y * spacing[1] - 48
        pz = origin[2] + z * spacing[2] - 32
        radius = 36 - 3 * stage
        liver = (px / radius) ** 2 + (py / (radius - 6)) ** 2 + (pz / 26) ** 2 <= 1
        tex = ndimage.gaussian_filter(rng.normal(0, 1, shape), (0.3, 1, 1))
        signal = 1 + (0.04 + 0.12 * stage) * tex / tex.std()
        scale = rng.uniform(200, 900)
        arr = np.where(liver, scale * signal, 0.2 * scale) + rng.normal(0, 2, shape)
        phases[seq] = _image(arr.astype(np.float32), spacing, origin)
        if seq == "T1W":
            mask = _image(liver.astype(np.uint8), spacing, origin)
    return Study(
        f"c{i:02d}",
        phases,
        patient_id=f"P{i % 15:02d}",  # cases i and i + 15 (same stage) are one patient
        mask=mask,
        label=STAGES[stage],
        reference_phase="T1W",
    )


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny T1W/T2W cirrhosis dataset (c05 lacks T2W) and a fake 2-fold cv run over it."""
    work = tmp_path_factory.mktemp("radiomics")
    rng = np.random.default_rng(0)
    writer = NnUNetWriter(
        work / "ds",
        ["T1W", "T2W"],
        "T1W",
        labels={"background": 0, "liver": 1},
        class_names=list(STAGES),
        extra_json={"modality": "MR", "roi": "organ", "missing_phases": "allow", "ordinal": True},
    )
    studies = [_stage_study(i, rng) for i in range(18)]
    for s in studies:
        writer.add(s)
    root = writer.close()
    (root / "imagesTr" / "c05_0001.nii.gz").unlink()
    run = work / "run"
    folds = patient_folds(
        [s.case_id for s in studies],
        [s.patient_id for s in studies],
        [s.label for s in studies],
        k=2,
        seed=0,
    )
    write_splits(run / "splits.json", folds)
    (run / "run.json").write_text(json.dumps({"model": "fake", "seed": 3}))
    return root, run


def test_radiomics_cv_writes_a_cv_run_on_the_reference_folds(staged_run, tmp_path, monkeypatch):
    root, run = staged_run
    calls = []
    real_fit = rad_cv.fit_fold

    def recording_fit(x, y, groups, n_classes, seed=0):  # noqa: ANN001, ANN202
        calls.append((np.array(x), list(groups), seed))
        return real_fit(x, y, groups, n_classes, seed)

    monkeypatch.setattr(rad_cv, "fit_fold", recording_fit)
    out = tmp_path / "radiomics"
    result = rad_cv.radiomics_cv(root, run, out, n_boot=50)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "case_id",
        "patient_id",
        "fold",
        "label",
        *[f"prob_{s}" for s in STAGES],
    ]
    assert [r["case_id"] for r in rows] == [f"c{i:02d}" for i in range(18)]  # dataset order
    assert (out / "splits.json").read_bytes() == (run / "splits.json").read_bytes()
    folds = splits_from_json(run / "splits.json")
    for r in rows:
        assert r["case_id"] in folds[int(r["fold"])]["test"]
    correct = [max(STAGES, key=lambda s: float(r[f"prob_{s}"])) == r["label"] for r in rows]
    assert np.mean(correct) >= 0.8  # chance is 1/3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pooled"]["acc"] == pytest.approx(np.mean(correct))
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == "radiomics" and info["folds"] == 2 and info["seed"] == 3
    assert info["sequences"] == ["T1W", "T2W"] and info["features"] == feature_names(["T1W", "T2W"])
    assert all(c in rad_cv.C_GRID for c in info["classifier"]["chosen_C"])
    assert (out / "report.md").is_file()
    # features.csv: one row per case; the case without T2W has empty (NaN) T2W columns
    names, table = rad_cv.read_features_csv(out / "features.csv")
    assert names == info["features"] and list(table) == [r["case_id"] for r in rows]
    t2 = [i for i, n in enumerate(names) if n.startswith("T2W_")]
    assert np.isnan(table["c05"][1][t2]).all() and np.isfinite(table["c04"][1][t2]).all()
    # each fit saw exactly its training fold's rows and patients, never a test patient
    pid = {r["case_id"]: r["patient_id"] for r in rows}
    for (x, groups, seed), fold in zip(calls, folds, strict=True):
        np.testing.assert_array_equal(x, np.stack([table[c][1] for c in fold["train"]]))
        assert groups == [pid[c] for c in fold["train"]] and seed == 3
        assert not set(groups) & {pid[c] for c in fold["test"]}
    # a second call reuses every feature row and predicts the same
    again = rad_cv.radiomics_cv(root, run, out, n_boot=50)
    assert again["run"]["feature_extraction"]["computed"] == 0
    assert again["run"]["feature_extraction"]["reused"] == 18
    np.testing.assert_allclose(again["predictions"].probs, result["predictions"].probs)


def test_radiomics_cv_on_one_sequence(staged_run, tmp_path):
    root, run = staged_run
    result = rad_cv.radiomics_cv(root, run, tmp_path / "t1", sequences=("T1W",), n_boot=0)
    names = result["run"]["features"]
    assert names == feature_names(["T1W"]) and not any(n.startswith("T2W") for n in names)
    assert result["metrics"]["pooled"]["acc"] >= 0.8
