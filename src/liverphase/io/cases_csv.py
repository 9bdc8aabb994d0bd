"""The `cases.csv` sidecar of an nnU-Net raw dataset: one row per case with its patient, label,
optional lesion box and any extra columns (DESIGN.md)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from liverphase.atomic import atomic_write_text
from liverphase.errors import DatasetError

CASES_CSV = "cases.csv"
# A case id names files and output folders (imagesTr/<id>_0000.nii.gz, OUT/<id>/): no path separator,
# no leading dot, so no id read from a cases.csv can reach outside its folder.
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CASE_ID_RULE = "letters, digits, '_', '-', '.', starting with a letter or digit"
# `bbox_<PHASE>` columns: a box per phase in that phase's own voxels (LLD-MMRI gives one per sequence)
PHASE_BOX_PREFIX = "bbox_"

Box6 = tuple[int, int, int, int, int, int]


@dataclass
class CaseRecord:
    """One row of cases.csv."""

    case_id: str
    patient_id: str
    label: str | None
    bbox: Box6 | None = None
    extra: dict[str, str] = field(default_factory=dict)
    phase_boxes: dict[str, Box6] = field(default_factory=dict)


def _parse_bbox(text: str, where: Path, case_id: str, column: str = "bbox") -> Box6 | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        vals = [int(round(float(v))) for v in text.replace(",", " ").split()]
    except ValueError:
        vals = []
    if len(vals) != 6 or any(vals[i + 3] <= vals[i] for i in range(3)):
        raise DatasetError(
            f"case {case_id!r}: {column} must be 'z0 y0 x0 z1 y1 x1' with z1>z0 etc., got {text!r}",
            where,
        )
    return tuple(vals)  # type: ignore[return-value]


def _decode(data: bytes, path: Path) -> str:
    """cases.csv as text: UTF-8 (a BOM, as Excel writes it, is dropped), else Latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        raise DatasetError("is UTF-16 text (Excel 'Unicode Text'); save it as 'CSV UTF-8'", path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Not UTF-8: an older spreadsheet export in Latin-1/Windows-1252. Every byte decodes in
        # Latin-1 and case ids are ASCII anyway, so at worst an accent in a free-text column differs.
        return data.decode("latin-1")


def read_cases_csv(path: Path) -> list[CaseRecord]:
    """Read and validate cases.csv (duplicate ids are errors; an empty label is an unlabeled case)."""
    if not path.is_file():
        raise DatasetError("cases.csv not found (needs case_id, patient_id, label)", path)
    reader = csv.DictReader(io.StringIO(_decode(path.read_bytes(), path), newline=""))
    fields = reader.fieldnames or []
    missing = [c for c in ("case_id", "patient_id", "label") if c not in fields]
    if missing:
        raise DatasetError(f"missing column(s) {missing}", path)
    rows = list(reader)
    records: list[CaseRecord] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        cid = (row.get("case_id") or "").strip()
        if not cid:
            raise DatasetError(f"line {line}: empty case_id", path)
        if not CASE_ID.match(cid):
            raise DatasetError(f"line {line}: case_id {cid!r} must be {CASE_ID_RULE}", path)
        if cid in seen:
            raise DatasetError(f"line {line}: duplicate case_id {cid!r}", path)
        seen.add(cid)
        # an empty label is an unlabeled study (self-supervised pretraining reads it; training,
        # cross-validation and evaluation leave it out)
        label = (row.get("label") or "").strip() or None
        pid = (row.get("patient_id") or "").strip() or cid
        extra = {
            k: v
            for k, v in row.items()
            if k not in ("case_id", "patient_id", "label", "bbox")
            and k
            and not k.startswith(PHASE_BOX_PREFIX)
        }
        boxes = {
            k[len(PHASE_BOX_PREFIX) :]: _parse_bbox(v, path, cid, k)
            for k, v in row.items()
            if k and k.startswith(PHASE_BOX_PREFIX) and (v or "").strip()
        }
        records.append(
            CaseRecord(
                cid,
                pid,
                label,
                _parse_bbox(row.get("bbox", ""), path, cid),
                extra,
                {k: v for k, v in boxes.items() if v is not None},
            )
        )
    return records


def _box_text(box: Sequence[int] | None) -> str:
    return " ".join(str(int(v)) for v in box) if box else ""


def write_cases_csv(path: Path, records: Sequence[CaseRecord]) -> None:
    """Write cases.csv atomically (per-phase boxes, then extra columns, in first-seen order)."""
    extra_cols: list[str] = []
    box_phases: list[str] = []
    for r in records:
        box_phases += [p for p in r.phase_boxes if p not in box_phases]
        extra_cols += [k for k in r.extra if k not in extra_cols]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    box_cols = [PHASE_BOX_PREFIX + p for p in box_phases]
    writer.writerow(["case_id", "patient_id", "label", "bbox", *box_cols, *extra_cols])
    for r in records:
        writer.writerow(
            [
                r.case_id,
                r.patient_id,
                r.label or "",
                _box_text(r.bbox),
                *(_box_text(r.phase_boxes.get(p)) for p in box_phases),
                *(r.extra.get(c, "") for c in extra_cols),
            ]
        )
    atomic_write_text(path, buf.getvalue())
