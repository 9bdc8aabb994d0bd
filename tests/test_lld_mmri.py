"""LLD-MMRI 2023 import on a miniature of its published layout (tests/_lld_support.py): cases,
labels, patients, the official split, geometry from Annotation.json, per-sequence boxes, and one
named warning per planted fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import _lld_support as lld
from liverphase.io.importers import get_importer
from liverphase.io.importers.lld_mmri import CLASSES, SEQUENCES, case_id_of
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import preprocess_study
from test_importers import tree_hash


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    src = tmp_path_factory.mktemp("lld_src")
    planted = lld.make_lld(src)
    before = tree_hash(src)
    out = tmp_path_factory.mktemp("lld_out") / "ds"
    summary = get_importer("lld-mmri")(src, out)
    assert tree_hash(src) == before  # SRC never modified
    return planted, out, summary


def test_cases_labels_patients_and_official_split(imported):
    planted, out, summary = imported
    ds = open_dataset(out)
    assert ds.phases == list(SEQUENCES) and ds.reference_phase == "C+V"
    assert ds.class_names == list(CLASSES) and ds.modality == "mri"
    by_id = {c.case_id: c for c in ds.cases}
    assert set(by_id) == {case_id_of(p) for p, _, _ in planted["patients"]}
    assert "MR411388" in by_id and by_id["MR411388"].extra["source_id"] == "MR-411388"
    for pid, cls, split in planted["patients"]:
        rec = by_id[case_id_of(pid)]
        assert rec.patient_id == rec.case_id
        assert rec.label == (CLASSES[cls] if cls >= 0 else None)
        assert rec.extra["split"] == split
    assert summary.cases == 29 and summary.classes["(unlabeled)"] == 1
    assert all(summary.classes[c] == 4 for c in CLASSES)


def test_geometry_from_annotation_not_headers(imported):
    _, out, _ = imported
    study = open_dataset(out).load_study("MR700010")
    for img in study.phases.values():
        assert img.GetSpacing() == pytest.approx(lld.SPACING)
        assert img.GetOrigin() == pytest.approx(lld.ORIGIN)
        assert img.GetSize() == lld.SHAPE
    old = open_dataset(out).load_study(lld.OLD_JSON)
    assert old.reference.GetSpacing()[2] == pytest.approx(lld.SPACING[2] - 0.5)  # thickness


def test_boxes_per_sequence_in_their_own_voxels(imported):
    _, out, _ = imported
    ds = open_dataset(out)
    rec = ds.case("MR700010")
    assert rec.bbox is None and set(rec.phase_boxes) == set(SEQUENCES)
    for k, seq in enumerate(SEQUENCES):
        x0, y0, z0, x1, y1, z1 = lld.lesion_box(k)
        assert rec.phase_boxes[seq] == (z0, y0, x0, z1 + 1, y1, x1)
    header = (out / "cases.csv").read_text().splitlines()[0]
    assert "bbox_In Phase" in header and "bbox_C+Delay" in header


def test_one_named_warning_per_planted_fault(imported):
    _, out, summary = imported
    w = summary.warnings
    assert w["mr_dash_id"].cases == ["MR-411388"]
    assert w["missing_sequence"].cases == [f"{lld.MISSING_IN_PHASE} (In Phase)"]
    assert w["duplicated_slices"].cases == [f"{lld.DUPLICATED}/In Phase"]
    assert w["upside_down"].cases == [f"{lld.UPSIDE_DOWN}/T2WI"]
    assert w["intensity_offset"].cases == [f"{lld.OFFSET}/DWI"]
    assert w["no_slice_spacing"].cases == [lld.OLD_JSON]
    assert w["csv_bom"].cases == ["labels_val_inaccessible.txt"]
    assert w["double_nested_archive"].cases
    assert not summary.problems
    assert json.loads((out / "dataset.json").read_text())["missing_phases"] == "allow"
    ds = open_dataset(out)
    assert ds.present_phases(lld.MISSING_IN_PHASE) == [s for s in SEQUENCES if s != "In Phase"]


def test_faults_fixed_as_the_warnings_say(imported):
    _, out, _ = imported
    ds = open_dataset(out)
    dup = ds.load_study(lld.DUPLICATED)
    assert dup.phases["In Phase"].GetSize() == lld.SHAPE  # the repeated slice removed
    x0, y0, z0, x1, y1, z1 = lld.lesion_box(1)
    assert dup.phase_boxes["In Phase"] == (z0, y0, x0, z1 + 1, y1, x1)  # re-indexed
    arr = sitk.GetArrayFromImage(dup.phases["In Phase"])
    assert not any(np.array_equal(arr[k], arr[k + 1]) for k in range(arr.shape[0] - 1))
    dwi = sitk.GetArrayFromImage(ds.load_study(lld.OFFSET).phases["DWI"])
    assert dwi.min() < 100  # back near 0 after subtracting 1024
    up = ds.load_study(lld.UPSIDE_DOWN)
    assert up.phases["T2WI"].GetDirection()[8] < 0 < up.phases["C+A"].GetDirection()[8]


def test_each_sequence_cropped_around_its_own_box(imported):
    """The lesion sits at another place in each sequence: each crop holds its own lesion only."""
    _, out, _ = imported
    study = open_dataset(out).load_study("MR700010")  # class 1
    cfg = PreprocessConfig.from_dict(
        {
            "size": (4, 16, 16),
            "modality": "mri",
            "roi_source": "bbox",
            "margin_mm": 0.0,
            "register": False,
            "mri_norm": "zscore",
        }
    )
    pre = preprocess_study(study, cfg)
    assert pre.image.shape == (8, 1, 4, 16, 16)
    assert set(pre.meta["phase_crops"]) == set(SEQUENCES) and pre.meta["registration"] == {}
    for k, seq in enumerate(SEQUENCES):
        norm = pre.meta["normalisation"][seq]
        raw = pre.image[k, 0] * norm["scale"] + norm["offset"]
        # body 200-219 plus the lesion's 80 + 10k: with no margin every voxel is lesion
        assert raw[1:-1, 2:-2, 2:-2].min() >= 280 + 10 * k - 1, seq
    # the same crop for every sequence (the reference's box) would cut background into some
    shared = preprocess_study(
        type(study)(
            study.case_id, study.phases, bbox=study.phase_boxes["C+V"], reference_phase="C+V"
        ),
        cfg,
    )
    norm = shared.meta["normalisation"]["T2WI"]
    raw = shared.image[0, 0] * norm["scale"] + norm["offset"]
    assert raw.min() < 250
