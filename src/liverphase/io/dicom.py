"""Read a DICOM study folder (any nesting) into a `Study`, or scan it for every problem.

Series are grouped by SeriesInstanceUID and checked in `dicom_series` (slices sorted along the
slice normal, rescale applied, non-image files skipped). Errors: two studies mixed, duplicate slice
positions, a missing slice, inconsistent orientation, no series matching a phase rule, a damaged
file; `read_dicom_study` raises the first, `scan_dicom_study` collects them all.

Phase naming rule (documented contract):
0. Without explicit rules, the study's Modality picks them: `PhaseRules.for_modality("MR")` (PRE,
   ART, PV, TP, HBP) when most image series are MR, else the CT rules (NC, ART, PV, DL).
1. A series is named by `PhaseRules.match(SeriesDescription)`.
2. Several series named alike: the earliest acquisition keeps the phase (then the one with more
   slices, then the lower SeriesNumber); the others are reported as unused.
3. Unnamed series fill gaps by acquisition order: between two named series adjacent in time (or
   before the first / after the last), when the unnamed series there are exactly as many as the
   phases missing between those two phases in the rules' order, they take those phases in
   acquisition order. At least one series must be named by its description.
4. Phases are returned in acquisition order (AcquisitionTime, else SeriesTime, else ContentTime,
   with their dates); series without a time follow the rules' order.
5. A series holding several acquisitions (phases in one SeriesInstanceUID, repeated slice
   positions) is first split into one series per acquisition and its acquisitions named as
   `dicom_phases` documents; they then take part in rules 2-4 like separate series.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverphase.errors import DicomError, LiverphaseError
from liverphase.io.dicom_phases import (
    AcquisitionSeries,
    check_phase_names,
    proposed_phase,
    split_series,
)
from liverphase.io.dicom_series import (
    DicomSeries,
    DicomSlice,
    Problems,
    check_series,
    load_volume,
    scan_files,
)
from liverphase.io.phi import identifiers
from liverphase.io.study import Study, geometry_of
from liverphase.phases import PhaseRules


def _assign(
    series: list[DicomSeries], rules: PhaseRules, folder: Path, problems: Problems
) -> dict[str, DicomSeries]:
    order = list(rules.rules)
    by_phase: dict[str, list[DicomSeries]] = defaultdict(list)
    claims = {id(s): proposed_phase(s, rules) for s in series}
    for s in series:
        phase = claims[id(s)][0]
        if phase is not None:
            by_phase[phase].append(s)
    inf = float("inf")
    for phase, group in by_phase.items():
        group.sort(key=lambda s: (s.time if s.time is not None else inf, -len(s.slices), s.number))
        group[0].phase, group[0].assigned_by = phase, claims[id(group[0])][1]
        for other in group[1:]:
            other.note = (
                f"also named {phase}; the earlier acquisition {group[0].description!r} was kept"
            )
    named = sorted(
        (s for s in series if s.phase), key=lambda s: s.time if s.time is not None else inf
    )
    if not named:
        for s in series:  # a series of phases that could not be split explains more than "no match"
            if s.split_error is not None:
                problems.add(s.split_error)
        descs = sorted({repr(s.description) for s in series}) or ["none"]
        problems.add(
            DicomError(
                f"no series matches a phase rule (series descriptions: {', '.join(descs)})", folder
            )
        )
        return {}
    idx = [order.index(s.phase) for s in named]
    timed = all(s.time is not None for s in series)
    if timed and idx == sorted(idx):
        bounds = (
            [(-inf, -1)]
            + [(s.time, i) for s, i in zip(named, idx, strict=True)]
            + [(inf, len(order))]
        )
        for (t0, i0), (t1, i1) in zip(bounds, bounds[1:], strict=False):
            free = sorted(
                (s for s in series if s.phase is None and not s.note and t0 < s.time < t1),
                key=lambda s: s.time,
            )
            missing = [order[i] for i in range(i0 + 1, i1)]
            if free and len(free) == len(missing):
                for s, phase in zip(free, missing, strict=True):
                    s.phase, s.assigned_by = phase, "acquisition order"
    assigned = [s for s in series if s.phase]
    assigned.sort(key=lambda s: (s.time if s.time is not None else inf, order.index(s.phase)))
    return {s.phase: s for s in assigned}


def default_rules(series: list[DicomSeries]) -> PhaseRules:
    """The MR phase rules when most series are Modality MR, else the CT rules."""
    mr = sum(str(s.first.get("Modality", "")).upper() == "MR" for s in series)
    return PhaseRules.for_modality("MR" if 2 * mr > len(series) else "CT")


def _analyse(
    folder: Path,
    rules: PhaseRules | None,
    problems: Problems,
    acquisition_phases: Sequence[str] | None = None,
) -> tuple[dict, dict[str, DicomSeries], dict[str, sitk.Image], list[DicomSeries]]:
    slices, skipped = scan_files(folder, problems)
    studies: dict[str, list[DicomSlice]] = defaultdict(list)
    for s in slices:
        studies[str(s.get("StudyInstanceUID", "?"))].append(s)
    if len(studies) > 1:
        parts = [f"{uid} ({len(v)} files, e.g. {v[0].path.name})" for uid, v in studies.items()]
        problems.add(
            DicomError(f"{len(studies)} studies mixed in one folder: {'; '.join(parts)}", folder)
        )
    grouped: dict[str, list[DicomSlice]] = defaultdict(list)
    for s in slices:
        grouped[str(s.get("SeriesInstanceUID", s.path))].append(s)
    series = [DicomSeries(uid, group) for uid, group in grouped.items()]
    rules = rules or default_rules(series)
    check_phase_names(acquisition_phases, rules)
    series = [part for s in series for part in split_series(s, rules, acquisition_phases)]
    series.sort(key=lambda s: (s.time if s.time is not None else float("inf"), s.number))
    phases = _assign(series, rules, folder, problems) if series else {}
    images: dict[str, sitk.Image] = {}
    for s in series:
        used = s.phase is not None
        if (used or not problems.strict) and check_series(s, problems) and used:
            try:
                images[s.phase] = load_volume(s)
            except DicomError as exc:
                problems.add(exc)
    summary = {
        "kind": "dicom",
        "folder": str(folder),
        "files": len(slices),
        "skipped_files": skipped,
        "study_uids": sorted(studies),
    }
    return summary, phases, images, series


def read_dicom_study(
    folder: str | Path,
    rules: PhaseRules | None = None,
    case_id: str | None = None,
    acquisition_phases: Sequence[str] | None = None,
) -> Study:
    """Read a DICOM study folder into a Study (phases in acquisition order); DicomError on problems.

    `acquisition_phases` names, in acquisition order, the acquisitions of a series that holds
    several phases (see `dicom_phases`), instead of inferring them.
    """
    folder = Path(folder)
    _, phases, images, series = _analyse(folder, rules, Problems(strict=True), acquisition_phases)
    first = next(iter(phases.values())).first
    meta: dict[str, Any] = {
        "source": "dicom",
        "dicom_folder": str(folder),
        "study_instance_uid": str(first.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
        "patient_id": str(first.get("PatientID", "")),
        "modality": str(first.get("Modality", "")),
        "series_instance_uids": {p: s.uid for p, s in phases.items()},
        "sop_instance_uids": {
            p: [str(x.get("SOPInstanceUID")) for x in s.slices] for p, s in phases.items()
        },
        "series_descriptions": {p: s.description for p, s in phases.items()},
        "acquisition_offsets_s": _offsets(phases),
        "phase_assignment": {p: s.assigned_by for p, s in phases.items()},
        "unused_series": [
            {"uid": s.uid, "description": s.description, "note": s.note}
            for s in series
            if s.phase is None
        ],
        # every identifier of the headers (each series' first), so outputs can be checked for them
        "phi": identifiers(s.first.ds for s in series),
    }
    split = {p: s for p, s in phases.items() if isinstance(s, AcquisitionSeries)}
    if split:  # only then, so a study of separate series reads exactly as before
        meta["acquisitions"] = {p: s.summary() for p, s in split.items()}
        meta["warnings"] = list(dict.fromkeys(s.warning for s in split.values() if s.warning))
    return Study(
        case_id=case_id or _safe_id(folder.name),
        phases={p: images[p] for p in phases},
        patient_id=meta["patient_id"] or None,
        metadata=meta,
        sources={p: [x.path for x in s.slices] for p, s in phases.items()},
    )


def _offsets(phases: dict[str, DicomSeries]) -> dict[str, float | None]:
    """Acquisition time of each phase in seconds after the earliest one."""
    times = [s.time for s in phases.values() if s.time is not None]
    t0 = min(times) if times else 0.0
    return {p: (round(s.time - t0, 3) if s.time is not None else None) for p, s in phases.items()}


def _safe_id(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip("_.-")
    return text or "study"


def scan_dicom_study(
    folder: str | Path,
    rules: PhaseRules | None = None,
    acquisition_phases: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[LiverphaseError]]:
    """Summary (series, phases, geometry) and every problem found, for `liverphase inspect`."""
    folder = Path(folder)
    problems = Problems(strict=False)
    summary, phases, images, series = _analyse(folder, rules, problems, acquisition_phases)
    rows = []
    lines = [
        f"DICOM study {folder}: {summary['files']} image files"
        + (f", skipped {summary['skipped_files']}" if summary["skipped_files"] else "")
    ]
    for s in series:
        row = {
            "uid": s.uid,
            "description": s.description,
            "phase": s.phase,
            "assigned_by": s.assigned_by,
            "slices": len(s.slices),
            "time": s.time,
            "note": s.note,
            "modality": str(s.first.get("Modality", "")),
        }
        if isinstance(s, AcquisitionSeries):
            row["acquisition"] = s.summary()
        if s.phase in images:
            img = images[s.phase]
            row.update(geometry_of(img))
            row["orientation"] = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
                img.GetDirection()
            )
        rows.append(row)
        where = (
            f"→ {s.phase} ({s.assigned_by})"
            if s.phase
            else f"unused{': ' + s.note if s.note else ''}"
        )
        geo = ""
        if "size" in row:
            geo = (
                f", size {'x'.join(map(str, row['size']))}, spacing "
                f"{'x'.join(f'{v:.2f}' for v in row['spacing'])} mm, {row['orientation']}"
            )
        lines.append(f"  {s.label}: {len(s.slices)} slices{geo} {where}")
    warnings = [s.warning for s in phases.values() if getattr(s, "warning", "")]
    lines += [f"  note: {w}" for w in dict.fromkeys(warnings)]
    summary.update(series=rows, phases=list(phases), lines=lines)
    return summary, list(problems.items)
