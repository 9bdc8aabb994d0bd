"""Split a DICOM series that holds several acquisitions (contrast phases) into one series each.

Some archives (TCIA's HCC-TACE-Seg among them) store every contrast phase of a CT in one series
(one SeriesInstanceUID). Rules (documented contract):

1. Detection: the images repeat slice positions (several at one position along the slice normal,
   within 1e-3 mm) and, at some repeated position, differ in AcquisitionNumber,
   TemporalPositionIdentifier, ContentTime or AcquisitionTime. Repeats that agree on all four are
   duplicated instances, left to the usual "duplicate slice position" check; a series without
   repeats is returned unchanged.
2. Splitting: with m the most images at one position, keys are tried in order: AcquisitionNumber,
   TemporalPositionIdentifier (one group per value), then ContentTime and AcquisitionTime (with
   their dates; the times are cut at the m - 1 longest pauses, which must each be more than twice
   the longest pause left inside a group; ContentTime groups sharing their varying per-slice
   AcquisitionTime are reconstructions of one scan, not phases). A key is taken when it gives
   exactly m groups, each with one image per position (each group is then checked like any
   series: orientation, size, missing slices). When no key does, the series carries a one-line
   DicomError naming its folder, raised when the series is used (or when no series names a
   phase) and always listed by `liverphase inspect`.
3. Order: groups follow acquisition time: the splitting time, else the first of AcquisitionTime
   and ContentTime that differs between every group, else the AcquisitionNumber.
4. Naming, first rule that applies:
   a. phase names given by the caller (`acquisition_phases`, in acquisition order);
   b. the groups' own SeriesDescription (else ImageComments), when these differ between groups and
      name a different phase each;
   c. acquisition order over the rules' phases (CT: NC, ART, PV, DL; MR: PRE, ART, PV, TP, HBP).
      As many groups as phases take them all. With fewer groups, the first is non-contrast only
      when something says so: its own description names the non-contrast phase, it lacks the
      ContrastBolusAgent later groups carry, or its AcquisitionTime precedes
      ContrastBolusStartTime. It then takes NC (PRE) and the others the contrast phases from ART
      on (a single contrast group: PV, the routine "plain + venous" pair). Without such a hint all
      groups are post-contrast: ART, PV, DL for three CT groups, ART, PV for two; these are the
      phases LI-RADS requires for liver CT/MR, the unenhanced scan being optional.
   More groups than phases (a perfusion or bolus-tracking series) are not named: the series keeps
   an error saying so. Names from (c) are inferred: `read_dicom_study` records them in the
   metadata ("phase_assignment", "acquisitions", "warnings") so the user can check them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from liverphase.errors import ConfigError, DicomError
from liverphase.io.dicom_series import DicomSeries, DicomSlice, dicom_seconds
from liverphase.phases import PhaseRules

_NUMBER_KEYS = ("AcquisitionNumber", "TemporalPositionIdentifier")
_TIME_KEYS = {"ContentTime": "ContentDate", "AcquisitionTime": "AcquisitionDate"}
_POSITION_TOL_MM = 1e-3  # the tolerance under which check_series calls two slices duplicates
_NONCONTRAST = ("NC", "PRE")
_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "0", "NO CONTRAST"}


@dataclass
class AcquisitionSeries(DicomSeries):
    """One acquisition (phase) split out of a series that holds several."""

    index: int = 1  # 1-based, in acquisition order
    count: int = 1
    split_by: str = ""
    value: str = ""
    proposed: str | None = None
    proposed_by: str = ""
    warning: str = ""
    group_time: float | None = None

    @property
    def time(self) -> float | None:  # type: ignore[override]
        """Start of this acquisition in seconds (the time that ordered the groups)."""
        return self.group_time

    @property
    def label(self) -> str:
        """How messages name the acquisition: the series, then which acquisition."""
        return f"{super().label} acquisition {self.index} of {self.count}"

    def summary(self) -> dict[str, Any]:
        """Where the phase came from within its series, for the study's metadata."""
        return {
            "series_instance_uid": self.uid,
            "acquisition": self.index,
            "of": self.count,
            "split_by": self.split_by,
            "value": self.value,
        }


def proposed_phase(series: DicomSeries, rules: PhaseRules) -> tuple[str | None, str]:
    """The phase a series claims and why: its acquisition's name if split, else its description."""
    if isinstance(series, AcquisitionSeries):
        return series.proposed, series.proposed_by
    return rules.match(series.description), "description"


def check_phase_names(names: Sequence[str] | None, rules: PhaseRules) -> None:
    """ConfigError unless `names` are distinct phases of `rules` (None passes)."""
    if names is None:
        return
    unknown = [n for n in names if n not in rules.phases]
    if unknown or len(set(names)) != len(names) or not names:
        raise ConfigError(
            f"acquisition_phases {list(names)}: give distinct phases among {list(rules.phases)}"
        )


def split_series(
    series: DicomSeries, rules: PhaseRules, names: Sequence[str] | None = None
) -> list[DicomSeries]:
    """The series' acquisitions as series of their own, or [series] (see the module docstring)."""
    slices = series.slices
    located = _positions(slices)
    if located is None:
        return [series]  # check_series reports the missing geometry
    ids, depth = located
    m = max(Counter(ids).values())
    if m < 2 or not _differ_at_repeats(slices, ids):
        return [series]
    found = _split(slices, ids, depth, m)
    if isinstance(found, str):
        series.split_error = DicomError(f"{series.label}: {found}", series.folder)
        return [series]
    key, groups = found
    groups, starts = _order(groups, key)
    named = _names(groups, rules, names, key, series.label)
    if isinstance(named, str):
        series.split_error = DicomError(f"{series.label}: {named}", series.folder)
        return [series]
    phases, how, warning = named
    return [
        AcquisitionSeries(
            series.uid,
            group,
            index=k + 1,
            count=len(groups),
            split_by=key,
            value=str(group[0].get(key, "")),
            proposed=phase,
            proposed_by=how,
            warning=warning,
            group_time=start,
        )
        for k, (group, phase, start) in enumerate(zip(groups, phases, starts, strict=True))
    ]


def _positions(slices: list[DicomSlice]) -> tuple[list[int], np.ndarray] | None:
    """A position index per slice (equal within 1e-3 mm along the normal) and the depths."""
    for s in slices:
        if "ImagePositionPatient" not in s.ds or "ImageOrientationPatient" not in s.ds:
            return None
    try:
        iop = slices[0].orientation
        depth = np.array([float(s.position @ np.cross(iop[:3], iop[3:])) for s in slices])
    except (ValueError, TypeError, IndexError):
        return None
    ids = [0] * len(slices)
    order = np.argsort(depth, kind="stable")
    current = 0
    for prev, k in zip(order, order[1:], strict=False):
        current += depth[k] - depth[prev] >= _POSITION_TOL_MM
        ids[k] = current
    return ids, depth


def _identity(s: DicomSlice) -> tuple[str, ...]:
    return tuple(str(s.get(k, "")) for k in (*_NUMBER_KEYS, *_TIME_KEYS))


def _differ_at_repeats(slices: list[DicomSlice], ids: list[int]) -> bool:
    """True when some repeated position holds images of different acquisitions."""
    seen: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for s, i in zip(slices, ids, strict=True):
        seen[i].add(_identity(s))
    return any(len(v) > 1 for v in seen.values())


def _conflict(
    slices: list[DicomSlice], ids: list[int], depth: np.ndarray, groups: dict[str, list[int]]
) -> str:
    """'' when every group has one image per position, else where the first clash is."""
    for label, members in groups.items():
        at: dict[int, int] = {}
        for k in members:
            if ids[k] in at:
                a, b = slices[at[ids[k]]].path.name, slices[k].path.name
                return f"{label} has two images at {depth[k]:.2f} mm ({a}, {b})"
            at[ids[k]] = k
    return ""


def _split(
    slices: list[DicomSlice], ids: list[int], depth: np.ndarray, m: int
) -> tuple[str, list[list[DicomSlice]]] | str:
    """(key, groups) from the first key that separates the acquisitions, else why none does."""
    why = []
    for key in _NUMBER_KEYS:
        groups: dict[str, list[int]] = defaultdict(list)
        for k, s in enumerate(slices):
            groups[f"{key} {s.get(key, '(none)')}"].append(k)
        if len(groups) < 2:
            continue
        clash = _conflict(slices, ids, depth, groups)
        if not clash and len(groups) == m:
            return key, [[slices[k] for k in g] for g in groups.values()]
        why.append(f"by {key}, {clash or f'{len(groups)} groups for {m} images per position'}")
    for key, date_key in _TIME_KEYS.items():
        times = [dicom_seconds(s, key, date_key) for s in slices]
        if any(t is None for t in times) or len(set(times)) < 2:
            continue
        order = sorted(range(len(slices)), key=lambda k: times[k])
        gaps = np.diff([times[k] for k in order])
        cuts = sorted(np.argsort(gaps, kind="stable")[::-1][: m - 1].tolist())
        kept = np.delete(gaps, cuts)
        if (
            len(cuts) < m - 1
            or min(gaps[cuts]) <= 0
            or (kept.size and min(gaps[cuts]) <= 2 * kept.max())
        ):
            why.append(f"by {key}, no clear pause between {m} acquisitions")
            continue
        bounds = [0, *(c + 1 for c in cuts), len(order)]
        groups = {
            f"the {key} group from {_clock(times[order[a]])}": order[a:b]
            for a, b in zip(bounds, bounds[1:], strict=False)
        }
        clash = _conflict(slices, ids, depth, groups) or _same_scan(slices, groups, key)
        if not clash:
            return key, [[slices[k] for k in g] for g in groups.values()]
        why.append(f"by {key}, {clash}")
    repeated = sum(1 for c in Counter(ids).values() if c > 1)
    return (  # the first key's failure is the telling one: the others usually repeat it
        f"{repeated} slice positions hold up to {m} images of different acquisitions, which "
        f"neither AcquisitionNumber nor ContentTime/AcquisitionTime separates into volumes with "
        f"one image per position ({why[0] if why else 'no key differs'})"
    )


def _same_scan(slices: list[DicomSlice], groups: dict[str, list[int]], key: str) -> str:
    """Why ContentTime groups are reconstructions of one scan (same per-slice AcquisitionTime)."""
    if key != "ContentTime":
        return ""
    scans = [
        frozenset(str(slices[k].get("AcquisitionTime", "")) for k in g) for g in groups.values()
    ]
    # one series-wide AcquisitionTime says nothing; the same varying ones do (two recon kernels)
    if len(scans[0]) > 1 and len(set(scans)) == 1 and "" not in scans[0]:
        return "the groups share their per-slice AcquisitionTime: reconstructions of one scan"
    return ""


def _clock(seconds: float | None) -> str:
    secs = (seconds or 0.0) % 86400
    return f"{int(secs // 3600):02d}:{int(secs % 3600 // 60):02d}:{secs % 60:04.1f}"


def _start(group: list[DicomSlice], key: str) -> float | None:
    times = [dicom_seconds(s, key, _TIME_KEYS[key]) for s in group]
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _order(
    groups: list[list[DicomSlice]], key: str
) -> tuple[list[list[DicomSlice]], list[float | None]]:
    """Groups in acquisition order and the start time of each (see rule 3)."""
    time_keys = ([key] if key in _TIME_KEYS else []) + [
        k for k in ("AcquisitionTime", "ContentTime") if k != key
    ]
    for tkey in time_keys:
        starts = [_start(g, tkey) for g in groups]
        if None not in starts and len(set(starts)) == len(starts):
            order = sorted(range(len(groups)), key=lambda i: starts[i])
            return [groups[i] for i in order], [starts[i] for i in order]

    def number(i: int) -> float:
        try:
            return float(groups[i][0].get(key))
        except (TypeError, ValueError):
            return float("inf")

    order = sorted(range(len(groups)), key=lambda i: (number(i), i))
    return [groups[i] for i in order], [DicomSeries("", groups[i]).time for i in order]


def _names(
    groups: list[list[DicomSlice]],
    rules: PhaseRules,
    given: Sequence[str] | None,
    key: str,
    label: str,
) -> tuple[list[str], str, str] | str:
    """(phase per group, how named, warning for the user) or why the groups cannot be named."""
    n, phases = len(groups), list(rules.phases)
    if given is not None:
        if len(given) != n:
            return f"{n} acquisitions (by {key}) but {len(given)} phase names given {list(given)}"
        return list(given), "given names", ""
    for tag in ("SeriesDescription", "ImageComments"):
        texts = [str(g[0].get(tag, "")) for g in groups]
        named = [rules.match(t) for t in texts]
        if len(set(texts)) == n and None not in named and len(set(named)) == n:
            return [str(p) for p in named], "description", ""
    if n > len(phases):
        return (
            f"{n} acquisitions (by {key}), more than the {len(phases)} phases {phases}: not a "
            "contrast-phase series, or give the phase names (acquisition_phases)"
        )
    hint = ""
    if n == len(phases) or phases[0] not in _NONCONTRAST:
        names = phases[:n]
    else:
        hint = _noncontrast_hint(groups, rules, phases[0])
        post = phases[1:]
        if not hint:
            names = post[:n]
        elif n == 2:
            names = [phases[0], "PV" if "PV" in post else post[0]]
        else:
            names = [phases[0], *post[: n - 1]]
        hint = f"first one non-contrast: {hint}" if hint else "assuming no non-contrast one"
    warning = (
        f"{label} holds {n} acquisitions (told apart by {key}), named {', '.join(names)} by "
        f"acquisition order{f' ({hint})' if hint else ''}: check them"
    )
    return names, "acquisition order", warning


def _noncontrast_hint(groups: list[list[DicomSlice]], rules: PhaseRules, first: str) -> str:
    """Why the first acquisition is non-contrast, or '' when nothing says so."""
    own = str(groups[0][0].get("SeriesDescription", ""))
    comments = str(groups[0][0].get("ImageComments", ""))
    if first in (rules.match(own), rules.match(comments)):
        return "its description"

    def agent(g: list[DicomSlice]) -> str:
        return str(g[0].get("ContrastBolusAgent", "")).strip().upper()

    # scanners often copy the exam's agent into every series, so only its absence is evidence
    if agent(groups[0]) in _NO_AGENT and any(agent(g) not in _NO_AGENT for g in groups[1:]):
        return "it lacks the ContrastBolusAgent of the later acquisitions"
    start = _start(groups[0], "AcquisitionTime")
    bolus = dicom_seconds(groups[0][0], "ContrastBolusStartTime", "AcquisitionDate")
    if start is not None and bolus is not None and start < bolus:
        return "acquired before ContrastBolusStartTime"
    return ""
