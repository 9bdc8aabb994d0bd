"""CirrMRI600+ (OSF cuk24): 3D T1W and T2W liver MRI with liver masks, cirrhosis stage 1-3.

One study per patient: a patient's T1W and T2W scans (same integer id) become the sequences of one
case, either may be missing. The liver mask of the reference sequence (T1W, else T2W) goes to
labelsTr (`roi: organ`). Stages come from the Metadata CSVs; the split from the train/valid/test
folders. Healthy_subjects, when present, are imported as class `healthy` without a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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

SEQUENCES = ("T1W", "T2W")
STAGES = {"1": "mild", "2": "moderate", "3": "severe"}
CLASSES = ("healthy", "mild", "moderate", "severe")  # ordered: the stages are ordinal
SPLITS = {"train": "train", "valid": "val", "test": "test"}
# When a patient's T1W and T2W sit in different official splits the case takes the most held-out
# one, so no scan the publishers held out for testing is ever trained on.
_SPLIT_RANK = {"train": 0, "val": 1, "test": 2}
# Metadata files are read in this order; the first that gives a patient's value wins.
_META_ORDER = ("CirrMRI600+_CompleteData", "T1&T2_Paired", "T1_", "T2_")
_META_COLUMNS = ("Patient ID", "Age", "Gender", "Radiological Evaluation")


@dataclass
class _Scan:
    image: Path
    mask: Path | None
    split: str | None


@dataclass
class _Patient:
    pid: str
    healthy: bool
    scans: dict[str, _Scan] = field(default_factory=dict)


def _pid(name: str) -> str:
    """Patient id from a file name: '0012.nii.gz' → '12' (T1 and T2 ids are the same integers)."""
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem
    return str(int(stem)) if stem.isdigit() else stem


def _layout(folder: Path) -> bool:
    return any((folder / f"Cirrhosis_{s}_3D").is_dir() for s in ("T1", "T2"))


def _collect(root: Path, summary: ImportSummary) -> dict[str, _Patient]:
    patients: dict[str, _Patient] = {}
    for seq, tag in (("T1W", "T1"), ("T2W", "T2")):
        base = root / f"Cirrhosis_{tag}_3D"
        if not base.is_dir():
            continue
        base = unnest(base, summary)
        for folder, split in SPLITS.items():
            images = base / f"{folder}_images"
            for img in sorted(images.glob("*.nii*")) if images.is_dir() else []:
                pid = _pid(img.name)
                mask = base / f"{folder}_masks" / img.name
                _add(patients, pid, False, seq, _Scan(img, mask if mask.is_file() else None, split))
    healthy = root / "Healthy_subjects"
    if healthy.is_dir():
        healthy = unnest(healthy, summary)
        for seq, tag in (("T1W", "T1"), ("T2W", "T2")):
            base = healthy / f"{tag}_W_Healthy"
            if not base.is_dir():
                continue
            base = unnest(base, summary)
            for img in sorted((base / f"{tag}_images").glob("*.nii*")):
                mask = base / f"{tag}_masks" / img.name
                scan = _Scan(img, mask if mask.is_file() else None, None)
                _add(patients, _pid(img.name), True, seq, scan)
    return patients


def _add(patients: dict[str, _Patient], pid: str, healthy: bool, seq: str, scan: _Scan) -> None:
    # healthy volunteers are numbered on their own; their ids may repeat a cirrhosis patient's
    key = f"H{pid}" if healthy else pid
    patient = patients.setdefault(key, _Patient(pid, healthy))
    old = patient.scans.get(seq)
    if old is None or _SPLIT_RANK.get(scan.split or "", -1) > _SPLIT_RANK.get(old.split or "", -1):
        patient.scans[seq] = scan


def _read_metadata(root: Path, summary: ImportSummary) -> dict[str, dict[str, str]]:
    folder = root / "Metadata"
    if not folder.is_dir():
        summary.warn("no_metadata", "no Metadata/ folder: no stage labels, ages or sexes")
        return {}
    folder = unnest(folder, summary)
    files = sorted(folder.glob("*.csv"))
    files.sort(key=lambda p: next((i for i, k in enumerate(_META_ORDER) if k in p.name), 99))
    merged: dict[str, dict[str, str]] = {}
    for path in files:
        rows = read_csv(path, summary)
        require_columns(rows, _META_COLUMNS, path)
        for row in rows:
            raw = row["Patient ID"].split(".")[0]
            if not raw:
                continue
            pid = str(int(raw)) if raw.isdigit() else raw
            known = merged.setdefault(pid, {})
            for col in _META_COLUMNS[1:]:
                value = row.get(col, "")
                if value and known.get(col) and known[col] != value:
                    summary.warn(
                        "metadata_conflict",
                        f"Metadata CSVs disagree on a patient's {col}; the value of the first "
                        f"file in the order {list(_META_ORDER)} was kept",
                        pid,
                    )
                elif value:
                    known[col] = value
    return merged


def _mask_for(patient: _Patient, seq: str, case_id: str, summary: ImportSummary) -> str:
    """What one sequence's liver mask needs: "link", "fix", or why it is unusable."""
    scan = patient.scans[seq]
    if scan.mask is None:
        return "missing"
    return check_source_mask(scan.image, scan.mask, case_id, summary)


@register_importer("cirrmri600")
def import_cirrmri600(src: Path, out: Path, summary: ImportSummary, progress: bool) -> None:
    """CirrMRI600+: T1W/T2W liver MRI, liver masks, cirrhosis stage (mild/moderate/severe)."""
    root = find_root(src, _layout, summary, "CirrMRI600+ (Cirrhosis_T1_3D/, Cirrhosis_T2_3D/)")
    patients = _collect(root, summary)
    if not patients:
        raise DatasetError("no *.nii.gz under Cirrhosis_T{1,2}_3D/*_images", root)
    meta = _read_metadata(root, summary)
    if (root / "Cirrhosis_T2_2D").exists():
        summary.notes.append("Cirrhosis_T2_2D (PNG slices of the T2W volumes) was not read")
    builder = DatasetBuilder(out, SEQUENCES, summary)
    keys = sorted_ids(patients)
    for key in progress_iter(keys, "cirrmri600", progress):
        try:
            _import_patient(patients[key], meta, builder, summary)
        except LiverphaseError as exc:
            summary.problems.append(f"patient {key}: {exc}; left out")
    builder.close(
        {"background": 0, "liver": 1},
        CLASSES,
        {
            "reference_phase": "T1W",
            "modality": "MR",
            "roi": "organ",
            "ordinal": True,
            "missing_phases": "allow",
            "source": "CirrMRI600+",
        },
    )


def _import_patient(
    patient: _Patient, meta: dict[str, dict[str, str]], builder: DatasetBuilder, s: ImportSummary
) -> None:
    case_id = f"healthy_{patient.pid}" if patient.healthy else f"cirr_{patient.pid}"
    masks = {seq: _mask_for(patient, seq, case_id, s) for seq in SEQUENCES if seq in patient.scans}
    usable = [seq for seq in SEQUENCES if masks.get(seq) in ("link", "fix")]
    reference = usable[0] if usable else None
    # the organ crop needs the reference sequence's liver mask; a sequence before the one whose
    # mask is used would become the reference without one, so it is left out
    dropped = [
        seq
        for seq in masks
        if reference is None or SEQUENCES.index(seq) < SEQUENCES.index(reference)
    ]
    for seq in dropped:
        why = masks[seq]
        s.warn(
            f"liver_mask_{why}",
            f"a scan's liver mask is unusable ({MASK_UNUSABLE.get(why, why)}); the organ crop "
            "needs it, so the scan was left out (and the case when no other scan has a mask)",
            f"{case_id}:{seq}",
        )
    if reference is None:
        s.problems.append(f"{case_id}: no scan with a usable liver mask; case left out")
        return
    kept = [seq for seq in SEQUENCES if seq in patient.scans and seq not in dropped]
    for seq in kept:
        builder.link(patient.scans[seq].image, builder.image_path(case_id, seq))
    scan = patient.scans[reference]
    assert scan.mask is not None
    if masks[reference] == "link":
        builder.link(scan.mask, builder.label_path(case_id))
    else:
        builder.write(fixed_mask(scan.image, scan.mask), builder.label_path(case_id))
    splits = {seq: patient.scans[seq].split for seq in kept}
    split = max(splits.values(), key=lambda v: _SPLIT_RANK.get(v or "", -1))
    if len({v for v in splits.values()}) > 1:
        s.warn(
            "split_conflict_t1_t2",
            "a patient's T1W and T2W are in different official splits; the case takes the most "
            "held-out one (test > val > train) so no published test scan is trained on",
            case_id,
        )
    row = {} if patient.healthy else meta.get(patient.pid, {})
    label = "healthy" if patient.healthy else STAGES.get(row.get("Radiological Evaluation", ""))
    if label is None:
        s.warn(
            "no_stage_label",
            "a patient has no Radiological Evaluation 1/2/3 in Metadata/; imported unlabeled "
            "(pretraining only)",
            case_id,
        )
    if len(kept) < len(SEQUENCES):
        s.warn(
            "missing_sequence",
            "a patient has one sequence only; recorded as a missing phase (dataset.json "
            "missing_phases: allow), not dropped",
            case_id,
        )
    extra = {
        "split": split or "",
        "age": row.get("Age", ""),
        "sex": {"1": "F", "2": "M"}.get(row.get("Gender", ""), row.get("Gender", "")),
        "sequences": " ".join(kept),
        "reference": reference,
        **{f"split_{seq}": splits.get(seq) or "" for seq in SEQUENCES},
    }
    builder.add(
        CaseRecord(
            case_id, f"H{patient.pid}" if patient.healthy else patient.pid, label, None, extra
        )
    )
