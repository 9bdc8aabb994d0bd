"""MCT-LTDiag (Hoyant-Su/Multi-phase_LT_Benchmark): four-phase CT, five liver tumour types.

Per case `NIFTI/{nc,art,pvp,delay}.nii.gz` and the tumour mask `mask_pvp.nii.gz` on the PVP grid;
labels, sex and age from `meta/meta_info_patient.csv`. The volumes need no fix and are linked.
`merge_metastases=True` merges BCLM and CRLM into one class, `metastasis`, as the benchmark does.
"""

from __future__ import annotations

from pathlib import Path

from liverphase.errors import DatasetError, LiverphaseError
from liverphase.io.cases_csv import CaseRecord
from liverphase.io.importers.common import (
    MASK_UNUSABLE,
    DatasetBuilder,
    check_source_mask,
    find_root,
    fixed_mask,
    progress_iter,
    read_csv,
    require_columns,
    sorted_ids,
    unnest,
)
from liverphase.io.importers.registry import ImportSummary, register_importer

FILES = {"NC": "nc", "ART": "art", "PV": "pvp", "DL": "delay"}
TYPES = ("BCLM", "CRLM", "HCC", "HH", "ICC")
MERGED = "metastasis"
META = Path("meta") / "meta_info_patient.csv"
# column in the published CSV → cases.csv column
COLUMNS = {
    "ID": "",
    "type": "type",
    "patient_sex": "sex",
    "patient_age": "age",
    "Cirrhosis status (Y/N)": "cirrhosis",
    "History of viral hepatitis (Y/N)": "viral_hepatitis",
    "History of chemotherapy (Y/N)": "chemotherapy",
}


def _layout(folder: Path) -> bool:
    return (folder / META).is_file()


def _case_folders(root: Path, summary: ImportSummary) -> dict[str, Path]:
    """Case id → its folder: any folder (three levels deep at most) holding NIFTI/."""
    found: dict[str, Path] = {}
    frontier = [root]
    for _ in range(3):
        nxt = []
        for folder in frontier:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                if sub.name.startswith(".") or sub == root / "meta":
                    continue
                case = unnest(sub, summary)
                if (case / "NIFTI").is_dir():
                    found.setdefault(sub.name, case)
                else:
                    nxt.append(sub)
        frontier = nxt
    return found


def _mask_file(case: Path) -> Path | None:
    # published beside NIFTI/; a copy that moved it into NIFTI/ is read too
    for path in (case / "mask_pvp.nii.gz", case / "NIFTI" / "mask_pvp.nii.gz"):
        if path.is_file():
            return path
    return None


@register_importer("mct-ltdiag")
def import_mct_ltdiag(
    src: Path, out: Path, summary: ImportSummary, progress: bool, *, merge_metastases: bool = False
) -> None:
    """MCT-LTDiag: four-phase CT, BCLM/CRLM/HCC/HH/ICC (or 4 classes with merge_metastases)."""
    root = find_root(src, _layout, summary, f"MCT-LTDiag ({META})")
    rows = read_csv(root / META, summary)
    require_columns(rows, tuple(COLUMNS), root / META)
    meta = {r["ID"]: r for r in rows if r.get("ID")}
    folders = _case_folders(root, summary)
    if not folders:
        raise DatasetError("no case folder with NIFTI/ inside", root)
    for cid in sorted(set(meta) - set(folders)):
        summary.warn(
            "missing_case_folder", "meta_info_patient.csv lists a case with no folder", cid
        )
    builder = DatasetBuilder(out, list(FILES), summary)
    missing_any = False
    for cid in progress_iter(sorted_ids(folders), "mct-ltdiag", progress):
        try:
            missing_any |= _import_case(cid, folders[cid], meta.get(cid), merge_metastases, builder)
        except LiverphaseError as exc:
            summary.problems.append(f"{cid}: {exc}; case left out")
    summary.notes += [
        "liver_mask_pvp.nii.gz was not used (labelsTr holds the tumour mask)",
        "no official split (the benchmark's 5 folds are not published): use patient-level cv",
    ]
    extra = {"reference_phase": "PV", "modality": "CT", "roi": "lesion", "source": "MCT-LTDiag"}
    if missing_any:
        extra["missing_phases"] = "allow"
    classes = ("HCC", "HH", "ICC", MERGED) if merge_metastases else TYPES
    builder.close({"background": 0, "lesion": 1}, classes, extra)


def _import_case(
    cid: str, case: Path, row: dict[str, str] | None, merge: bool, builder: DatasetBuilder
) -> bool:
    """Link one case's phases and tumour mask; True when a phase is missing."""
    summary = builder.summary
    nifti = case / "NIFTI"
    present = {
        p: nifti / f"{f}.nii.gz" for p, f in FILES.items() if (nifti / f"{f}.nii.gz").is_file()
    }
    if "PV" not in present:
        summary.warn(
            "missing_reference_phase", "no NIFTI/pvp.nii.gz (the mask's grid); case left out", cid
        )
        return False
    mask = _mask_file(case)
    action = "missing" if mask is None else check_source_mask(present["PV"], mask, cid, summary)
    if action not in ("link", "fix"):
        summary.warn(
            f"tumour_mask_{action}",
            f"a case's tumour mask is unusable ({MASK_UNUSABLE[action]}); case left out",
            cid,
        )
        return False
    assert mask is not None
    for phase, path in present.items():
        builder.link(path, builder.image_path(cid, phase))
    if action == "link":
        builder.link(mask, builder.label_path(cid))
    else:
        builder.write(fixed_mask(present["PV"], mask), builder.label_path(cid))
    if len(present) < len(FILES):
        summary.warn("missing_phase", "a phase file is absent; recorded as a missing phase", cid)
    label: str | None = None
    extra: dict[str, str] = {}
    if row is None:
        summary.warn(
            "not_in_metadata",
            "a case folder has no row in meta_info_patient.csv; imported unlabeled",
            cid,
        )
    else:
        label = row["type"].upper()
        if label not in TYPES:
            summary.warn("unknown_type", f"type not in {list(TYPES)}; imported unlabeled", cid)
            label = None
        elif merge and label in ("BCLM", "CRLM"):
            label = MERGED
        extra = {new: row.get(old, "") for old, new in COLUMNS.items() if new}
    builder.add(CaseRecord(cid, cid, label, None, extra))
    return len(present) < len(FILES)
