"""`liverphase predict`: resolve STUDY (DICOM folder, one nnU-Net case, or a whole dataset) and run.

STUDY may be
- a DICOM study folder (any nesting): OUT holds that study's outputs;
- a phase file of an nnU-Net case (`DATASET/imagesTr/case_0001.nii.gz` → case `case`), or `DATASET`
  with `case`: OUT holds that case's outputs;
- a dataset folder without `case`: every case goes to OUT/<case_id>/, with a progress bar and one
  OUT/summary.csv (a case that fails is listed with its error; the others go on).
A DICOM study's case id is its folder name, unless the folder name holds an identifier of the study's
headers (`io.phi.name_holds`: a name component, an id, a date, a UID): then `io.phi.pseudonym` of
the StudyInstanceUID, with a warning in prediction.json; `keep_phi` keeps the folder name.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_text, check_writable_dir
from liverphase.errors import ConfigError, InputFileError, LiverphaseError
from liverphase.inference.locate import MASK_AND_BBOX
from liverphase.inference.predictor import Predictor
from liverphase.io.nifti import open_dataset
from liverphase.io.phi import check_phi_options, name_holds, pseudonym
from liverphase.io.study import Study

_PHASE_FILE = re.compile(r"^(?P<case>.+)_(?P<k>\d{4})\.nii(\.gz)?$")


def parse_bbox(text: str | None, units: str = "mm") -> list[float] | None:
    """`--bbox "z0 y0 x0 z1 y1 x1"` (commas allowed) into numbers; units must be mm or voxel."""
    if units not in ("mm", "voxel"):
        raise ConfigError(f"must be mm or voxel, got {units!r}", "--bbox-units")
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ConfigError(f"expected numbers, got {text!r}", "--bbox") from None


def resolve_study_path(path: str | Path, case: str | None = None) -> tuple[str, Path, list[str]]:
    """(kind "dicom" | "case" | "dataset", folder, case ids) for a STUDY argument."""
    path = Path(path)
    if not path.exists():
        raise InputFileError("no such file or folder", path)
    if path.is_dir() and (path / "dataset.json").is_file():
        ds = open_dataset(path)
        if case is not None:
            ds.case(case)  # DatasetError naming cases.csv when unknown
            return "case", path, [case]
        return "dataset", path, [c.case_id for c in ds.cases]
    if case is not None:
        raise ConfigError("--case applies to a dataset folder (with dataset.json)", path)
    if path.is_dir():
        return "dicom", path, []
    m = _PHASE_FILE.match(path.name)
    root = path.parent.parent
    if m and path.parent.name == "imagesTr" and (root / "dataset.json").is_file():
        ds = open_dataset(root)
        ds.case(m.group("case"))
        return "case", root, [m.group("case")]
    raise InputFileError(
        "a single image is not a study: give a DICOM folder, a phase file in an nnU-Net "
        "dataset's imagesTr/, or the dataset folder (with --case)",
        path,
    )


def read_dicom(folder: Path, keep_phi: bool = False) -> Study:
    """Read a DICOM study and give it a case id that carries no identifier of its headers."""
    from liverphase.io.dicom import read_dicom_study

    study = read_dicom_study(folder)
    if keep_phi:  # the user's explicit choice: the folder name stays the case id
        return study
    phi = study.metadata.get("phi")
    held = sorted(set(name_holds(folder.name, phi) + name_holds(study.case_id, phi)))
    if held:
        uid = str(study.metadata.get("study_instance_uid") or folder.resolve())
        study.case_id = pseudonym(uid)
        study.metadata.setdefault("warnings", []).append(
            f"case id: the study folder's name holds {', '.join(held)} of the DICOM headers, so "
            f"the case id is the pseudonym {study.case_id} (from the StudyInstanceUID); "
            "--keep-phi keeps the folder name"
        )
    return study


def predict_path(
    predictor: Predictor,
    path: str | Path,
    out: str | Path,
    case: str | None = None,
    mask: str | Path | None = None,
    bbox: list[float] | tuple[float, ...] | None = None,
    bbox_units: str = "mm",
    keep_phi: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Predict a STUDY argument into OUT (see the module docstring)."""
    check_phi_options(keep_phi, bool(options.get("anonymize")))
    if mask is not None and bbox is not None:
        raise ConfigError(MASK_AND_BBOX, "--mask / --bbox")
    kind, root, cases = resolve_study_path(path, case)
    # the inputs are valid: now OUT, before any study is read or the model runs
    out = check_writable_dir(out)
    where = dict(mask=mask, bbox=bbox, bbox_units=bbox_units, keep_phi=keep_phi, **options)
    if kind == "dicom":
        tick = time.perf_counter()
        study = read_dicom(root, keep_phi)
        return predictor.predict_study(study, out, read_seconds=time.perf_counter() - tick, **where)
    ds = open_dataset(root)
    if kind == "case":
        tick = time.perf_counter()
        study = ds.load_study(cases[0], require_roi=False)
        return predictor.predict_study(study, out, read_seconds=time.perf_counter() - tick, **where)
    if mask is not None or bbox is not None:
        raise ConfigError("--mask and --bbox locate one study's lesion: give --case too", root)
    rows, failed = [], []
    from tqdm import tqdm

    for cid in tqdm(cases, desc="predict", unit="case", disable=not progress):
        tick = time.perf_counter()
        try:
            study = ds.load_study(cid, require_roi=False)
            pred = predictor.predict_study(
                study, out / cid, read_seconds=time.perf_counter() - tick, **where
            )
            rows.append(_summary_row(cid, ds.case(cid).label, pred, predictor.class_names))
        except LiverphaseError as exc:
            failed.append(cid)
            rows.append({"case_id": cid, "true_label": ds.case(cid).label, "error": str(exc)})
    summary = out / "summary.csv"
    _write_summary(summary, rows, predictor.class_names)
    return {"summary": str(summary), "cases": len(cases), "failed": failed}


def _summary_row(cid: str, truth: str | None, pred: dict[str, Any], classes: list[str]) -> dict:
    row = {
        "case_id": cid,
        "true_label": truth or "",
        "label": pred["label"],
        **{f"prob_{c}": pred["probabilities"][c] for c in classes},
        "lesion_volume_ml": pred["lesion"].get("volume_ml"),
        "lesion_source": pred["lesion"].get("source"),
        "warnings": len(pred["warnings"]),
        "seconds": pred["timings"].get("total"),
        "error": "",
    }
    return row


def _write_summary(path: Path, rows: list[dict[str, Any]], classes: list[str]) -> None:
    cols = ["case_id", "true_label", "label", *(f"prob_{c}" for c in classes)]
    cols += ["lesion_volume_ml", "lesion_source", "warnings", "seconds", "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def run_predict(
    bundle: str | Path,
    study_path: str | Path,
    out: str | Path,
    case: str | None = None,
    mask: str | Path | None = None,
    bbox: list[float] | tuple[float, ...] | None = None,
    bbox_units: str = "mm",
    keep_phi: bool = False,
    progress: bool = True,
    anonymize: bool = False,
) -> dict[str, Any]:
    """What `liverphase predict` calls: load the bundle, predict STUDY into OUT, return the result."""
    predictor = Predictor(bundle)
    where = dict(mask=mask, bbox=bbox, bbox_units=bbox_units, keep_phi=keep_phi)
    return predict_path(
        predictor, study_path, out, case, progress=progress, anonymize=anonymize, **where
    )
