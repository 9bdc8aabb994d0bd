"""LLD-MMRI 2023 (LMMMEng/LLD-MMRI2023): eight MRI sequences, seven focal liver lesion classes.

Raw layout: `images/<patient>/<studyUID>/<seriesUID>.nii.gz` and `labels/Annotation.json`, which
says which series is which sequence, the true geometry (the NIfTI headers are not trustworthy:
pixel spacing, slice spacing and origin come from the JSON) and a 3D box per sequence in that
sequence's own voxels (written to cases.csv as `bbox_<SEQUENCE>`). Labels come from the JSON's
lesion category (-1: withheld), the official split from `classification_dataset/labels/`
(`labels_val*.txt`, `labels_test*.txt`; every other patient is train). Volumes are written (never
linked): their geometry always changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverphase.errors import DatasetError, InputFileError, LiverphaseError
from liverphase.io.cases_csv import CaseRecord
from liverphase.io.importers.common import (
    DatasetBuilder,
    drop_bom,
    find_root,
    progress_iter,
    sorted_ids,
    unnest,
)
from liverphase.io.importers.lld_volume import (
    BoxIndex,
    box_from_json,
    drop_duplicate_slices,
    fix_offset,
    slice_axis_up,
)
from liverphase.io.importers.registry import ImportSummary, register_importer
from liverphase.io.nifti import read_image

# Published file names, two with a space; dataset order: T2, the T1 pair, the dynamic phases, DWI
SEQUENCES = ("T2WI", "In Phase", "Out Phase", "C-pre", "C+A", "C+V", "C+Delay", "DWI")
REFERENCE = "C+V"
# The challenge's class indices (Annotation.json "category"), names as cases.csv labels
CLASSES = ("hemangioma", "ICC", "abscess", "metastasis", "cyst", "FNH", "HCC")
ANNOTATION = Path("labels") / "Annotation.json"
LABEL_DIR = Path("classification_dataset") / "labels"


def case_id_of(raw: str) -> str:
    """The case id of a published patient id: `MR-411388` (16 are written so) → `MR411388`."""
    text = raw.strip()
    return "MR" + text[3:] if text.upper().startswith("MR-") else text


def _layout(folder: Path) -> bool:
    return (folder / ANNOTATION).is_file()


def _read_annotation(path: Path, summary: ImportSummary) -> dict[str, list[dict[str, Any]]]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path) from None
    info = doc.get("Annotation_info") if isinstance(doc, dict) else None
    if not isinstance(info, dict) or not info:
        raise DatasetError("no 'Annotation_info' object (the published key)", path)
    return info


def _read_id_list(path: Path, summary: ImportSummary) -> dict[str, int]:
    """`MR207602 0` rows (space separated; a BOM is a named warning) → {case id: label}."""
    data = drop_bom(path.read_bytes(), path.name, summary)
    out: dict[str, int] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            out[case_id_of(parts[0])] = int(parts[1]) if len(parts) > 1 else -1
        except ValueError:
            raise DatasetError(f"row {line!r}: expected '<id> <label>'", path) from None
    return out


def _official_split(root: Path, summary: ImportSummary) -> tuple[dict[str, str], dict[str, int]]:
    """({case id: 'val' | 'test'} from the published lists, {case id: label} from labels.txt)."""
    folder = unnest(root / LABEL_DIR, summary) if (root / LABEL_DIR).is_dir() else None
    if folder is None:
        summary.notes.append(
            f"no {LABEL_DIR}: the official split is unknown (every patient marked train; "
            "`cv --splits official` needs the published val/test lists)"
        )
        return {}, {}
    split: dict[str, str] = {}
    for name, files in (("val", "labels_val*.txt"), ("test", "labels_test*.txt")):
        for path in sorted(folder.glob(files)):
            for cid in _read_id_list(path, summary):
                split[cid] = name
    labels = (
        _read_id_list(folder / "labels.txt", summary) if (folder / "labels.txt").is_file() else {}
    )
    return split, labels


def _series_path(root: Path, patient: str, entry: dict[str, Any]) -> Path | None:
    """`images/<patient>/<studyUID>/<seriesUID>.nii.gz`; the patient folder in either id form."""
    for folder in dict.fromkeys([patient, case_id_of(patient), "MR-" + patient[2:]]):
        path = (
            root
            / "images"
            / folder
            / str(entry.get("studyUID"))
            / f"{entry.get('seriesUID')}.nii.gz"
        )
        if path.is_file():
            return path
    return None


def _geometry(
    image: sitk.Image, entry: dict[str, Any], cid: str, summary: ImportSummary
) -> sitk.Image:
    """The image with spacing and origin from Annotation.json (direction from the header)."""
    try:
        sx, sy = (float(v) for v in entry["pixel_spacing"])
        origin = tuple(float(v) for v in entry["origin"])
        if "slice_spacing" in entry and entry["slice_spacing"] not in (None, ""):
            sz = float(entry["slice_spacing"])
        else:
            sz = float(entry["slice_thickness"])
            summary.warn(
                "no_slice_spacing",
                "an older Annotation.json entry has no slice_spacing: slice_thickness was used as "
                "the slice spacing (right only when slices neither overlap nor leave gaps)",
                cid,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{entry.get('phase')}: geometry keys missing or invalid ({exc})"
        ) from None
    if min(sx, sy, sz) <= 0 or len(origin) != 3:
        raise DatasetError(f"{entry.get('phase')}: spacing must be positive, origin 3 numbers")
    image.SetSpacing((sx, sy, sz))
    image.SetOrigin(origin)
    return image


def _sequences(
    entries: list[dict[str, Any]], cid: str, summary: ImportSummary
) -> dict[str, dict[str, Any]]:
    """Annotation entries by sequence name (the first of a repeated sequence kept)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        phase = str(entry.get("phase", "")).strip()
        if phase not in SEQUENCES:
            summary.warn(
                "unknown_sequence", f"a sequence name not in {list(SEQUENCES)}; skipped", cid
            )
        elif phase in out:
            summary.warn("repeated_sequence", "a sequence annotated twice; the first kept", cid)
        else:
            out[phase] = entry
    return out


def _label(
    cid: str, seqs: dict[str, dict[str, Any]], listed: dict[str, int], summary: ImportSummary
) -> str | None:
    """The case's class from the first lesion's category (-1 or absent: withheld, unlabeled)."""
    cats = set()
    for entry in seqs.values():
        lesions = (entry.get("annotation") or {}).get("lesion") or {}
        if len(lesions) > 1:
            summary.warn(
                "several_lesions",
                "more than one lesion annotated: the first (lesion '0') locates the case",
                cid,
            )
        first = lesions.get("0") or next(iter(lesions.values()), None)
        if first is not None and "category" in first:
            cats.add(int(first["category"]))
    if len(cats) > 1:
        summary.warn("category_conflict", "sequences disagree on the category; unlabeled", cid)
        return None
    cat = cats.pop() if cats else listed.get(cid, -1)
    if cid in listed and listed[cid] not in (-1, cat):
        summary.warn(
            "label_conflict", "labels.txt and Annotation.json disagree; the JSON's kept", cid
        )
    return CLASSES[cat] if 0 <= cat < len(CLASSES) else None


def _first_box(entry: dict[str, Any]) -> dict[str, Any] | None:
    lesions = (entry.get("annotation") or {}).get("lesion") or {}
    first = lesions.get("0") or next(iter(lesions.values()), None)
    return ((first or {}).get("bbox") or {}).get("3D_box")


@register_importer("lld-mmri")
def import_lld_mmri(src: Path, out: Path, summary: ImportSummary, progress: bool) -> None:
    """LLD-MMRI 2023: eight MRI sequences, seven lesion classes, per-sequence boxes, official split."""
    root = find_root(src, _layout, summary, f"LLD-MMRI ({ANNOTATION})")
    info = _read_annotation(root / ANNOTATION, summary)
    split, listed = _official_split(root, summary)
    builder = DatasetBuilder(out, list(SEQUENCES), summary)
    ups: dict[tuple[str, str], bool] = {}
    by_case: dict[str, str] = {}
    for raw in info:
        cid = case_id_of(raw)
        if cid != raw:
            summary.warn(
                "mr_dash_id", "patient id written 'MR-<digits>'; imported as 'MR<digits>'", raw
            )
        if cid in by_case:
            raise DatasetError(
                f"patient {raw!r} and {by_case[cid]!r} are the same id", root / ANNOTATION
            )
        by_case[cid] = raw
    for cid in progress_iter(sorted_ids(by_case), "lld-mmri", progress):
        raw = by_case[cid]
        try:
            _import_case(root, cid, raw, info[raw], split, listed, builder, ups)
        except LiverphaseError as exc:
            summary.problems.append(f"{cid}: {exc}; case left out")
    _warn_upside_down(ups, summary)
    missing = {c for c in split if c not in by_case}
    if missing:
        summary.warn(
            "listed_not_annotated", "a split list names a patient absent from Annotation.json", None
        )
        summary.warnings["listed_not_annotated"].cases += sorted(missing)
    summary.notes += [
        "geometry (pixel spacing, slice spacing, origin) from Annotation.json, direction from the header",
        "boxes per sequence in cases.csv bbox_<SEQUENCE> (z0 y0 x0 z1 y1 x1, end exclusive); no mask",
    ]
    extra = {
        "reference_phase": REFERENCE,
        "modality": "MR",
        "roi": "lesion",
        "missing_phases": "allow",
        "source": "LLD-MMRI 2023",
    }
    builder.close({"background": 0, "lesion": 1}, CLASSES, extra)


def _import_case(
    root: Path,
    cid: str,
    raw: str,
    entries: list[dict[str, Any]],
    split: dict[str, str],
    listed: dict[str, int],
    builder: DatasetBuilder,
    ups: dict[tuple[str, str], bool],
) -> None:
    """Write one patient's sequences with the JSON's geometry and record its boxes and label."""
    summary = builder.summary
    seqs = _sequences(entries if isinstance(entries, list) else [], cid, summary)
    boxes: dict[str, BoxIndex] = {}
    for phase, entry in seqs.items():
        path = _series_path(root, raw, entry)
        if path is None:
            summary.warn("missing_series_file", "Annotation.json names a series with no file", cid)
            continue
        image = _geometry(read_image(path), entry, cid, summary)
        image, removed = drop_duplicate_slices(image)
        box = box_from_json(_first_box(entry), removed, image.GetSize())
        if removed:
            summary.warn(
                "duplicated_slices",
                "a volume repeats slices: the repeats were removed and its box re-indexed",
                f"{cid}/{phase}",
            )
        image, offset = fix_offset(image)
        if offset:
            summary.warn(
                "intensity_offset",
                f"a volume's background sits near +{offset:g}: {offset:g} was subtracted",
                f"{cid}/{phase}",
            )
        if box is None:
            summary.warn(
                "box_outside_volume",
                "a sequence's 3D box is missing or lies outside its volume; its box was dropped",
                f"{cid}/{phase}",
            )
        else:
            boxes[phase] = box
        ups[(cid, phase)] = slice_axis_up(image)
        builder.write(image, builder.image_path(cid, phase))
    written = [p for p in SEQUENCES if (builder.image_path(cid, p)).is_file()]
    if not written:
        raise InputFileError("no sequence could be read", root / "images" / raw)
    if not boxes:
        raise DatasetError("no sequence has a usable 3D box")
    if len(written) < len(SEQUENCES):
        summary.warn(
            "missing_sequence",
            "a patient lacks a sequence: recorded as a missing phase (zeros, marked absent)",
            f"{cid} ({', '.join(p for p in SEQUENCES if p not in written)})",
        )
    label = _label(cid, seqs, listed, summary)
    extra = {"split": split.get(cid, "train"), "source_id": raw}
    builder.add(CaseRecord(cid, cid, label, None, extra, boxes))


def _warn_upside_down(ups: dict[tuple[str, str], bool], summary: ImportSummary) -> None:
    """Name the volumes whose slices run the other way from most of the dataset's."""
    if not ups:
        return
    up = sum(ups.values())
    majority = up * 2 >= len(ups)
    odd = [f"{c}/{p}" for (c, p), v in ups.items() if v != majority]
    for where in odd:
        summary.warn(
            "upside_down",
            "a volume is stored with its slices running the other way (head-feet) from the rest: "
            "its geometry says so and preprocessing reorients it; tools that crop the raw array "
            "(the challenge baseline) see it upside down",
            where,
        )
