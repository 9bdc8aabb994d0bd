"""MRI datasets whose studies lack a sequence: read, preprocessed, cached and batched with a phase mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverphase.data.dataset import CachedStudyDataset
from liverphase.errors import DatasetError, InputFileError
from liverphase.evaluate.cv import ORGAN_MARGIN_MM, cached_items, experiment_cases, make_experiment
from liverphase.io.nifti import open_dataset
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.study import Study
from liverphase.preprocess.intensity import n4_bias_correct

SEQS = ("T1W", "T2W")
# case → sequences it has: both, T1W only, T2W only
HAVE = {"M000": SEQS, "M001": ("T1W",), "M002": ("T2W",), "M003": SEQS}


def _image(
    rng: np.random.Generator, spacing: tuple[float, float, float], scale: float
) -> sitk.Image:
    arr = rng.rayleigh(20.0, size=(20, 32, 32)).astype(np.float32)
    arr[4:16, 8:24, 6:26] += scale  # the "liver"
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


def _mask_like(img: sitk.Image) -> sitk.Image:
    arr = np.zeros(sitk.GetArrayViewFromImage(img).shape, np.uint8)
    arr[4:16, 8:24, 6:26] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(img)
    return mask


@pytest.fixture()
def mr_dataset(tmp_path):
    rng = np.random.default_rng(0)
    writer = NnUNetWriter(
        tmp_path / "ds",
        SEQS,
        "T1W",
        labels={"background": 0, "liver": 1},
        class_names=["mild", "severe"],
        extra_json={"modality": "MR", "roi": "organ", "ordinal": True},
        allow_missing=True,
    )
    for i, (case, seqs) in enumerate(HAVE.items()):
        # T2W on a coarser grid than T1W, as separate acquisitions are
        phases = {
            s: _image(rng, (2.0, 2.0, 3.0) if s == "T1W" else (2.0, 2.0, 4.0), 300 + 100 * k)
            for k, s in enumerate(seqs)
        }
        ref = "T1W" if "T1W" in phases else "T2W"
        study = Study(
            case,
            phases,
            patient_id=f"P{i}",
            mask=_mask_like(phases[ref]),
            label=["mild", "severe"][i % 2],
            reference_phase=ref,
        )
        writer.add(study)
    return writer.close()


def test_dataset_json_and_missing_files(mr_dataset):
    meta = json.loads((mr_dataset / "dataset.json").read_text())
    assert meta["missing_phases"] == "allow" and meta["modality"] == "MR"
    assert not (mr_dataset / "imagesTr" / "M001_0001.nii.gz").exists()
    assert not (mr_dataset / "imagesTr" / "M002_0000.nii.gz").exists()
    ds = open_dataset(mr_dataset)
    assert ds.modality == "mri" and ds.roi == "organ" and ds.ordinal
    assert ds.present_phases("M001") == ["T1W"]
    assert ds.present_phases("M002") == ["T2W"]
    # the mask of a study without T1W lives on its T2W grid
    assert ds.case_reference_phase("M002") == "T2W"
    study = ds.load_study("M002")
    assert study.reference_phase == "T2W" and list(study.phases) == ["T2W"]
    assert [p.name for p in ds.case_files("M001")] == ["M001_0000.nii.gz", "M001.nii.gz"]


def test_missing_phase_is_an_error_unless_allowed(mr_dataset):
    meta_path = mr_dataset / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["missing_phases"] = "error"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputFileError, match="missing phase T2W"):
        open_dataset(mr_dataset).load_study("M001")
    meta["missing_phases"] = "maybe"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="missing_phases"):
        open_dataset(mr_dataset)


def test_absent_sequence_is_a_zero_channel_and_masked(mr_dataset, tmp_path):
    ds = open_dataset(mr_dataset)
    exp = make_experiment(ds, "resnet3d18", preprocess_overrides={"size": (8, 16, 16)})
    pre = exp.preprocess
    assert pre.modality == "mri" and pre.roi == "organ" and pre.missing_phases == "zero"
    assert pre.n_channels == 1 and exp.model_options["in_channels"] == 1
    items = cached_items(ds, tmp_path / "cache", pre, workers=1, progress=False)
    assert items["M001"]["present"] == [True, False]
    assert items["M002"]["present"] == [False, True]
    img = np.load(items["M001"]["image"])
    assert img.shape == (2, 1, 8, 16, 16)
    assert np.all(img[1] == 0) and img[0].std() > 0
    img2 = np.load(items["M002"]["image"])
    assert np.all(img2[0] == 0) and img2[1].std() > 0
    # the organ crop: the liver fills most of the crop (box + a thin margin), no lesion kinetics
    meta = json.loads((Path(items["M001"]["image"]).parent / "meta.json").read_text())
    assert "kinetics" not in meta and meta["phases_present"] == [True, False]
    # liver box 36 x 32 x 40 mm plus ORGAN_MARGIN_MM on each side: it fills that share of the crop
    share = np.prod([e / (e + 2 * ORGAN_MARGIN_MM) for e in (36.0, 32.0, 40.0)])
    assert np.load(items["M000"]["mask"]).mean() == pytest.approx(share, abs=0.04)
    batch = CachedStudyDataset(list(items.values()), {"mild": 0, "severe": 1})[1]
    assert batch["phase_mask"].tolist() == [True, False]


def test_single_sequence_experiment_keeps_cases_that_have_it(mr_dataset):
    ds = open_dataset(mr_dataset)
    assert experiment_cases(ds, ["T1W"]) == ["M000", "M001", "M003"]
    assert experiment_cases(ds, ["T2W"]) == ["M000", "M002", "M003"]
    assert experiment_cases(ds, list(SEQS)) == list(HAVE)


def test_n4_removes_a_smooth_bias_field():
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[0:32, 0:48, 0:48].astype(np.float32)
    body = ((z - 16) / 14) ** 2 + ((y - 24) / 20) ** 2 + ((x - 24) / 20) ** 2 < 1
    truth = np.where(body, 500.0, 0.0).astype(np.float32)
    bias = 0.6 + 0.8 * x / 47.0  # a coil shading from 0.6 to 1.4 across the image
    arr = truth * bias + np.abs(rng.normal(0, 5, truth.shape)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.0))
    out = sitk.GetArrayFromImage(n4_bias_correct(img))
    inner = body & (((z - 16) / 10) ** 2 + ((y - 24) / 15) ** 2 + ((x - 24) / 15) ** 2 < 1)

    def cv(a: np.ndarray) -> float:
        return float(a[inner].std() / a[inner].mean())

    assert cv(arr) > 0.1
    assert cv(out) < 0.5 * cv(arr)
    # the body's mean signal is kept, so normalisation afterwards sees the same scale
    assert out[body].mean() == pytest.approx(arr[body].mean(), rel=0.05)
    assert out.shape == arr.shape


def test_organ_dataset_without_liver_mask_names_the_mask(mr_dataset):
    (mr_dataset / "labelsTr" / "M003.nii.gz").unlink()
    with pytest.raises(DatasetError, match="no organ mask in labelsTr") as exc:
        open_dataset(mr_dataset).load_study("M003")
    assert "M003.nii.gz" in str(exc.value)
