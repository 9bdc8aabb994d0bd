"""nnU-Net dataset reading and writing, and every bad-input case of the foundation issue."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from conftest import blob_study, make_image
from liverphase.cli import app
from liverphase.errors import DatasetError, GeometryError, InputFileError
from liverphase.io.inspect import inspect_path
from liverphase.io.nifti import flip_bbox, flip_storage, open_dataset, read_image, write_image


def test_roundtrip_values_and_geometry(tiny_dataset: Path) -> None:
    ds = open_dataset(tiny_dataset)
    assert ds.phases == ["ART", "PV"] and ds.reference_phase == "PV"
    assert [c.label for c in ds.cases] == ["HCC", "ICC", "HCC", "ICC"]
    study = ds.load_study("c0")
    original = blob_study("c0", seed=0)
    for p in ("ART", "PV"):
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(study.phases[p]), sitk.GetArrayFromImage(original.phases[p])
        )
        assert study.phases[p].GetOrigin() == pytest.approx(original.phases[p].GetOrigin())
    assert study.patient_id == "Pc0"


def test_flipped_nifti_is_same_physical_image(tiny_dataset: Path) -> None:
    ds = open_dataset(tiny_dataset)
    flipped = ds.load_study("c1").phases["PV"]
    original = blob_study("c1", seed=1).phases["PV"]
    assert flipped.GetDirection() != original.GetDirection()  # really stored differently
    resampled = sitk.Resample(flipped, original, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(original)
    )
    # and the voxel at one physical point is the same in both
    point = original.TransformIndexToPhysicalPoint((3, 7, 2))
    assert flipped[flipped.TransformPhysicalPointToIndex(point)] == original[(3, 7, 2)]


def test_flip_bbox_matches_flip_storage() -> None:
    arr = np.zeros((10, 12, 14), np.uint8)
    arr[2:5, 3:9, 4:6] = 1
    img = make_image(arr)
    box = flip_bbox((2, 3, 4, 5, 9, 6), img.GetSize(), (0, 1))
    flipped = sitk.GetArrayFromImage(flip_storage(img, (0, 1)))
    z0, y0, x0, z1, y1, x1 = box
    assert flipped[z0:z1, y0:y1, x0:x1].all() and flipped.sum() == arr.sum()


def test_real_nifti_written_by_someone_else() -> None:
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    img = read_image(path)
    ref = nibabel.load(path)
    assert img.GetSize() == ref.shape[:3]
    assert img.GetSpacing() == pytest.approx(ref.header.get_zooms()[:3])


def test_missing_phase_file(tiny_dataset: Path) -> None:
    (tiny_dataset / "imagesTr" / "c2_0000.nii.gz").unlink()
    with pytest.raises(InputFileError, match="missing phase ART") as exc:
        open_dataset(tiny_dataset).load_study("c2")
    assert "c2_0000.nii.gz" in str(exc.value)


def test_phases_on_different_grids_allowed_and_reported(tiny_dataset: Path) -> None:
    art = tiny_dataset / "imagesTr" / "c3_0000.nii.gz"
    img = read_image(art)
    img.SetSpacing((1.0, 1.0, 2.5))
    write_image(img, art)
    study = open_dataset(tiny_dataset).load_study("c3")  # no error
    assert study.phases["ART"].GetSpacing()[2] == 2.5
    summary, problems = inspect_path(tiny_dataset)
    assert problems == []
    assert any("c3" in line and "other grids" in line for line in summary["lines"])


def test_mask_off_reference_grid(tiny_dataset: Path) -> None:
    path = tiny_dataset / "labelsTr" / "c0.nii.gz"
    mask = read_image(path)
    mask.SetSpacing((2.0, 1.0, 2.0))
    write_image(mask, path)
    with pytest.raises(GeometryError, match="not on the grid of the reference phase PV") as exc:
        open_dataset(tiny_dataset).load_study("c0")
    assert "c0.nii.gz" in str(exc.value)


def test_empty_mask(tiny_dataset: Path) -> None:
    path = tiny_dataset / "labelsTr" / "c0.nii.gz"
    mask = read_image(path)
    write_image(sitk.Multiply(mask, 0), path)
    with pytest.raises(InputFileError, match="mask is empty"):
        open_dataset(tiny_dataset).load_study("c0")


def test_nan_in_image(tiny_dataset: Path) -> None:
    path = tiny_dataset / "imagesTr" / "c0_0001.nii.gz"
    arr = sitk.GetArrayFromImage(read_image(path)).astype(np.float32)
    arr[3, 4, 5] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(read_image(path))
    write_image(img, path)
    with pytest.raises(InputFileError, match="NaN") as exc:
        open_dataset(tiny_dataset).load_study("c0")
    assert "c0_0001.nii.gz" in str(exc.value)


def test_truncated_nifti(tiny_dataset: Path) -> None:
    path = tiny_dataset / "imagesTr" / "c0_0001.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError) as exc:
        read_image(path)
    assert "c0_0001.nii.gz" in str(exc.value)


def _rewrite_csv(root: Path, edit) -> None:
    path = root / "cases.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_cases_csv_duplicate_case(tiny_dataset: Path) -> None:
    _rewrite_csv(tiny_dataset, lambda lines: lines + [lines[1]])
    with pytest.raises(DatasetError, match="duplicate case_id 'c0'"):
        open_dataset(tiny_dataset)


def test_cases_csv_unknown_case(tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match="unknown case 'zz'"):
        open_dataset(tiny_dataset).load_study("zz")
    # images on disk without a row are reported by inspect
    shutil.copy(
        tiny_dataset / "imagesTr" / "c0_0000.nii.gz", tiny_dataset / "imagesTr" / "c9_0000.nii.gz"
    )
    _, problems = inspect_path(tiny_dataset)
    assert any("'c9' has images but no row" in str(p) for p in problems)


def test_cases_csv_empty_label_is_an_unlabeled_case(tiny_dataset: Path) -> None:
    _rewrite_csv(tiny_dataset, lambda lines: [lines[0], "c0,Pc0,,"] + lines[2:])
    ds = open_dataset(tiny_dataset)
    assert ds.case("c0").label is None and ds.load_study("c0").label is None
    # class names come from the labeled rows; cross-validation leaves the unlabeled one out
    assert None not in ds.class_names
    from liverphase.evaluate.cv import experiment_cases

    assert "c0" not in experiment_cases(ds, ds.phases)


def test_bad_dataset_json(tiny_dataset: Path) -> None:
    (tiny_dataset / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="invalid JSON"):
        open_dataset(tiny_dataset)


def test_inspect_lists_every_problem_and_cli_exits_2(tiny_dataset: Path) -> None:
    (tiny_dataset / "imagesTr" / "c0_0000.nii.gz").unlink()
    trunc = tiny_dataset / "imagesTr" / "c2_0001.nii.gz"
    trunc.write_bytes(gzip.compress(b"not a nifti"))
    summary, problems = inspect_path(tiny_dataset)
    texts = [str(p) for p in problems]
    assert len(problems) == 2 and "c0_0000" in texts[0] and "c2_0001" in texts[1]
    result = CliRunner().invoke(app, ["inspect", str(tiny_dataset)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "2 problem(s) found" in result.output


def test_cli_inspect_clean_dataset_exit_0(tiny_dataset: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tiny_dataset), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (
        data["n_cases"] == 4 and data["labels"] == {"HCC": 2, "ICC": 2} and data["problems"] == []
    )


def test_cli_user_error_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "no such file or folder" in result.output and "Traceback" not in result.output


def test_oblique_geometry_matches_simpleitk_reader(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = make_image(arr, spacing=(0.7, 0.8, 2.5), origin=(1.0, 2.0, 3.0))
    c, s = np.cos(0.3), np.sin(0.3)
    img.SetDirection((c, -s, 0, s, c, 0, 0, 0, -1))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(img, str(path))
    ours, theirs = read_image(path), sitk.ReadImage(str(path))
    assert ours.GetOrigin() == pytest.approx(theirs.GetOrigin(), abs=1e-4)
    assert ours.GetDirection() == pytest.approx(theirs.GetDirection(), abs=1e-5)
    assert ours.GetSpacing() == pytest.approx(theirs.GetSpacing())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), arr)
