"""`liverphase inspect`: describe a dataset, a DICOM study or an image, collecting every problem."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverphase.errors import DatasetError, InputFileError, LiverphaseError
from liverphase.io.nifti import NnUNetDataset, open_dataset, read_image
from liverphase.io.published_split import (
    describe_splits,
    has_split_column,
    split_counts,
    split_problems,
)
from liverphase.io.study import same_grid


def orientation_code(image: sitk.Image) -> str:
    """Three-letter orientation code (DICOM convention, e.g. 'LPS') of an image's direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def describe_image(image: sitk.Image) -> str:
    """One line: size, spacing, orientation."""
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:.2f}" for s in image.GetSpacing())
    return f"size {size}, spacing {spacing} mm, orientation {orientation_code(image)}"


def inspect_dataset(root: Path) -> tuple[dict[str, Any], list[LiverphaseError]]:
    """Summary and all problems of an nnU-Net dataset with cases.csv."""
    try:
        ds = open_dataset(root)
    except LiverphaseError as exc:
        return {"kind": "dataset", "lines": [f"dataset {root}"]}, [exc]
    problems: list[LiverphaseError] = []
    labels = Counter(c.label or "(unlabeled)" for c in ds.cases)
    patients = {c.patient_id for c in ds.cases}
    lines = [
        f"dataset {root}",
        f"phases: {', '.join(ds.phases)} (reference {ds.reference_phase})",
        f"cases: {len(ds.cases)} from {len(patients)} patients",
        "labels: " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())),
        *describe_splits(ds.cases),
    ]
    # a published split (cases.csv `split`): unknown values and a patient on two sides are problems
    problems += split_problems(ds.cases, ds.root / "cases.csv")
    cases: dict[str, Any] = {}
    for rec in ds.cases:
        try:
            study = ds.load_study(rec.case_id)
        except LiverphaseError as exc:
            problems.append(exc)
            continue
        ref = study.reference
        off_grid = [p for p, img in study.phases.items() if not same_grid(img, ref, tol=1e-3)]
        cases[rec.case_id] = {
            p: {
                "size": list(img.GetSize()),
                "spacing": list(img.GetSpacing()),
                "orientation": orientation_code(img),
            }
            for p, img in study.phases.items()
        }
        note = (
            f" (phases on other grids than {ds.reference_phase}: {', '.join(off_grid)}; registered later)"
            if off_grid
            else ""
        )
        roi = "mask" if study.mask is not None else "bbox"
        lines.append(
            f"  {rec.case_id} [{rec.label or 'unlabeled'}, patient {rec.patient_id}, {roi}] {ds.reference_phase}: {describe_image(ref)}{note}"
        )
    listed = {c.case_id for c in ds.cases}
    on_disk = {
        p.name[: -len(ds.file_ending)].rsplit("_", 1)[0]
        for p in (ds.root / "imagesTr").glob(f"*{ds.file_ending}")
    }
    for cid in sorted(on_disk - listed):
        problems.append(
            DatasetError(f"case {cid!r} has images but no row in cases.csv", ds.root / "cases.csv")
        )
    problems += stray_phase_files(ds, listed)
    summary = {
        "kind": "dataset",
        "phases": ds.phases,
        "reference_phase": ds.reference_phase,
        "n_cases": len(ds.cases),
        "n_patients": len(patients),
        "labels": dict(labels),
        **({"splits": split_counts(ds.cases)} if has_split_column(ds.cases) else {}),
        "cases": cases,
        "lines": lines,
    }
    return summary, problems


def stray_phase_files(ds: NnUNetDataset, cases: set[str]) -> list[LiverphaseError]:
    """Image files of listed cases that no phase reads: `<case>_<K>` with K not a channel of
    dataset.json's channel_names (a phase the user meant to add, or a misnumbered file)."""
    channels = sorted(ds.channel_index.values())
    found: list[LiverphaseError] = []
    for path in sorted((ds.root / "imagesTr").glob(f"*{ds.file_ending}")):
        cid, _, k = path.name[: -len(ds.file_ending)].rpartition("_")
        if cid in cases and not (k.isdigit() and int(k) in channels):
            found.append(
                DatasetError(
                    f"file of case {cid!r} for channel {k}, which dataset.json channel_names "
                    f"does not list (channels {channels}: {', '.join(ds.phases)}): it is never "
                    "read; add the channel or remove the file",
                    path,
                )
            )
    return found


def inspect_path(path: Path) -> tuple[dict[str, Any], list[LiverphaseError]]:
    """Inspect a dataset folder, a DICOM study folder or a single image file."""
    path = Path(path)
    if not path.exists():
        return {"kind": "missing", "lines": []}, [InputFileError("no such file or folder", path)]
    if path.is_dir() and (path / "dataset.json").exists():
        return inspect_dataset(path)
    if path.is_dir():
        from liverphase.io.dicom import scan_dicom_study

        summary, problems = scan_dicom_study(path)
        summary = dict(summary)
        summary.setdefault("kind", "dicom")
        summary.setdefault(
            "lines",
            [f"DICOM study {path}"]
            + [f"  {k}: {v}" for k, v in summary.items() if k not in ("lines", "kind")],
        )
        return summary, list(problems)
    try:
        image = read_image(path)
    except LiverphaseError as exc:
        return {"kind": "image", "lines": [f"image {path}"]}, [exc]
    return {"kind": "image", "lines": [f"image {path}: {describe_image(image)}"]}, []
