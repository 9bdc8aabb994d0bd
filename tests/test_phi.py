"""Identifiers policy: a DICOM study carrying every Basic Profile attribute of `io.phi` (distinct,
greppable values), in a folder named after the patient, predicted through the CLI: no output but
the DICOM SEG holds any value, the case id is a pseudonym with a warning; the default SEG keeps the
study's identity, `--anonymize` writes one with none of the values and fresh UIDs; the folder-name
matcher finds name components in any order, case and separator without flagging ordinary ids."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from _predict_support import SEG_OPTIONS, make_bundle, make_cohort, tune_lesion_fraction
from liverphase.cli import app
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom
from liverphase.io.nifti import open_dataset
from liverphase.io.phi import (
    BASIC_PROFILE,
    UIDS,
    identifiers,
    name_holds,
    phi_strings,
    pseudonym,
)

RUNNER = CliRunner()
FOLDER = "Johnathan_Doe_scan"

PLANTED: dict[str, object] = {
    # people
    "PatientName": "Doe^Johnathan",
    "OtherPatientNames": "Roe^Rickardson",
    "PatientBirthName": "Moe^Maryanne",
    "PatientMotherBirthName": "Poe^Penelope",
    "ReferringPhysicianName": "Kildare^Jameson",
    "PerformingPhysicianName": "Quincy^Margaret",
    "NameOfPhysiciansReadingStudy": "Casey^Benedictus",
    "OperatorsName": "Ratched^Mildred",
    "PhysiciansOfRecord": "Welby^Marcusian",
    "RequestingPhysician": "Zhivago^Yurievich",
    "ScheduledPerformingPhysicianName": "Carter^Johnston",
    "ResponsiblePerson": "Owner^Oliviana",
    # identifiers, addresses, places, devices
    "PatientID": "PID-7731995",
    "IssuerOfPatientID": "ISSUER-HOSP-9",
    "OtherPatientIDs": ["OPID-4418822", "OPID-4418823"],
    "MedicalRecordLocator": "MRL-88120",
    "AccessionNumber": "ACC-55512",
    "StudyID": "SID-40213",
    "AdmissionID": "ADM-60606",
    "RequestedProcedureID": "RPID-1212",
    "PerformedProcedureStepID": "PPS-3434",
    "ScheduledProcedureStepID": "SPS-5656",
    "PatientAddress": "12 Quarry Lane, Springfield",
    "PatientTelephoneNumbers": "+1-555-0199",
    "ReferringPhysicianAddress": "7 Harley Street, London",
    "ReferringPhysicianTelephoneNumbers": "+44-20-7946-01",
    "InstitutionName": "St Elsewhere Clinic",
    "InstitutionAddress": "1 Elsewhere Road, Boston",
    "InstitutionalDepartmentName": "Dept Radiology West",
    "StationName": "CTSTATION-07",
    "DeviceSerialNumber": "SN-99017731",
    "ResponsibleOrganization": "Acme Kennel Org",
    "MilitaryRank": "Colonel-Rank-X",
    "BranchOfService": "Navy-Branch-Y",
    # dates and times (AcquisitionTime, SeriesTime, ContentTime: the synthetic per-series values,
    # which order the phases; one AcquisitionDate for all so the order stays)
    "PatientBirthDate": "19471103",
    "PatientBirthTime": "031500.125",
    "StudyDate": "20190412",
    "StudyTime": "081122.500",
    "SeriesDate": "20190413",
    "AcquisitionDate": "20190414",
    "AcquisitionDateTime": "20190414083000.25",
    "ContentDate": "20190415",
    "InstanceCreationDate": "20190416",
    "InstanceCreationTime": "101010.250",
    "PerformedProcedureStepStartDate": "20190417",
    "PerformedProcedureStepStartTime": "091500.750",
    "PerformedProcedureStepEndDate": "20190418",
    "PerformedProcedureStepEndTime": "094500.750",
    "LastMenstrualDate": "20190301",
    "InstanceCreatorUID": "1.2.3.4.5.6.7731995.1",
    "IrradiationEventUID": "1.2.3.4.5.6.7731995.2",
    # demographics and free text (removed by --anonymize; never copied into outputs)
    "PatientSex": "F",
    "PatientAge": "071Y",
    "PatientSize": "1.62",
    "PatientWeight": "58",
    "EthnicGroup": "GROUP-ZX",
    "Occupation": "Lighthouse-OCC",
    "AdditionalPatientHistory": "History HX-ZEBRA-1",
    "PatientComments": "Comment CMT-ZEBRA-2",
    "MedicalAlerts": "Alert ALR-ZEBRA-3",
    "Allergies": "Allergy ALG-ZEBRA-4",
    "PregnancyStatus": 4,
    "SmokingStatus": "NO",
    "PatientReligiousPreference": "Religion-RLG-5",
    "CountryOfResidence": "Freedonia-CTY",
    "RegionOfResidence": "Region-RGN-6",
    "PatientState": "State-PST-7",
    "StudyDescription": "Liver study STD-ZEBRA-8",
    "ProtocolName": "Protocol PRT-ZEBRA-9",
    "ImageComments": "Image note IMG-ZEBRA-10",
    "DerivationDescription": "Derived DRV-ZEBRA-11",
    "PerformedProcedureStepDescription": "Step PSD-ZEBRA-12",
    "AdmittingDiagnosesDescription": "Diagnosis ADX-ZEBRA-13",
}
# kept as synthesized: the UIDs and the times that order the phases (their values are read back
# from the files and searched like the planted ones); SeriesDescription names the phase
FROM_SOURCE = (*UIDS[:4], "AcquisitionTime", "SeriesTime", "ContentTime", "SeriesDescription")
SEQUENCES = tuple(k for k in BASIC_PROFILE if k.endswith("Sequence"))


def _item(keyword: str) -> Dataset:
    """A sequence item with a greppable code meaning naming its sequence."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "1", "99ZZ"
    item.CodeMeaning = f"SEQ-ZEBRA-{SEQUENCES.index(keyword)}"
    return item


def test_the_planted_study_covers_every_listed_attribute() -> None:
    assert set(PLANTED) | set(FROM_SOURCE) | set(SEQUENCES) == set(BASIC_PROFILE)
    assert len(BASIC_PROFILE) == len(set(BASIC_PROFILE))


def _plant(folder: Path) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        for keyword, value in PLANTED.items():
            setattr(ds, keyword, value)
        for keyword in SEQUENCES:
            setattr(ds, keyword, [_item(keyword)])
        ds.save_as(path)


def _source_values(folder: Path) -> set[str]:
    """Every planted or source value long enough to search (names also by component)."""
    values: set[str] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in (*PLANTED, *FROM_SOURCE[:-1]):
            raw = ds.get(keyword)
            items = list(raw) if isinstance(raw, pydicom.multival.MultiValue) else [raw]
            for value in (str(v) for v in items if v is not None):
                values.add(value)
                values.update(part for part in value.split("^") if len(part) >= 7)
                if keyword.endswith("Date") and len(value) == 8:
                    values.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    values.update(_item(k).CodeMeaning for k in SEQUENCES)
    return {v for v in values if len(v) >= 5}


def _text(value: object) -> str:
    """An attribute value as text, several values joined by a backslash."""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _leaks(files: list[Path], values: set[str], output: str = "") -> list[tuple[str, str]]:
    """(where, value) for each value found in a file (raw and, for .gz, unpacked) or in `output`."""
    found = []
    for path in files:
        data = path.read_bytes()
        blobs = [data, gzip.decompress(data)] if path.suffix == ".gz" else [data]
        low = b"".join(b.lower() for b in blobs)
        found += [(path.name, v) for v in values if v.lower().encode() in low]
    found += [("CLI output", v) for v in values if v.lower() in output.lower()]
    return found


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The study in a folder named after the patient, a tuned segmenting bundle, and predict run
    through the CLI twice: by default and with --anonymize."""
    root = tmp_path_factory.mktemp("phi")
    make_cohort(root, cases=1)
    study_dir = Path(shutil.copytree(root / "ds" / "dicom" / "CT0000", root / FOLDER))
    _plant(study_dir)
    bundle = make_bundle(root / "bundle", "std_net", SEG_OPTIONS, roi_source="mask_jitter")
    bbox = open_dataset(root / "ds").case("CT0000").bbox
    tune_lesion_fraction(bundle, read_dicom(study_dir), bbox, fraction=0.2)
    box = " ".join(str(v) for v in bbox)
    runs = {}
    for name, extra in (("default", []), ("anonymize", ["--anonymize"])):
        out = root / f"out_{name}"
        args = ["predict", str(study_dir), "--bundle", str(bundle), "--out", str(out)]
        result = RUNNER.invoke(app, [*args, "--bbox", box, "--bbox-units", "voxel", *extra])
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        runs[name] = (out, result.output)
    return {"root": root, "study": study_dir, "bundle": bundle, "bbox": bbox, "runs": runs}


@pytest.mark.parametrize("mode", ["default", "anonymize"])
def test_no_output_but_the_seg_holds_a_planted_value(planted: dict, mode: str) -> None:
    out, output = planted["runs"][mode]
    files = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert {"prediction.json", "report.html", "lesion_mask.nii.gz", "lesion_seg.dcm"} <= names
    values = _source_values(planted["study"])
    assert "PID-7731995" in values and "Johnathan" in values and "1947-11-03" in values
    others = [p for p in files if p.name != "lesion_seg.dcm"]
    assert _leaks(others, values, output) == []
    pred = json.loads((out / "prediction.json").read_text())
    uid = str(pydicom.dcmread(next(planted["study"].rglob("*.dcm"))).StudyInstanceUID)
    assert pred["case_id"] == pseudonym(uid) and pred["case_id"] in output
    assert pred["source"] == {"kind": "dicom", "study_pseudonym": pseudonym(uid)}
    named = [w for w in pred["warnings"] if "pseudonym" in w]
    assert len(named) == 1 and "PatientName" in named[0] and "--keep-phi" in named[0]
    assert "patient" not in pred


def test_the_default_seg_keeps_the_study_identity_but_name_and_birth_date(planted: dict) -> None:
    out, _ = planted["runs"]["default"]
    seg = pydicom.dcmread(out / "lesion_seg.dcm")
    source = pydicom.dcmread(next(planted["study"].rglob("*.dcm")), stop_before_pixels=True)
    assert seg.PatientID == "PID-7731995" and seg.AccessionNumber == "ACC-55512"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert str(seg.PatientName) == "" and str(seg.PatientBirthDate) == ""
    data = (out / "lesion_seg.dcm").read_bytes().lower()
    for value in ("johnathan", "doe^", "19471103"):
        assert value.encode() not in data


def test_the_anonymized_seg_has_no_planted_value_and_fresh_consistent_uids(planted: dict) -> None:
    out, _ = planted["runs"]["anonymize"]
    path = out / "lesion_seg.dcm"
    values = _source_values(planted["study"])
    source_uids = set()
    for p in planted["study"].rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        source_uids |= {str(ds.get(k)) for k in UIDS[:4]}
    assert _leaks([path], values | source_uids) == []
    seg = pydicom.dcmread(path)
    dummies = ("PatientName", "PatientID")  # the case id, itself identifier-free
    same = [k for k in PLANTED if k not in dummies and _text(seg.get(k)) == _text(PLANTED[k])]
    assert same == []  # the short values too, read back as attributes
    case_id = json.loads((out / "prediction.json").read_text())["case_id"]
    assert seg.PatientName.family_name == seg.PatientID == case_id
    assert seg.PatientIdentityRemoved == "YES"
    assert seg.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not seg.get("StudyDate") and not seg.get("AcquisitionDate")
    new = {seg.StudyInstanceUID, seg.SeriesInstanceUID, seg.SOPInstanceUID, seg.FrameOfReferenceUID}
    assert len(new) == 4 and not new & source_uids
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID not in source_uids
    listed = [i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence]
    frames = [
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(frames) == sorted(listed) and len(set(listed)) == len(listed) == len(frames)
    assert not set(listed) & source_uids
    default = hd.seg.segread(planted["runs"]["default"][0] / "lesion_seg.dcm")
    anonymous = hd.seg.segread(path)
    np.testing.assert_array_equal(anonymous.pixel_array, default.pixel_array)
    assert 0 < anonymous.pixel_array.sum() < anonymous.pixel_array.size


def test_keep_phi_keeps_the_folder_name_and_identifiers(planted: dict) -> None:
    study = read_dicom(planted["study"], keep_phi=True)
    assert study.case_id == FOLDER
    pred = Predictor(planted["bundle"]).predict_study(
        study,
        planted["root"] / "out_keep",
        bbox=planted["bbox"],
        bbox_units="voxel",
        keep_phi=True,
        cam=False,
        occlusion=False,
    )
    assert pred["case_id"] == FOLDER and not [w for w in pred["warnings"] if "pseudonym" in w]
    assert pred["patient"]["name"] == "Doe^Johnathan"
    assert pred["source"]["study_instance_uid"] == study.metadata["study_instance_uid"]
    seg = pydicom.dcmread(planted["root"] / "out_keep" / "lesion_seg.dcm")
    assert str(seg.PatientName) == "Doe^Johnathan"


def test_keep_phi_with_anonymize_is_one_line(planted: dict, tmp_path: Path) -> None:
    args = ["predict", planted["study"], "--bundle", planted["bundle"], "--out", tmp_path / "o"]
    result = RUNNER.invoke(app, [str(a) for a in [*args, "--keep-phi", "--anonymize"]])
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--anonymize" in errors[0]
    assert not (tmp_path / "o" / "prediction.json").exists()


PHI = {
    "PatientName": "Doe^Johnathan",
    "PatientID": "PID-7731995",
    "PatientBirthDate": "19471103",
    "StudyID": "1",
    "InstitutionName": "SYNTH HOSPITAL",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1234567",
}


@pytest.mark.parametrize(
    "name",
    [
        "Doe_Johnathan",
        "Johnathan_Doe_scan",
        "JOHNATHAN-DOE",
        "johnathan.doe",
        "JohnathanDoe",
        "doe johnathan ct",
        "Johnathan",
        "scan_doe",
        "scan_pid7731995",
        "PID-7731995",
        "1947-11-03_ct",
        "03.11.1947",
        "1.2.826.0.1.3680043.8.498.1234567",
    ],
)
def test_a_name_holding_an_identifier_is_found(name: str) -> None:
    assert name_holds(name, PHI)


@pytest.mark.parametrize(
    "name", ["CT0003", "case_0001", "study_1", "synth_study", "doetrinal", "liver_ct", "P0003"]
)
def test_an_ordinary_id_is_not_flagged(name: str) -> None:
    assert name_holds(name, PHI) == []


def test_short_name_components_match_whole_words_and_accents_fold() -> None:
    short = {"PatientName": "Li^Wu"}
    assert name_holds("wu_li_ct", short) == ["PatientName"]
    assert name_holds("LiWu2020", short) == ["PatientName"]
    assert name_holds("liver_study", short) == []
    assert name_holds("Müller-scan", {"PatientName": "Muller^Hans"}) == ["PatientName"]
    assert name_holds("scan_mueller", {"PatientName": "Müller^Hans"}) == []  # no transliteration


def test_identifiers_and_their_text_forms() -> None:
    ds = Dataset()
    ds.PatientName, ds.OtherPatientIDs, ds.StudyDate = "Doe^Jane^Q", ["OP-111", "OP-222"], ""
    found = identifiers([ds, ds])
    assert found == {"PatientName": "Doe^Jane^Q", "OtherPatientIDs": "OP-111\\OP-222"}
    forms = set(phi_strings(found | {"AcquisitionTime": "071513.25", "StudyID": "1"}))
    assert {"Doe^Jane^Q", "Jane Doe", "Doe, Jane", "Jane_Doe", "OP-111", "OP-222"} <= forms
    assert {"071513.25", "07:15:13"} <= forms and "1" not in forms
