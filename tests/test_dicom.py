"""DICOM study I/O: writer round trip, series sorting, phase naming, bad input, real test files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from liverphase.errors import DicomError
from liverphase.io.dicom import read_dicom_study, scan_dicom_study
from liverphase.io.dicom_write import uid_from, write_dicom_series
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.study import same_grid
from liverphase.phases import PhaseRules
from liverphase.synth.ct import synth_ct_cohort
from liverphase.synth.writers import CT_SERIES_DESCRIPTIONS

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
ANY_AS_PV = PhaseRules.from_mapping({"PV": r".*"})


def _volume(seed: int = 0, shape=(6, 12, 16), direction=None) -> sitk.Image:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(-1024, 1500, shape).astype(np.int16))
    img.SetSpacing((0.8, 0.75, 2.5))
    img.SetOrigin((-20.125, 13.5, -101.25))
    if direction is not None:
        img.SetDirection(direction)
    return img


def _series(
    folder: Path, image: sitk.Image, desc: str, t: str, study_uid: str = "1.2.826.0.1.1", **kw
) -> list[Path]:
    return write_dicom_series(
        image,
        folder,
        series_description=desc,
        patient_id="PX",
        patient_name="DOE^JOHN",
        birth_date="19500101",
        study_uid=study_uid,
        acquisition_time=t,
        series_number=kw.pop("series_number", 1 + len(list(folder.parent.glob("*")))),
        **kw,
    )


def _four_phase(root: Path, seed: int = 0) -> dict[str, sitk.Image]:
    images = {}
    for k, (phase, desc) in enumerate(
        [("NC", "NATIVE"), ("ART", "ARTERIAL"), ("PV", "PORTAL VENOUS"), ("DL", "DELAYED 3MIN")]
    ):
        images[phase] = _volume(seed + k)
        _series(root / f"s{k}", images[phase], desc, f"1200{10 * k:02d}.5", series_number=9 - k)
    return images


def _same_image(a: sitk.Image, b: sitk.Image) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# ---- the key test of issue 3: synth DICOM == synth NIfTI ---------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny cases with DICOM, some stored flipped as NIfTI and some not."""
    base = tmp_path_factory.mktemp("synth")
    for seed in range(11, 20):
        out = synth_ct_cohort(
            base / f"ct{seed}", cases=3, seed=seed, dicom=3, preset="tiny", flip_fraction=0.5
        )
        flips = [r.extra["flip_axes"] for r in open_dataset(out).cases]
        if any(flips) and not all(flips):
            return out
    raise AssertionError("no seed gave both flipped and unflipped cases")


def test_synth_dicom_and_nifti_read_back_to_the_same_voxels_and_geometry(cohort: Path) -> None:
    ds = open_dataset(cohort)
    flipped = [rec.case_id for rec in ds.cases if rec.extra["flip_axes"]]
    assert flipped and len(flipped) < len(ds.cases), "want flipped and unflipped NIfTI cases"
    for rec in ds.cases:
        nifti = ds.load_study(rec.case_id)
        dicom = read_dicom_study(cohort / "dicom" / rec.case_id)
        assert list(dicom.phases) == ["NC", "ART", "PV", "DL"]
        assert dicom.patient_id == rec.patient_id
        for phase in ds.phases:
            # NIfTI may be stored flipped: the same physical image once oriented like DICOM
            _same_image(sitk.DICOMOrient(nifti.phases[phase], "LPS"), dicom.phases[phase])
            assert dicom.phases[phase].GetPixelID() == sitk.sitkInt16
        mask = read_image(cohort / "dicom" / f"{rec.case_id}_mask.nii.gz")
        assert same_grid(mask, dicom.phases["PV"])
        _same_image(sitk.DICOMOrient(nifti.mask, "LPS"), mask)
        meta = dicom.metadata
        assert meta["phi"]["PatientName"] == f"SYNTH^PATIENT^{rec.patient_id}"
        assert len(meta["phi"]["PatientBirthDate"]) == 8
        assert "SYNTH^PATIENT" not in repr({k: v for k, v in meta.items() if k != "phi"})
        assert [len(v) for v in meta["sop_instance_uids"].values()] == [
            img.GetSize()[2] for img in dicom.phases.values()
        ]
        assert len(set(meta["series_instance_uids"].values())) == 4
        offsets = list(meta["acquisition_offsets_s"].values())
        assert offsets[0] == 0 and offsets == sorted(offsets)


def test_synth_dicom_layout_is_varied(cohort: Path) -> None:
    files = [p for p in (cohort / "dicom").rglob("*") if p.is_file() and "mask" not in p.name]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert {h.PixelRepresentation for h in headers} == {0, 1}  # unsigned + intercept -1024 too
    assert {float(h.RescaleIntercept) for h in headers} == {0.0, -1024.0}
    shuffled = 0
    for uid in {h.SeriesInstanceUID for h in headers}:
        series = sorted(
            (h for h in headers if h.SeriesInstanceUID == uid),
            key=lambda h: float(h.ImagePositionPatient[2]),
        )
        numbers = [int(h.InstanceNumber) for h in series]
        shuffled += numbers != sorted(numbers) and numbers != sorted(numbers, reverse=True)
    assert shuffled > 0


# ---- phase rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("description", "phase"),
    [(d, p) for p, ds in CT_SERIES_DESCRIPTIONS.items() for d in ds]
    + [
        ("Abdomen ARTERIAL 0.75 I26f", "ART"),
        ("late arterial", "ART"),
        ("AP 1.25mm", "ART"),
        ("Portal venous 70s", "PV"),
        ("venous phase", "PV"),
        ("PVP", "PV"),
        ("pv_3mm", "PV"),
        ("Delayed 5 min", "DL"),
        ("equilibrium", "DL"),
        ("DELAY", "DL"),
        ("NATIVE", "NC"),
        ("non-contrast", "NC"),
        ("Pre contrast", "NC"),
        ("plain CT", "NC"),
        ("UNENHANCED", "NC"),
        ("Topogram 0.6 T20f", None),
        ("Dose Report", None),
        ("", None),
    ],
)
def test_default_phase_rules(description: str, phase: str | None) -> None:
    assert PhaseRules().match(description) == phase


# ---- writer / reader round trip ---------------------------------------------------------------------
def test_instance_number_shuffle_and_unsigned_storage_do_not_change_the_volume(
    tmp_path: Path,
) -> None:
    image = _volume(3)
    rng = np.random.default_rng(0)
    plain = _series(tmp_path / "a" / "s", image, "PORTAL VENOUS", "120000")
    shuffled = _series(
        tmp_path / "b" / "s",
        image,
        "PORTAL VENOUS",
        "120000",
        rng=rng,
        shuffle_instance_numbers=True,
        rescale=(1.0, -1024.0),
    )
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in shuffled]  # slice order
    assert numbers != sorted(numbers)
    header = pydicom.dcmread(shuffled[0])
    assert header.PixelRepresentation == 0 and float(header.RescaleIntercept) == -1024
    assert plain[0].name == "IM00001.dcm" and shuffled[0].name != "IM00001.dcm"
    for folder in ("a", "b"):
        study = read_dicom_study(tmp_path / folder)
        _same_image(study.phases["PV"], image)


def test_oblique_orientation_round_trips(tmp_path: Path) -> None:
    a = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    image = _volume(4, direction=tuple(rot.ravel()))
    _series(tmp_path / "s", image, "PV", "120000")
    _same_image(read_dicom_study(tmp_path).phases["PV"], image)


def test_phases_follow_acquisition_time_and_fill_gaps_by_order(tmp_path: Path) -> None:
    times = {"NC": "080000", "ART": "080110", "PV": "080150", "DL": "080500"}
    descs = {"NC": "NATIVE", "ART": "Abdomen 1.0 B30f", "PV": "PORTAL VENOUS", "DL": "DELAYED"}
    images = {p: _volume(k) for k, p in enumerate(times)}
    for k, p in enumerate(["DL", "PV", "NC", "ART"]):  # written and numbered out of order
        _series(tmp_path / f"x{k}", images[p], descs[p], times[p], series_number=k + 1)
    # a repeat PV acquired later loses to the earlier one
    _series(tmp_path / "x9", _volume(9), "PORTAL VENOUS", "080400", series_number=9)
    study = read_dicom_study(tmp_path, case_id="c1")
    assert list(study.phases) == ["NC", "ART", "PV", "DL"]
    assert study.metadata["phase_assignment"]["ART"] == "acquisition order"
    assert study.metadata["phase_assignment"]["PV"] == "description"
    for p in times:
        _same_image(study.phases[p], images[p])
    assert [u["note"] for u in study.metadata["unused_series"]] == [
        "also named PV; the earlier acquisition 'PORTAL VENOUS' was kept"
    ]
    assert study.case_id == "c1" and study.sources["PV"][0].is_file()


def test_non_image_files_are_skipped_quietly(tmp_path: Path) -> None:
    image = _volume(5)
    _series(tmp_path / "s", image, "PORTAL VENOUS", "120000")
    (tmp_path / "README.txt").write_text("not dicom\n")
    (tmp_path / "s" / ".DS_Store").write_bytes(b"\0\1\2" * 50)
    for name, modality, sop_class in (
        ("DICOMDIR", None, "1.2.840.10008.1.3.10"),
        ("seg.dcm", "SEG", "1.2.840.10008.5.1.4.1.1.66.4"),
    ):
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = uid_from(name)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid_from(name)
        if modality:
            ds.Modality = modality
        pydicom.dcmwrite(tmp_path / name, ds, enforce_file_format=True)
    _same_image(read_dicom_study(tmp_path).phases["PV"], image)
    summary, problems = scan_dicom_study(tmp_path)
    assert problems == []
    assert summary["skipped_files"] == {"not DICOM": 2, "DICOMDIR": 1, "SEG object": 1}
    assert summary["phases"] == ["PV"] and summary["series"][0]["size"] == [16, 12, 6]


# ---- real DICOM written by someone else -------------------------------------------------------------
def test_pydicom_ct_small_reads_as_one_slice_with_hounsfield_units(tmp_path: Path) -> None:
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / "CT_small.dcm")
    study = read_dicom_study(tmp_path, rules=ANY_AS_PV)
    img = study.phases["PV"]
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == (1, 128, 128) and img.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(arr[0], expected)
    assert (int(arr.min()), int(arr.max())) == (128 - 1024, 2191 - 1024)
    np.testing.assert_allclose(img.GetSpacing(), (0.661468, 0.661468, 5.0))
    np.testing.assert_allclose(img.GetOrigin(), (-158.135803, -179.035797, -75.699997))
    assert study.patient_id == "1CT1" and study.metadata["modality"] == "CT"


def test_pydicom_truncated_file_is_a_dicom_error_naming_it(tmp_path: Path) -> None:
    shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", tmp_path / "MR_truncated.dcm")
    with pytest.raises(DicomError, match="MR_truncated.dcm") as err:
        read_dicom_study(tmp_path, rules=ANY_AS_PV)
    assert "pixel data" in str(err.value)


# ---- bad input ---------------------------------------------------------------------------------------
def _break(kind: str, root: Path) -> Path:
    """Write a 4-phase study into root and damage it; return the path the error must name."""
    _four_phase(root)
    pv = sorted((root / "s2").iterdir())
    if kind == "two studies":
        _series(root / "other", _volume(7), "ARTERIAL", "130000", study_uid="1.2.826.0.1.2")
        return root
    if kind == "duplicate position":
        ds = pydicom.dcmread(pv[2])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from("dup")
        pydicom.dcmwrite(root / "s2" / "zz_copy.dcm", ds, enforce_file_format=True)
        return root / "s2" / "zz_copy.dcm"  # the second of the two (files are read sorted)
    if kind == "missing slice":
        by_z = sorted(pv, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
        by_z[3].unlink()
        return root / "s2"
    if kind == "no phase":
        shutil.rmtree(root)
        _series(root / "s", _volume(1), "Topogram 0.6 T20f", "120000")
        _series(root / "t", _volume(2), "Abdomen 5.0", "120100")
        return root
    if kind == "truncated":
        data = pv[1].read_bytes()
        pv[1].write_bytes(data[: int(len(data) * 0.7)])
        return pv[1]
    if kind == "orientation":
        ds = pydicom.dcmread(pv[4])
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        pydicom.dcmwrite(pv[4], ds, enforce_file_format=True)
        return pv[4]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("two studies", "2 studies mixed"),
        ("duplicate position", "duplicate slice position"),
        ("missing slice", "missing slice"),
        ("no phase", "no series matches a phase rule"),
        ("truncated", "pixel data"),
        ("orientation", "inconsistent ImageOrientationPatient"),
    ],
)
def test_bad_dicom_raises_an_error_naming_the_path(tmp_path: Path, kind: str, message: str) -> None:
    root = tmp_path / "study"
    where = _break(kind, root)
    with pytest.raises(DicomError, match=message) as err:
        read_dicom_study(root)
    assert err.value.path == str(where)
    assert str(where) in str(err.value)
    _, problems = scan_dicom_study(root)
    assert any(message in p.problem and p.path == str(where) for p in problems)


def test_scan_collects_every_problem_at_once(tmp_path: Path) -> None:
    root = tmp_path / "study"
    _break("missing slice", root)
    _series(root / "other", _volume(7), "ARTERIAL", "130000", study_uid="1.2.826.0.1.2")
    art = sorted((root / "s1").iterdir())
    art[0].write_bytes(art[0].read_bytes()[:-300])
    summary, problems = scan_dicom_study(root)
    found = " | ".join(p.problem for p in problems)
    for message in ("2 studies mixed", "missing slice", "pixel data"):
        assert message in found
    assert all(isinstance(p, DicomError) and p.path for p in problems)
    assert summary["phases"] == ["NC", "ART", "PV", "DL"]
    assert any("→ NC" in line for line in summary["lines"])
    with pytest.raises(DicomError):
        read_dicom_study(root)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DicomError, match="not found"):
        read_dicom_study(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM image files"):
        read_dicom_study(tmp_path / "empty")


@pytest.mark.parametrize("keep", [100, 140, 300, 800, -10])
def test_file_cut_anywhere_is_an_error_naming_it(tmp_path: Path, keep: int) -> None:
    paths = _series(tmp_path / "s", _volume(2), "PORTAL VENOUS", "120000")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:keep])
    with pytest.raises(DicomError) as err:
        read_dicom_study(tmp_path)
    assert err.value.path == str(paths[3])


def test_synthetic_uids_are_deterministic() -> None:
    from liverphase.io.dicom_write import uid_from

    assert uid_from("study", 3) == uid_from("study", 3)
    assert uid_from("study", 3) != uid_from("study", 4)
    assert uid_from("a").startswith("2.25.") and len(uid_from("a")) <= 64
