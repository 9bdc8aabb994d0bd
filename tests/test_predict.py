"""predict end to end on a tiny synthetic study: DICOM = NIfTI = flipped NIfTI, outputs on the
reference grid, no PHI, dataset mode, missing phases and lesion location errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _predict_support import PHASES, make_bundle, make_cohort, phi_of
from liverphase.errors import DatasetError, LiverphaseError
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom, run_predict
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.outputs import find_phi
from liverphase.io.study import Study, same_grid

CONTRACT = (
    "case_id",
    "label",
    "probabilities",
    "model",
    "phases",
    "lesion",
    "kinetics",
    "warnings",
)
TIMINGS = ("read", "register", "preprocess", "model", "cam", "report", "total")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    make_cohort(root)
    make_bundle(root / "bundle")
    return root


@pytest.fixture(scope="module")
def predictor(work) -> Predictor:
    return Predictor(work / "bundle")


@pytest.fixture(scope="module")
def dicom_run(work, predictor) -> dict:
    """The DICOM study with its mask file, every output on."""
    study = read_dicom(work / "ds" / "dicom" / "CT0000")
    mask = work / "ds" / "dicom" / "CT0000_mask.nii.gz"
    return predictor.predict_study(study, work / "out_dicom", mask=mask)


@pytest.fixture(scope="module")
def nifti_run(work, predictor) -> dict:
    """The same case from the nnU-Net dataset (a phase file as STUDY), every output on."""
    return predictor.predict_path(work / "ds" / "imagesTr" / "CT0000_0002.nii.gz", work / "out_nii")


def test_dicom_and_nifti_give_the_same_prediction(dicom_run, nifti_run):
    for c in ("HCC", "ICC"):
        assert dicom_run["probabilities"][c] == pytest.approx(
            nifti_run["probabilities"][c], abs=1e-4
        )
    assert dicom_run["label"] == nifti_run["label"]
    assert dicom_run["lesion"]["volume_ml"] == pytest.approx(
        nifti_run["lesion"]["volume_ml"], rel=1e-6
    )
    for p in PHASES:
        assert dicom_run["kinetics"][p]["lesion_hu"] == pytest.approx(
            nifti_run["kinetics"][p]["lesion_hu"], abs=0.05
        )


def test_flipped_storage_gives_the_same_prediction(work, predictor, nifti_run):
    study = open_dataset(work / "ds").load_study("CT0000")
    writer = NnUNetWriter(work / "flipped", PHASES, "PV", class_names=["HCC", "ICC"])
    writer.add(study, flip_axes=(0, 2))
    writer.close()
    flipped = predictor.predict_path(
        work / "flipped", work / "out_flip", case="CT0000", cam=False, occlusion=False, report=False
    )
    for c in ("HCC", "ICC"):
        assert flipped["probabilities"][c] == pytest.approx(nifti_run["probabilities"][c], abs=1e-4)
    assert flipped["lesion"]["centroid_mm"] == pytest.approx(
        nifti_run["lesion"]["centroid_mm"], abs=0.01
    )


def test_prediction_json_follows_the_contract(work, nifti_run):
    saved = json.loads((work / "out_nii" / "prediction.json").read_text())
    assert all(k in saved for k in CONTRACT)
    assert sum(saved["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert saved["label"] == max(saved["probabilities"], key=saved["probabilities"].get)
    assert set(saved["kinetics"]) == set(PHASES)
    for row in saved["kinetics"].values():
        assert {"lesion_hu", "liver_hu", "relative_enhancement"} <= set(row)
    # the synthetic lesion enhances from NC to PV, and the liver around it too
    assert saved["kinetics"]["PV"]["liver_hu"] > saved["kinetics"]["NC"]["liver_hu"] + 20
    assert {"washout", "capsule", "arterial_hyperenhancement"} <= set(saved["patterns"]["verdicts"])
    assert saved["patterns"]["thresholds_hu"]["washout_under_liver"] == -10.0
    assert set(saved["phase_importance"]["drop"]) == set(PHASES)
    assert all(k in saved["timings"] for k in TIMINGS)
    lesion = saved["lesion"]
    mask = read_image(work / "ds" / "labelsTr" / "CT0000.nii.gz")
    voxels = int(sitk.GetArrayViewFromImage(mask).sum())
    assert lesion["voxels"] == voxels
    assert lesion["volume_ml"] == pytest.approx(
        voxels * np.prod(mask.GetSpacing()) / 1000, rel=1e-3
    )
    lo, hi = np.array(lesion["bbox_mm"][:3]), np.array(lesion["bbox_mm"][3:])
    assert np.all(lo < np.array(lesion["centroid_mm"])) and np.all(
        np.array(lesion["centroid_mm"]) < hi
    )


def test_cams_lie_on_the_reference_grid_in_unit_range(work, nifti_run):
    reference = read_image(work / "ds" / "imagesTr" / "CT0000_0002.nii.gz")
    for p in PHASES:
        cam = read_image(work / "out_nii" / f"cam_{p}.nii.gz")
        assert same_grid(cam, reference, tol=1e-5)
        arr = sitk.GetArrayFromImage(cam)
        assert arr.min() >= 0.0 and arr.max() <= 1.0
        assert arr.std() > 0.01 and arr.max() > 0.5
        assert (
            arr[0].max() == 0 or arr[-1].max() == 0 or arr[:, 0].max() == 0
        )  # zero outside the crop
    assert not (work / "out_nii" / "lesion_mask.nii.gz").exists()  # this model does not segment


def test_no_phi_in_outputs_unless_kept(work, predictor, dicom_run):
    name, birth = phi_of(work / "ds" / "dicom" / "CT0000")
    strings = [name, name.replace("^", " "), birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    written = sorted((work / "out_dicom").iterdir())
    assert {p.name for p in written} >= {"prediction.json", "report.html", "cam_PV.nii.gz"}
    assert find_phi(work / "out_dicom", strings) == []
    for path in written:  # the same, without our helper
        assert name.encode() not in path.read_bytes() and birth.encode() not in path.read_bytes()
    assert dicom_run["case_id"] == "CT0000"
    study = read_dicom(work / "ds" / "dicom" / "CT0000")
    kept = predictor.predict_study(
        study,
        work / "out_phi",
        bbox=(6, 8, 8, 12, 14, 14),
        bbox_units="voxel",
        keep_phi=True,
        cam=False,
        occlusion=False,
    )
    assert kept["patient"]["name"] == name
    assert name in (work / "out_phi" / "report.html").read_text()


def test_dicom_case_id_never_carries_the_patient_name(work, tmp_path):
    import shutil

    name, _ = phi_of(work / "ds" / "dicom" / "CT0000")
    folder = tmp_path / name.replace("^", "_")
    shutil.copytree(work / "ds" / "dicom" / "CT0000", folder)
    study = read_dicom(folder)
    assert study.case_id.startswith("study-") and "SYNTH" not in study.case_id


def test_bbox_in_mm_and_voxels_locate_the_same_crop(work, predictor, nifti_run):
    rec = open_dataset(work / "ds").case("CT0000")
    study = open_dataset(work / "ds").load_study("CT0000")
    study.mask = None
    common = dict(cam=False, occlusion=False, report=False)
    by_voxel = predictor.predict_study(
        study, work / "out_vox", bbox=rec.bbox, bbox_units="voxel", **common
    )
    ref = study.reference
    z0, y0, x0, z1, y1, x1 = rec.bbox
    a = ref.TransformContinuousIndexToPhysicalPoint((x0 - 0.5, y0 - 0.5, z0 - 0.5))
    b = ref.TransformContinuousIndexToPhysicalPoint((x1 - 0.5, y1 - 0.5, z1 - 0.5))
    inset = np.sign(np.subtract(b, a)) * 0.1  # strictly inside the edge voxels
    mm = [*np.add(a, inset), *np.subtract(b, inset)]
    by_mm = predictor.predict_study(study, work / "out_mm", bbox=mm, bbox_units="mm", **common)
    assert by_mm["probabilities"] == by_voxel["probabilities"]
    assert by_mm["crop"]["box_mm"] == by_voxel["crop"]["box_mm"]
    assert "ellipsoid" in by_mm["lesion"]["source"]
    # the mask gives the same box as cases.csv here, so the model input and output are the same
    assert by_voxel["probabilities"] == nifti_run["probabilities"]


def test_missing_phase_is_an_error_for_a_model_that_needs_it(work, predictor):
    study = open_dataset(work / "ds").load_study("CT0000")
    del study.phases["DL"]
    with pytest.raises(DatasetError, match=r"lacks phase\(s\) \['DL'\]"):
        predictor.predict_study(study, work / "out_missing")


def test_missing_phase_is_a_warning_for_a_model_with_a_phase_mask(work):
    bundle = make_bundle(work / "std_bundle", "std_net", {"base_channels": 4, "scales": 3})
    study = open_dataset(work / "ds").load_study("CT0000")
    del study.phases["ART"]
    out = Predictor(bundle).predict_study(study, work / "out_std_missing", cam=False, report=False)
    assert any("missing phase(s) ['ART']" in w for w in out["warnings"])
    assert out["phase_importance"]["drop"]["ART"] is None
    assert "ART" not in out["kinetics"] and out["phases_present"] == ["NC", "PV", "DL"]


def test_no_location_for_a_classifier_is_a_clear_error(work, predictor):
    study = read_dicom(work / "ds" / "dicom" / "CT0000")
    with pytest.raises(LiverphaseError, match="give a mask or a bbox"):
        predictor.predict_study(study, work / "out_noloc")


def test_whole_dataset_writes_a_summary(work):
    result = run_predict(work / "bundle", work / "ds", work / "out_all", progress=False)
    assert result["cases"] == 2 and result["failed"] == []
    rows = list(csv.DictReader(open(work / "out_all" / "summary.csv")))
    assert [r["case_id"] for r in rows] == ["CT0000", "CT0001"]
    for r in rows:
        assert float(r["prob_HCC"]) + float(r["prob_ICC"]) == pytest.approx(1.0, abs=1e-5)
        assert (work / "out_all" / r["case_id"] / "report.html").is_file()


def test_single_file_outside_a_dataset_is_refused(work):
    with pytest.raises(LiverphaseError, match="a single image is not a study"):
        run_predict(work / "bundle", work / "ds" / "dicom" / "CT0000_mask.nii.gz", work / "x")


def test_damaged_bundle_fails_with_the_file_named(work, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(work / "bundle", bad)
    (bad / "bundle.json").write_text("{not json")
    with pytest.raises(LiverphaseError, match=r"bundle\.json: invalid JSON"):
        run_predict(bad, work / "ds", tmp_path / "o", case="CT0000")
    other = make_bundle(tmp_path / "other", "stic")
    shutil.copy(other / "model.safetensors", bad / "model.safetensors")
    shutil.copy(work / "bundle" / "bundle.json", bad / "bundle.json")
    with pytest.raises(LiverphaseError, match=r"model\.safetensors: holds weights of model 'stic'"):
        run_predict(bad, work / "ds", tmp_path / "o", case="CT0000")
    meta = json.loads((work / "bundle" / "bundle.json").read_text())
    meta.pop("preprocessing")
    shutil.copy(work / "bundle" / "model.safetensors", bad / "model.safetensors")
    (bad / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(LiverphaseError, match=r"bundle\.json: has no preprocessing config"):
        run_predict(bad, work / "ds", tmp_path / "o", case="CT0000")


def test_outputs_of_study_in_memory(work, predictor):
    """A Study built in code (no files) predicts too and has no 'dataset' source."""
    base = open_dataset(work / "ds").load_study("CT0000")
    study = Study("mem", dict(base.phases), mask=base.mask, reference_phase="PV")
    out = predictor.predict_study(study, work / "out_mem", cam=False, occlusion=False, report=False)
    assert out["source"] == {"kind": "in-memory"} and out["case_id"] == "mem"


def test_bundle_recipe_flips_are_averaged_at_predict(work, predictor, nifti_run):
    """A bundle trained with test-time flips predicts their average; without, the plain model."""
    import torch

    from liverphase.train.bundle import read_bundle_meta, save_bundle

    assert predictor.tta_flip_axes == ()  # the fixture bundle has no training recipe
    meta = read_bundle_meta(work / "bundle")
    meta["training"] = {"tta_flip_axes": [1, 2]}
    tta = Predictor(save_bundle(work / "bundle_tta", predictor.model, meta))
    assert tta.tta_flip_axes == (1, 2)
    seen: list[torch.Tensor] = []
    hook = tta.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    study = open_dataset(work / "ds").load_study("CT0000")
    out = tta.predict_study(study, work / "out_tta", cam=False, occlusion=False, report=False)
    hook.remove()
    assert len(seen) == 4  # the input and its H, W and H+W mirrors
    x = seen[0]
    for view, dims in zip(seen[1:], ([4], [5], [4, 5]), strict=True):
        torch.testing.assert_close(view, x.flip(dims))
    with torch.no_grad():
        by_hand = torch.stack([tta.model(v).logits.softmax(1)[0] for v in seen]).mean(0)
    assert out["probabilities"]["ICC"] == pytest.approx(float(by_hand[1]), abs=1e-5)
    # the plain bundle scored the unflipped input only: a different number for a random net
    with torch.no_grad():
        plain = float(tta.model(x).logits.softmax(1)[0, 1])
    assert nifti_run["probabilities"]["ICC"] == pytest.approx(plain, abs=1e-4)
    assert abs(plain - float(by_hand[1])) > 1e-5
