"""DICOM series holding several contrast phases (HCC-TACE-Seg style): split, order, name, refuse."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from liverphase.errors import ConfigError, DicomError
from liverphase.io.dicom import read_dicom_study, scan_dicom_study
from liverphase.io.dicom_write import dicom_time, uid_from, write_dicom_series
from liverphase.io.inspect import inspect_path

PHASES = ("NC", "ART", "PV", "DL")
STARTS = (8 * 3600.0, 8 * 3600.0 + 95, 8 * 3600.0 + 130, 8 * 3600.0 + 330)  # seconds of day
SERIES_UID = "1.2.826.0.1.77.1"


def _volume(k: int, flip: bool = False) -> sitk.Image:
    """8x8x5, a z and x gradient on a level of its own per phase: each voxel tells its phase."""
    z, _, x = np.meshgrid(np.arange(5), np.arange(8), np.arange(8), indexing="ij")
    img = sitk.GetImageFromArray((1000 * k + 10 * z + x).astype(np.int16))
    img.SetSpacing((0.7, 0.7, 2.5))
    img.SetOrigin((-10.0, 20.0, -50.0))
    if flip:  # slices stored from head to feet: the reader must still sort along the normal
        img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    return img


def _one_series(
    folder: Path,
    n: int = 4,
    numbers: str = "distinct",
    interleave: bool = False,
    desc: str = "LIVER 4 PHASE",
    edit=None,
) -> dict[int, sitk.Image]:
    """Write n phases into one series (one SeriesInstanceUID); return the volume of each."""
    stage = Path(tempfile.mkdtemp(prefix="liverphase-mp-"))  # outside the study folder
    images, rng = {}, np.random.default_rng(3)
    instance = 0
    for k in range(n):
        images[k] = _volume(k, flip=k == 2)
        paths = write_dicom_series(
            images[k],
            stage / str(k),
            series_description=desc,
            patient_id="PX",
            patient_name="DOE^JANE",
            birth_date="19600101",
            study_uid="1.2.826.0.1.77",
            series_number=5,
        )
        for z, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID = SERIES_UID
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from("mp", k, z)
            instance += 1
            ds.InstanceNumber = instance
            ds.ContentTime = dicom_time(STARTS[k] + 0.1 * z)
            ds.AcquisitionTime = dicom_time(STARTS[k] + 0.1 * z)
            ds.SeriesTime = dicom_time(STARTS[0])
            if numbers == "distinct":
                ds.AcquisitionNumber = k + 1
            elif numbers == "absent":
                del ds.AcquisitionNumber
                ds.AcquisitionTime = dicom_time(STARTS[0])  # one time for the whole series
            else:  # "same": only ContentTime tells the phases apart
                ds.AcquisitionNumber = 1
                ds.AcquisitionTime = dicom_time(STARTS[0])
            if edit is not None:
                edit(ds, k, z)
            # interleaved: files sort slice by slice through the phases, else phase by phase
            name = f"{z:02d}_{rng.integers(1e6):06d}.dcm" if interleave else f"{k}_{z:02d}.dcm"
            folder.mkdir(parents=True, exist_ok=True)
            pydicom.dcmwrite(folder / name, ds, enforce_file_format=True)
    shutil.rmtree(stage)
    return images


def _same_image(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _as_written(img: sitk.Image) -> sitk.Image:
    """The volume as DICOM describes it: the slice axis along row x column (flips undone)."""
    return sitk.DICOMOrient(img, "LPS")


@pytest.mark.parametrize(
    ("numbers", "interleave", "split_by"),
    [
        ("distinct", False, "AcquisitionNumber"),
        ("distinct", True, "AcquisitionNumber"),
        ("absent", False, "ContentTime"),
        ("same", True, "ContentTime"),
    ],
)
def test_one_series_with_four_phases_reads_as_four_volumes(
    tmp_path: Path, numbers: str, interleave: bool, split_by: str
) -> None:
    root = tmp_path / "study"
    images = _one_series(root / "series5", numbers=numbers, interleave=interleave)
    study = read_dicom_study(root)
    assert list(study.phases) == list(PHASES)
    for k, phase in enumerate(PHASES):
        img = study.phases[phase]
        assert img.GetSize() == (8, 8, 5)
        _same_image(img, _as_written(images[k]))
        assert int(sitk.GetArrayFromImage(img).min()) == 1000 * k  # the phase's own pixels
        assert len(study.sources[phase]) == 5
    meta = study.metadata
    assert meta["phase_assignment"] == dict.fromkeys(PHASES, "acquisition order")
    assert meta["acquisitions"]["ART"] == {
        "series_instance_uid": SERIES_UID,
        "acquisition": 2,
        "of": 4,
        "split_by": split_by,
        "value": "2" if split_by == "AcquisitionNumber" else meta["acquisitions"]["ART"]["value"],
    }
    assert set(meta["series_instance_uids"].values()) == {SERIES_UID}
    assert list(meta["acquisition_offsets_s"].values()) == pytest.approx([0, 95, 130, 330])
    sops = [u for v in meta["sop_instance_uids"].values() for u in v]
    assert len(sops) == len(set(sops)) == 20
    (warning,) = meta["warnings"]
    assert "holds 4 acquisitions" in warning and "NC, ART, PV, DL" in warning


def test_three_acquisitions_are_post_contrast_unless_the_first_lacks_contrast(
    tmp_path: Path,
) -> None:
    _one_series(tmp_path / "a" / "s", n=3)
    study = read_dicom_study(tmp_path / "a")
    assert list(study.phases) == ["ART", "PV", "DL"]
    assert "assuming no non-contrast one" in study.metadata["warnings"][0]

    def agent(ds: pydicom.Dataset, k: int, z: int) -> None:
        if k:
            ds.ContrastBolusAgent = "IOPAMIDOL"

    _one_series(tmp_path / "b" / "s", n=3, edit=agent)
    study = read_dicom_study(tmp_path / "b")
    assert list(study.phases) == ["NC", "ART", "PV"]
    assert "lacks the ContrastBolusAgent" in study.metadata["warnings"][0]
    assert int(sitk.GetArrayFromImage(study.phases["NC"]).min()) == 0

    def bolus(ds: pydicom.Dataset, k: int, z: int) -> None:
        ds.ContrastBolusAgent = "IOPAMIDOL"  # copied into every image: no evidence either way
        ds.ContrastBolusStartTime = dicom_time(STARTS[0] + 60)

    _one_series(tmp_path / "c" / "s", n=2, edit=bolus)
    study = read_dicom_study(tmp_path / "c")
    assert list(study.phases) == ["NC", "PV"]  # plain + one contrast acquisition: venous
    assert "before ContrastBolusStartTime" in study.metadata["warnings"][0]


def test_own_descriptions_and_given_names_beat_acquisition_order(tmp_path: Path) -> None:
    descs = ("ARTERIAL", "PORTAL", "DELAYED")

    def own(ds: pydicom.Dataset, k: int, z: int) -> None:
        ds.SeriesDescription = descs[k]

    _one_series(tmp_path / "a" / "s", n=3, edit=own)
    study = read_dicom_study(tmp_path / "a")
    assert list(study.phases) == ["ART", "PV", "DL"]
    assert set(study.metadata["phase_assignment"].values()) == {"description"}
    assert study.metadata["warnings"] == []

    _one_series(tmp_path / "b" / "s", n=3)
    study = read_dicom_study(tmp_path / "b", acquisition_phases=["NC", "ART", "PV"])
    assert list(study.phases) == ["NC", "ART", "PV"]
    assert set(study.metadata["phase_assignment"].values()) == {"given names"}
    with pytest.raises(DicomError, match="3 acquisitions .* but 2 phase names"):
        read_dicom_study(tmp_path / "b", acquisition_phases=["NC", "ART"])
    with pytest.raises(ConfigError, match="distinct phases"):
        read_dicom_study(tmp_path / "b", acquisition_phases=["NC", "XX", "PV"])


def _missing(folder: Path) -> Path:
    victim = sorted(folder.glob("2_*.dcm"))[2]  # the middle slice of the third acquisition
    victim.unlink()
    return folder


def _conflict(folder: Path) -> Path:
    # one ART image moved onto its neighbour's position: two at one place, none at its own
    a, b = sorted(folder.glob("1_*.dcm"))[1:3]
    ds = pydicom.dcmread(b)
    ds.ImagePositionPatient = pydicom.dcmread(a).ImagePositionPatient
    pydicom.dcmwrite(b, ds, enforce_file_format=True)
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_missing, "acquisition 3 of 4: missing slice"),
        (_conflict, "neither AcquisitionNumber nor ContentTime/AcquisitionTime separates"),
    ],
)
def test_a_broken_acquisition_is_one_line_naming_the_series_folder(
    tmp_path: Path, damage, message: str
) -> None:
    folder = tmp_path / "study" / "series5"
    _one_series(folder)
    damage(folder)
    with pytest.raises(DicomError, match=message) as err:
        read_dicom_study(tmp_path / "study")
    assert err.value.path == str(folder) and "\n" not in str(err.value)
    _, problems = scan_dicom_study(tmp_path / "study")
    assert [p.path for p in problems if message in p.problem] == [str(folder)]


def test_two_reconstructions_of_one_scan_are_not_two_phases(tmp_path: Path) -> None:
    def recon(ds: pydicom.Dataset, k: int, z: int) -> None:
        ds.AcquisitionTime = dicom_time(STARTS[0] + 0.1 * z)  # the same scan, reconstructed twice

    _one_series(tmp_path / "s", n=2, numbers="same", edit=recon, desc="PORTAL VENOUS")
    with pytest.raises(DicomError, match="reconstructions of one scan") as err:
        read_dicom_study(tmp_path)
    assert err.value.path == str(tmp_path / "s")


def test_more_acquisitions_than_phases_are_not_guessed(tmp_path: Path) -> None:
    _one_series(tmp_path / "s", n=4, desc="PORTAL VENOUS")
    with pytest.raises(DicomError, match="4 acquisitions .* more than the 3 phases"):
        read_dicom_study(tmp_path, rules=_three_phase_rules())
    study = read_dicom_study(tmp_path)  # the four CT phases name them
    assert list(study.phases) == list(PHASES)


def _three_phase_rules():
    from liverphase.phases import PhaseRules

    return PhaseRules.from_mapping({"ART": "arterial", "PV": "portal", "DL": "delay"})


def test_single_acquisition_series_reads_exactly_as_before(tmp_path: Path) -> None:
    img = _volume(1)
    paths = write_dicom_series(
        img,
        tmp_path / "s",
        series_description="PORTAL VENOUS",
        patient_id="PX",
        patient_name="DOE^JANE",
        birth_date="19600101",
        study_uid="1.2.826.0.1.78",
        rng=np.random.default_rng(1),
        shuffle_instance_numbers=True,
    )
    # an axial (step-and-shoot) scan numbers each rotation: unique positions, never split
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.AcquisitionNumber = 1 + k // 2
        ds.ContentTime = dicom_time(STARTS[0] + 2 * k)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    study = read_dicom_study(tmp_path)
    assert list(study.phases) == ["PV"]
    _same_image(study.phases["PV"], img)
    assert study.metadata["phase_assignment"] == {"PV": "description"}
    assert "acquisitions" not in study.metadata and "warnings" not in study.metadata
    summary, problems = scan_dicom_study(tmp_path)
    assert problems == [] and "acquisition" not in summary["series"][0]


def test_duplicated_instances_stay_a_duplicate_position_error(tmp_path: Path) -> None:
    paths = write_dicom_series(
        _volume(0),
        tmp_path / "s",
        series_description="PORTAL VENOUS",
        patient_id="PX",
        patient_name="DOE^JANE",
        birth_date="19600101",
        study_uid="1.2.826.0.1.79",
    )
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from("copy")
    pydicom.dcmwrite(tmp_path / "s" / "zz_copy.dcm", ds, enforce_file_format=True)
    with pytest.raises(DicomError, match="duplicate slice position"):
        read_dicom_study(tmp_path)


def test_inspect_and_predict_readers_see_the_phases(tmp_path: Path) -> None:
    from liverphase.inference.run import read_dicom

    root = tmp_path / "study"
    _one_series(root / "series5", interleave=True)
    summary, problems = inspect_path(root)
    assert problems == [] and summary["phases"] == list(PHASES)
    assert [r["acquisition"]["acquisition"] for r in summary["series"]] == [1, 2, 3, 4]
    assert any("acquisition 2 of 4" in line and "→ ART" in line for line in summary["lines"])
    assert any(line.startswith("  note:") for line in summary["lines"])
    study = read_dicom(root)
    assert study.phase_names == list(PHASES) and study.reference_phase == "PV"
    assert "DOE" not in study.case_id
