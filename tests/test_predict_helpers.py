"""Predict helpers: boxes and points in mm or voxels, symmetric enlargement, geometry snapping, PHI
scrubbing and strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_image
from liverphase.errors import GeometryError
from liverphase.inference import lesion
from liverphase.io.nifti import flip_bbox, flip_storage
from liverphase.io.outputs import find_phi, phi_strings, scrub, strict_json, write_json


@pytest.fixture
def image() -> sitk.Image:
    return make_image(np.zeros((10, 20, 30), np.int16), spacing=(0.5, 0.8, 2.0), origin=(-5, 10, 3))


def test_bbox_in_voxels_and_mm(image):
    assert lesion.bbox_to_index(image, (2, 3, 4, 5, 6, 7), "voxel") == (2, 3, 4, 5, 6, 7)
    assert lesion.bbox_to_index(image, (2, 3, 4), "voxel") == (2, 3, 4, 3, 4, 5)
    # voxel (z=2, y=3, x=4) centre: x = -5 + 4·0.5, y = 10 + 3·0.8, z = 3 + 2·2
    point = (-3.0, 12.4, 7.0)
    assert lesion.bbox_to_index(image, point, "mm") == (2, 3, 4, 3, 4, 5)
    box = (
        -3.2,
        12.1,
        6.2,
        -1.9,
        13.9,
        10.9,
    )  # x0 y0 z0 x1 y1 z1 inside voxels x 4..6, y 3..5, z 2..4
    assert lesion.bbox_to_index(image, box, "mm") == (2, 3, 4, 5, 6, 7)
    assert lesion.bbox_to_index(image, (-100, -100, -100, -1.9, 13.9, 10.9), "mm")[:3] == (0, 0, 0)
    with pytest.raises(GeometryError, match="outside the reference phase"):
        lesion.bbox_to_index(image, (500, 500, 500), "mm")
    with pytest.raises(GeometryError, match="6 numbers"):
        lesion.bbox_to_index(image, (1, 2, 3, 4), "voxel")


def test_enlarged_box_follows_a_flipped_storage(image):
    box = (2, 3, 4, 7, 9, 13)
    for factor in (1.0, 1.4, 1.37):
        big = lesion.enlarge_box(box, factor)
        flipped = flip_bbox(box, image.GetSize(), (0, 2))
        assert lesion.enlarge_box(flipped, factor) == flip_bbox(big, image.GetSize(), (0, 2))
    assert lesion.enlarge_box(box, 1.0) == box
    assert lesion.enlarge_box((0, 0, 0, 10, 10, 10), 1.4) == (-2, -2, -2, 12, 12, 12)


def test_snap_makes_storage_and_float32_noise_identical(image):
    noisy = sitk.Image(image)
    noisy.SetOrigin(tuple(float(np.float32(v)) + 3e-6 for v in image.GetOrigin()))
    noisy.SetSpacing(tuple(float(np.float32(v)) for v in (0.7, 0.8, 2.0)))
    clean = sitk.Image(image)
    clean.SetSpacing((0.7, 0.8, 2.0))
    a, b = lesion.snap(flip_storage(noisy, (0, 1))), lesion.snap(clean)
    assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
    assert a.GetDirection() == b.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_lesion_figures_of_a_box_mask(image):
    mask = lesion.box_mask(image, (2, 3, 4, 4, 5, 8))
    fig = lesion.lesion_figures(mask)
    assert fig["voxels"] == 2 * 2 * 4
    assert fig["volume_ml"] == pytest.approx(16 * 0.5 * 0.8 * 2.0 / 1000)
    # voxel edges: x 4..7 → -3.25 .. -1.25 mm; y 3..4 → 12.0 .. 13.6; z 2..3 → 6 .. 10
    assert fig["bbox_mm"] == pytest.approx([-3.25, 12.0, 6.0, -1.25, 13.6, 10.0])
    assert fig["centroid_mm"] == pytest.approx([-2.25, 12.8, 8.0])
    assert lesion.canonical_box(flip_storage(mask, (0, 1, 2))) == (2, 3, 4, 4, 5, 8)


def test_phi_scrubbing_and_strict_json(tmp_path):
    strings = phi_strings({"PatientName": "DOE^JANE^Q", "PatientBirthDate": "19700102"})
    assert {"DOE^JANE^Q", "DOE JANE Q", "JANE DOE", "19700102", "1970-01-02"} <= set(strings)
    obj = {"a": "seen DOE^JANE^Q on 1970-01-02", "b": [1, float("nan")], "c": np.float32(2.5)}
    clean = strict_json(scrub(obj, strings))
    assert clean == {"a": "seen [removed] on [removed]", "b": [1, None], "c": 2.5}
    path = write_json(tmp_path / "p.json", obj, strings)
    assert json.loads(path.read_text())["a"] == "seen [removed] on [removed]"
    assert find_phi(tmp_path, strings) == []
    (tmp_path / "leak.txt").write_text("patient jane doe")
    assert find_phi(tmp_path, strings) == [(tmp_path / "leak.txt", "jane doe")]


def test_model_auc_comes_from_the_cv_run_beside_the_bundle(tmp_path):
    from liverphase.inference.context import cv_metrics
    from liverphase.inference.report_html import _probabilities

    bundle = tmp_path / "run" / "fold_2" / "bundle"
    bundle.mkdir(parents=True)
    own = {"metrics": {"val_auc": 0.7}}
    assert cv_metrics(bundle, own)["kind"] == "validation split, best epoch"
    assert cv_metrics(bundle, {}) is None
    pooled = {"auc": 0.871, "auc_ci": [0.8, 0.93], "ci_level": 0.95, "n_cases": 40}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"pooled": pooled, "folds": []}))
    perf = cv_metrics(bundle, own)
    assert perf["auc"] == 0.871 and perf["auc_ci"] == [0.8, 0.93] and perf["n_cases"] == 40
    html = _probabilities(
        {"label": "HCC", "probabilities": {"HCC": 0.9, "ICC": 0.1}, "model_performance": perf}
    )
    assert "Model AUC 0.871 (95% CI 0.800–0.930)" in html and "40 cases" in html


def test_a_validation_auc_on_few_studies_is_flagged_as_noise(tmp_path):
    """A bundle's own validation AUC names how many studies it rests on, and a handful is flagged."""
    from liverphase.inference.context import cv_metrics
    from liverphase.inference.report_html import _probabilities

    bundle = tmp_path / "train" / "bundle"
    bundle.mkdir(parents=True)
    pred = {"label": "HCC", "probabilities": {"HCC": 0.9, "ICC": 0.1}}
    few = cv_metrics(bundle, {"metrics": {"val_auc": 0.0}, "split": {"validation": ["a", "b"]}})
    assert few["n_cases"] == 2
    html = _probabilities({**pred, "model_performance": few})
    assert "2 cases (too few to measure performance)" in html
    many = {"metrics": {"val_auc": 0.8}, "split": {"validation": [f"c{i}" for i in range(40)]}}
    html = _probabilities({**pred, "model_performance": cv_metrics(bundle, many)})
    assert "40 cases" in html and "too few" not in html
