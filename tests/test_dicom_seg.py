"""A segmenting bundle on a DICOM study: lesion_mask.nii.gz on the reference grid, the same mask as a
DICOM SEG read back with highdicom, and the coarse whole-scan pass when no location is given."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from _predict_support import SEG_OPTIONS, make_bundle, make_cohort, phi_of, tune_lesion_fraction
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.study import same_grid


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("seg")
    make_cohort(root, cases=1)
    bundle = make_bundle(root / "bundle", "std_net", SEG_OPTIONS, roi_source="mask_jitter")
    bbox = open_dataset(root / "ds").case("CT0000").bbox
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    tune_lesion_fraction(bundle, study, bbox, fraction=0.2)
    out = Predictor(bundle).predict_study(study, root / "out", bbox=bbox, bbox_units="voxel")
    return root, out


def test_lesion_mask_lies_on_the_reference_grid(seg_run):
    root, out = seg_run
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    mask = read_image(root / "out" / "lesion_mask.nii.gz")
    assert same_grid(mask, study.phases["PV"], tol=1e-4)
    assert mask.GetSize() == study.phases["PV"].GetSize()
    arr = sitk.GetArrayFromImage(mask)
    assert set(np.unique(arr)) == {0, 1}
    assert out["lesion"]["source"] == "model segmentation"
    assert out["lesion"]["voxels"] == int(arr.sum()) > 0
    spacing = np.prod(study.phases["PV"].GetSpacing())
    assert out["lesion"]["volume_ml"] == pytest.approx(arr.sum() * spacing / 1000, rel=1e-3)


def test_dicom_seg_references_the_reference_series_and_holds_the_mask(seg_run):
    root, out = seg_run
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    seg = hd.seg.segread(root / "out" / "lesion_seg.dcm")
    ref_uids = study.metadata["sop_instance_uids"]["PV"]
    referenced = [uid for _, _, uid in seg.get_source_image_uids()]
    assert sorted(referenced) == sorted(ref_uids)
    frames_to_sop = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(frames_to_sop) == sorted(ref_uids)  # one frame per slice, empty ones kept
    assert seg.StudyInstanceUID == study.metadata["study_instance_uid"]
    pv = pydicom.dcmread(study.sources["PV"][0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == pv.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != pv.SeriesInstanceUID
    desc = seg.get_segment_description(1)
    assert desc.segment_label == "Lesion"
    assert "liverphase std_net" in desc.algorithm_identification[0].AlgorithmName
    mask = sitk.GetArrayFromImage(read_image(root / "out" / "lesion_mask.nii.gz"))
    # frame by frame in the SEG's own order: each frame equals the slice of the instance it cites
    for f, uid in enumerate(frames_to_sop):
        np.testing.assert_array_equal(seg.pixel_array[f], mask[ref_uids.index(uid)])
    pixels = seg.get_pixels_by_source_instance(ref_uids, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(pixels.astype(np.uint8), mask)
    assert 0 < mask.sum() < mask.size
    name, birth = phi_of(root / "ds" / "dicom" / "CT0000")
    raw = pydicom.dcmread(root / "out" / "lesion_seg.dcm")
    assert str(raw.PatientName) == "" and str(raw.PatientBirthDate) == ""
    assert name.encode() not in (root / "out" / "lesion_seg.dcm").read_bytes()


def test_coarse_pass_finds_the_lesion_without_a_location(seg_run):
    root, boxed = seg_run
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    out = Predictor(root / "bundle").predict_study(
        study, root / "out_coarse", cam=False, occlusion=False, report=False
    )
    assert out["crop"]["roi_source"].startswith("model")
    assert out["lesion"]["voxels"] > 0
    assert (root / "out_coarse" / "lesion_mask.nii.gz").is_file()
