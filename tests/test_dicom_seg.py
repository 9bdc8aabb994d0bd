"""A segmenting bundle on a DICOM study: lesion_mask.nii.gz on the reference grid, the same mask as a
DICOM SEG read back with highdicom and, placed by its own geometry alone, on the study's true lesion;
and the coarse whole-scan pass when no location is given."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from _predict_support import SEG_OPTIONS, make_bundle, make_cohort, phi_of, tune_lesion_fraction
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.study import same_grid
from liverphase.models.registry import ModelOutput


def seg_on_grid(path: Path, grid: sitk.Image) -> np.ndarray:
    """A binary DICOM SEG decoded onto `grid` (z, y, x) by its own geometry alone: every frame placed
    by its ImagePositionPatient, the shared ImageOrientationPatient and PixelSpacing, never by the
    source instances it cites nor by its frame order. Every pixel must land on a voxel centre."""
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_step, col_step = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    to_index = np.linalg.inv(np.reshape(grid.GetDirection(), (3, 3)) * grid.GetSpacing())
    origin = np.asarray(grid.GetOrigin())
    rows, cols = (a.ravel() for a in np.mgrid[: ds.Rows, : ds.Columns])
    out = np.zeros(grid.GetSize()[::-1], np.uint8)
    hit = np.zeros(out.shape[0], int)
    planes = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    for frame, plane in zip(ds.PerFrameFunctionalGroupsSequence, planes, strict=True):
        ipp = np.asarray(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        points = ipp + np.outer(cols * col_step, iop[:3]) + np.outer(rows * row_step, iop[3:])
        index = (points - origin) @ to_index.T  # (pixels, 3) continuous x y z
        voxel = np.rint(index).astype(int)
        assert np.abs(index - voxel).max() < 1e-2, "a SEG pixel off the study's voxel centres"
        assert ((voxel >= 0) & (voxel < grid.GetSize())).all(), "a SEG pixel outside the study"
        assert len(set(voxel[:, 2])) == 1, "a SEG frame not in one slice of the study"
        out[voxel[:, 2], voxel[:, 1], voxel[:, 0]] = plane.ravel()
        hit[voxel[0, 2]] += 1
    assert (hit == 1).all(), f"slices covered by the SEG's frames: {hit.tolist()}"
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


class EchoRoi(torch.nn.Module):
    """A segmenting "model" that marks exactly the lesion mask it is given as its input's ROI
    channel: what it segments is the true lesion, so where the SEG puts it is all that is tested."""

    def forward(self, x: torch.Tensor, **kwargs) -> ModelOutput:
        roi = x[:, 0, -1]  # (B, D, H, W): the first phase's last channel
        seg = torch.stack([0.5 - roi, roi - 0.5], dim=1) * 20
        n = x.shape[0]
        return ModelOutput(logits=torch.zeros(n, 2), features=torch.zeros(n, 1), seg_logits=seg)


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


@pytest.fixture(scope="module")
def true_lesion_run(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """predict with a model that segments exactly the dataset's lesion mask: (out, true lesion on
    the reference grid)."""
    root = tmp_path_factory.mktemp("seg_truth")
    make_cohort(root, cases=1)
    bundle = make_bundle(root / "bundle", "std_net", SEG_OPTIONS, roi_channel=True)
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    truth_path = root / "ds" / "dicom" / "CT0000_mask.nii.gz"
    predictor = Predictor(bundle)
    predictor.model = EchoRoi()
    out = root / "out"
    predictor.predict_study(study, out, mask=truth_path, cam=False, occlusion=False, report=False)
    pv = study.phases["PV"]
    truth = sitk.Resample(read_image(truth_path), pv, sitk.Transform(), sitk.sitkNearestNeighbor)
    return out, sitk.GetArrayFromImage(truth) > 0


def test_dicom_seg_placed_by_its_geometry_lies_on_the_true_lesion(true_lesion_run):
    out, truth = true_lesion_run
    study = read_dicom(out.parent / "ds" / "dicom" / "CT0000")
    seg = seg_on_grid(out / "lesion_seg.dcm", study.phases["PV"]) > 0
    # the lesion is small (about 100 voxels): a frame order reversed or one slice off, a flipped
    # row or column, an origin shifted by a voxel all bring the Dice well under 0.9
    assert 50 < truth.sum() < truth.size / 20
    assert dice(seg, truth) >= 0.9, (int(seg.sum()), int(truth.sum()), int((seg & truth).sum()))
    assert (seg & truth).sum() >= 0.9 * seg.sum()  # the SEG's voxels are the lesion's
    mask = sitk.GetArrayFromImage(read_image(out / "lesion_mask.nii.gz"))
    np.testing.assert_array_equal(seg, mask > 0)


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
    # and by geometry alone, whatever the instances cited: the SEG lies where the mask lies
    np.testing.assert_array_equal(
        seg_on_grid(root / "out" / "lesion_seg.dcm", study.phases["PV"]), mask
    )
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
