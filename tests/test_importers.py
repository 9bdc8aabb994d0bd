"""Importers of public datasets, each run on a miniature of its published layout (DATASETS.md):
names, folders, CSV columns and the listed faults planted, volumes of a few voxels."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.errors import ConfigError, DatasetError
from liverphase.io.cases_csv import read_cases_csv
from liverphase.io.importers import IMPORT_JSON, get_importer, list_importers
from liverphase.io.nifti import open_dataset

RUNNER = CliRunner()
BOM = b"\xef\xbb\xbf"


# -- building miniatures ---------------------------------------------------------------------------
def nii(path: Path, shape=(8, 8, 4), dtype=np.int16, value: int = 100, affine=None, mask=False):
    """Write a tiny NIfTI (x, y, z shape): a body of `value`, or a 0/1 block when `mask`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros(shape, dtype=dtype)
    if mask:
        arr[2:6, 2:6, 1:3] = 1
    else:
        arr[...] = value
        arr[0, 0, 0] = 0
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))


def write_csv(path: Path, header: list[str], rows: list[list], bom: bool = False, quote=False):
    """A CSV as published (optionally with a UTF-8 BOM, optionally every string quoted)."""
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC if quote else csv.QUOTE_MINIMAL)
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((BOM if bom else b"") + buf.getvalue().encode())


def tree_hash(root: Path) -> str:
    """Hash of every path, link target and file content under root (SRC must not change)."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(files + dirnames):
            p = Path(dirpath, name)
            h.update(str(p.relative_to(root)).encode())
            if p.is_file():
                h.update(p.read_bytes())
                h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def make_cirrmri(root: Path, n_extra: int = 0) -> Path:
    """CirrMRI600+: T1 folders plain, T2 double-nested, a healthy subject, Metadata with a BOM."""
    src = root / "CirrMRI600+"
    t1 = src / "Cirrhosis_T1_3D"
    t2 = src / "Cirrhosis_T2_3D" / "Cirrhosis_T2_3D"  # the double-nested archive
    # pid: (T1 split folder, T2 split folder); 4 is the T1-test / T2-train conflict, 5 is T2 only
    plan = {1: ("train", "train"), 2: ("train", None), 3: ("valid", "valid"), 4: ("test", "train")}
    plan[5] = (None, "test")
    for k in range(n_extra):
        plan[10 + k] = ("train", "train")
    for pid, (s1, s2) in plan.items():
        for base, split, shape in ((t1, s1, (8, 8, 4)), (t2, s2, (8, 8, 5))):
            if split:
                nii(base / f"{split}_images" / f"{pid}.nii.gz", shape)
                nii(base / f"{split}_masks" / f"{pid}.nii.gz", shape, np.uint8, mask=True)
    healthy = src / "Healthy_subjects" / "T1_W_Healthy"
    nii(healthy / "T1_images" / "1.nii.gz")
    nii(healthy / "T1_masks" / "1.nii.gz", dtype=np.uint8, mask=True)
    header = ["Patient ID", "Age", "Gender", "Radiological Evaluation"]
    rows = [[pid, 40 + pid, 1 + pid % 2, 1 + pid % 3] for pid in plan]
    write_csv(
        src / "Metadata" / "CirrMRI600+_CompleteData_age_gender_evaluation.csv",
        header,
        rows,
        bom=True,
    )
    write_csv(src / "Metadata" / "T1_age_gender_evaluation.csv", header, rows[:3])
    nii(src / "Cirrhosis_T2_2D" / "train" / "1" / "images" / "unused.nii.gz")
    return src


def make_plc(root: Path, n: int = 1) -> Path:
    """PLC-CECT: patient_data.csv one row per phase, uint8 windowed volumes at 1 mm / origin 0."""
    src = root / "PLC_CECT"
    rows = []
    for i, label in enumerate(("HCC", "ICC", "CHCC", "CN") * n, start=1):
        pid = f"P{i:04d}"
        for phase, nz in (("P", 4), ("C1", 5), ("C2", 4), ("C3", 6)):
            ct = f"ct_files/{pid}_ct_{phase}.nii.gz"
            mask = f"mask_files/{pid}_mask_{phase}.nii.gz"
            liver = f"liver_mask_files/{pid}-livermask_{phase}.nii.gz"
            nii(src / ct, (8, 8, nz), np.uint8, value=255)
            nii(src / liver, (8, 8, nz), np.uint8, mask=True)
            if label != "CN":
                nii(src / mask, (8, 8, nz), np.uint8, mask=True)
            rows.append(
                [
                    pid,
                    50 + i,
                    "male" if i % 2 else "female",
                    phase,
                    label,
                    ct,
                    "NA" if label == "CN" else mask,
                    liver,
                ]
            )
    # the middle value 128 and the window's ends, to check the HU mapping
    arr = np.asanyarray(nib.load(str(src / "ct_files/P0001_ct_C2.nii.gz")).dataobj).copy()
    arr[1, 1, 1], arr[2, 2, 2] = 128, 0
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(src / "ct_files/P0001_ct_C2.nii.gz"))
    header = ["patient_id", "age", "gender", "phase", "cancer_type", "ct_path", "mask_path"]
    write_csv(src / "patient_data.csv", [*header, "liver_mask_path"], rows, quote=True)
    return src


def make_mct(root: Path, n_extra: int = 0) -> Path:
    """MCT-LTDiag: per case NIFTI/{nc,art,pvp,delay}, mask_pvp, liver mask; meta CSV with a BOM."""
    src = root / "MCT-LTDiag"
    ids = {"230218a1": "BCLM", "230219b2": "CRLM", "230220c3": "HCC", "230221d4": "HH"}
    ids["230222e5"] = "ICC"
    ids.update({f"2303{k:02d}x{k}": "HCC" for k in range(n_extra)})
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    for cid in ids:
        for k, name in enumerate(("nc", "art", "pvp", "delay")):
            nii(src / cid / "NIFTI" / f"{name}.nii.gz", (8, 8, 4 + k % 2), affine=affine)
        nii(src / cid / "mask_pvp.nii.gz", dtype=np.uint8, mask=True, affine=affine)
        nii(src / cid / "liver_mask_pvp.nii.gz", dtype=np.uint8, mask=True, affine=affine)
    header = [
        "ID",
        "type",
        "patient_sex",
        "patient_age",
        "Cirrhosis status (Y/N)",
        "History of viral hepatitis (Y/N)",
        "History of chemotherapy (Y/N)",
    ]
    rows = [
        [cid, t, "F" if i % 2 else "M", 40 + i, "N", "N", "Y"]
        for i, (cid, t) in enumerate(ids.items())
    ]
    write_csv(src / "meta" / "meta_info_patient.csv", header, rows, bom=True)
    return src


def run_import(name: str, src: Path, out: Path, **options):
    """Import and check the source is untouched and the result opens and inspects clean."""
    before = tree_hash(src)
    summary = get_importer(name)(src, out, progress=False, **options)
    assert tree_hash(src) == before, "the import changed SRC"
    result = RUNNER.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 problem(s) found" in result.output
    return summary, open_dataset(out)


def cases_by_id(out: Path) -> dict:
    """cases.csv rows by case id."""
    return {r.case_id: r for r in read_cases_csv(out / "cases.csv")}


# -- the importers ----------------------------------------------------------------------------------
def test_cirrmri600(tmp_path: Path) -> None:
    src = make_cirrmri(tmp_path)
    summary, ds = run_import("cirrmri600", src, tmp_path / "out")
    assert set(summary.warnings) == {
        "csv_bom",
        "double_nested_archive",
        "split_conflict_t1_t2",
        "missing_sequence",
    }
    assert summary.warnings["split_conflict_t1_t2"].cases == ["cirr_4"]
    assert summary.warnings["missing_sequence"].cases == ["cirr_2", "cirr_5", "healthy_1"]
    assert not summary.problems
    assert ds.phases == ["T1W", "T2W"] and ds.modality == "mri" and ds.roi == "organ"
    assert ds.ordinal and ds.allow_missing_phases
    assert ds.class_names == ["healthy", "mild", "moderate", "severe"]
    rows = cases_by_id(ds.root)
    assert set(rows) == {"cirr_1", "cirr_2", "cirr_3", "cirr_4", "cirr_5", "healthy_1"}
    stages = {1: "moderate", 2: "severe", 3: "mild", 4: "moderate", 5: "severe"}
    for pid, stage in stages.items():
        rec = rows[f"cirr_{pid}"]
        assert rec.label == stage and rec.patient_id == str(pid)
        assert rec.extra["age"] == str(40 + pid)
        assert rec.extra["sex"] == ("M" if pid % 2 else "F")
    assert rows["healthy_1"].label == "healthy" and rows["healthy_1"].extra["split"] == ""
    splits = {c: rows[c].extra["split"] for c in rows if c.startswith("cirr")}
    assert splits == {
        "cirr_1": "train",
        "cirr_2": "train",
        "cirr_3": "val",
        "cirr_4": "test",
        "cirr_5": "test",
    }
    # the T1 and T2 of one patient are one study; the mask lies on the reference sequence
    assert ds.present_phases("cirr_1") == ["T1W", "T2W"]
    assert ds.present_phases("cirr_5") == ["T2W"]
    assert ds.case_reference_phase("cirr_5") == "T2W"
    assert ds.load_study("cirr_5").mask.GetSize() == (8, 8, 5)
    assert ds.load_study("cirr_1").mask.GetSize() == (8, 8, 4)
    # nothing needed a fix: every file is a link into SRC
    files = list((ds.root / "imagesTr").iterdir()) + list((ds.root / "labelsTr").iterdir())
    assert files and all(f.is_symlink() for f in files)
    assert summary.linked == len(files) and summary.written == 0


def test_plc_cect(tmp_path: Path) -> None:
    src = make_plc(tmp_path)
    summary, ds = run_import("plc-cect", src, tmp_path / "out")
    assert set(summary.warnings) == {
        "false_spacing",
        "windowed_uint8",
        "controls_without_lesion_mask",
    }
    assert summary.warnings["controls_without_lesion_mask"].cases == ["P0004"]
    assert ds.phases == ["NC", "ART", "PV", "DL"] and ds.reference_phase == "PV"
    assert ds.class_names == ["HCC", "ICC", "CHCC"]
    rows = cases_by_id(ds.root)
    assert {c: r.label for c, r in rows.items()} == {
        "P0001": "HCC",
        "P0002": "ICC",
        "P0003": "CHCC",
    }
    assert rows["P0001"].extra == {"age": "51", "sex": "M"}
    study = ds.load_study("P0001")
    for image in study.phases.values():  # in-plane spacing rewritten, slice spacing kept
        assert np.allclose(image.GetSpacing(), (0.78125, 0.78125, 1.0))
    assert study.phases["ART"].GetSize() == (8, 8, 5)
    assert np.allclose(study.mask.GetSpacing(), (0.78125, 0.78125, 1.0))
    pv = sitk.GetArrayFromImage(study.phases["PV"])  # (z, y, x)
    assert pv.dtype == np.int16
    assert pv[1, 1, 1] == 1 and pv[2, 2, 2] == -200 and pv[3, 3, 3] == 200
    assert not any(f.is_symlink() for f in (ds.root / "imagesTr").iterdir())  # all fixed copies
    # roi=organ keeps the controls, cropped on the PV liver mask
    summary, ds = run_import("plc-cect", src, tmp_path / "organ", roi="organ")
    assert "controls_without_lesion_mask" not in summary.warnings
    assert ds.roi == "organ" and cases_by_id(ds.root)["P0004"].label == "CN"


@pytest.mark.parametrize("merge", [False, True])
def test_mct_ltdiag(tmp_path: Path, merge: bool) -> None:
    src = make_mct(tmp_path)
    summary, ds = run_import("mct-ltdiag", src, tmp_path / "out", merge_metastases=merge)
    assert set(summary.warnings) == {"csv_bom"}
    rows = cases_by_id(ds.root)
    assert len(rows) == 5 and all(r.patient_id == c for c, r in rows.items())
    assert rows["230218a1"].label == ("metastasis" if merge else "BCLM")
    assert rows["230218a1"].extra["type"] == "BCLM"
    assert rows["230219b2"].extra["sex"] == "F" and rows["230219b2"].extra["age"] == "41"
    assert summary.classes == (
        {"HCC": 1, "HH": 1, "ICC": 1, "metastasis": 2}
        if merge
        else {"BCLM": 1, "CRLM": 1, "HCC": 1, "HH": 1, "ICC": 1}
    )
    study = ds.load_study("230220c3")
    assert np.allclose(study.reference.GetSpacing(), (0.7, 0.7, 5.0))
    files = list((ds.root / "imagesTr").iterdir()) + list((ds.root / "labelsTr").iterdir())
    assert len(files) == 25 and all(f.is_symlink() for f in files)


def test_nested_root_and_mask_fix(tmp_path: Path) -> None:
    src = make_mct(tmp_path / "MCT-LTDiag")  # MCT-LTDiag/MCT-LTDiag/...: unpacked double-nested
    mask = src / "230220c3" / "mask_pvp.nii.gz"
    nii(mask, dtype=np.uint8, mask=True, affine=np.diag([0.7, 0.7, 5.0, 1.0]))
    arr = np.asanyarray(nib.load(str(mask)).dataobj) * 255  # a 0/255 mask needs a fixed copy
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), np.diag([0.7, 0.7, 5.0, 1.0])), str(mask))
    summary, ds = run_import("mct-ltdiag", tmp_path / "MCT-LTDiag", tmp_path / "out")
    assert set(summary.warnings) == {"csv_bom", "double_nested_archive", "mask_not_binary"}
    assert summary.warnings["mask_not_binary"].cases == ["230220c3"]
    fixed = ds.label_path("230220c3")
    assert not fixed.is_symlink() and summary.written == 1
    assert set(np.unique(sitk.GetArrayFromImage(ds.load_study("230220c3").mask))) == {0, 1}


# -- shared behaviour and the CLI -------------------------------------------------------------------
def test_out_rules_and_reimport(tmp_path: Path) -> None:
    src = make_mct(tmp_path)
    out = tmp_path / "out"
    get_importer("mct-ltdiag")(src, out)
    assert (out / IMPORT_JSON).is_file()
    get_importer("mct-ltdiag")(src, out, merge_metastases=True)  # a previous import: replaced
    assert "metastasis" in open_dataset(out).class_names
    with pytest.raises(DatasetError, match="import of mct-ltdiag"):
        get_importer("plc-cect")(make_plc(tmp_path), out)
    with pytest.raises(DatasetError, match="inside SRC"):
        get_importer("mct-ltdiag")(src, src / "out")
    with pytest.raises(ConfigError, match="merge_metastases"):
        get_importer("plc-cect")(src, tmp_path / "x", merge_metastases=True)


def test_cli_import(tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["import", "--list"])
    assert result.exit_code == 0
    assert set(list_importers()) == {"cirrmri600", "plc-cect", "mct-ltdiag", "lld-mmri"}
    assert all(name in result.output for name in list_importers())
    result = RUNNER.invoke(app, ["import", "lld-mri", str(tmp_path), str(tmp_path / "o")])
    assert result.exit_code == 2
    assert (
        result.stderr.count("\n") == 1
        and "known: cirrmri600, lld-mmri, mct-ltdiag, plc-cect" in result.stderr
    )
    result = RUNNER.invoke(
        app, ["import", "mct-ltdiag", str(tmp_path / "nope"), str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not found" in result.stderr
    src = make_mct(tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    result = RUNNER.invoke(app, ["import", "mct-ltdiag", str(src), str(tmp_path / "busy")])
    assert result.exit_code == 2 and "not empty" in result.stderr
    out = tmp_path / "ok"
    result = RUNNER.invoke(
        app, ["import", "mct-ltdiag", str(src), str(out), "--merge-metastases", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "cases: 5" in result.output and "warning [csv_bom]" in result.output
