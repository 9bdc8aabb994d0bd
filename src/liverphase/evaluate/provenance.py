"""What data a run was trained on, and whether another dataset shares any of it.

A dataset's fingerprint is a SHA-256 over its cases in id order: case id, patient id, label, boxes,
and the SHA-256 of each phase image and of the mask, the same file digests the preprocessing cache
keys on (remembered per path, size and mtime in CACHE/file_hashes.json, so recomputing them is a
stat per file). A bundle records the fingerprint and, per case it was trained on (its training and
validation cases: validation chose the epoch), the patient id and the digests of its phase images;
run.json records the fingerprint (`data_fingerprint`) and the run's training case and patient ids.

Overlap is judged on content, because ids repeat across cohorts (every synthetic seed names its
cases CT0000...): a study overlaps when one of its phase images is byte-identical to a phase image
of a training study, whatever its id, so the same id with other content is not overlap, and a
re-export with fewer phases still is. Patient ids are compared only within one patient namespace,
known when the fingerprints are equal or when a content-matched study carries the same patient id
in both; otherwise a patient overlaps only through a content-matched study of theirs. A re-encoded
copy (other compression or file format) is not recognised: the digests are of the files' bytes.

`evaluate` refuses a dataset with any overlap (`--allow-overlap` evaluates it, and the report says
so), except on the bundles' own dataset (same fingerprint), where it scores only the studies they
never saw, e.g. an official-split run's test split. `compare` refuses runs whose fingerprint is not
the dataset's; `ablate` reuses a finished row only when its fingerprint is the dataset's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverphase.errors import DataMismatchError, DataOverlapError, InputFileError
from liverphase.io.nifti import NnUNetDataset
from liverphase.preprocess.cache import HASHES, FileHasher

FORMAT = "liverphase-data-1"
N_EXAMPLES = 3  # ids a message names before "..."
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseContent:
    """One case: patient, label, phase -> image digest (None: no file), mask digest."""

    patient: str
    label: str | None
    images: dict[str, str | None]
    mask: str | None

    @property
    def digests(self) -> set[str]:
        """The digests of the phase images the case has."""
        return {d for d in self.images.values() if d}


@dataclass
class DatasetContent:
    """A dataset's fingerprint and per-case content, with the hasher that read the files."""

    root: Path
    fingerprint: str
    cases: dict[str, CaseContent]
    hasher: FileHasher = field(repr=False)

    def keep_hashes(self, cache_root: str | Path) -> None:
        """Merge the file digests into `cache_root`'s memo, so preprocessing there hashes no file
        this call already read."""
        path = Path(cache_root) / HASHES
        if self.hasher.memo_path == path:
            self.hasher.save()
            return
        Path(cache_root).mkdir(parents=True, exist_ok=True)
        target = FileHasher(path)
        target.memo.update(self.hasher.memo)
        target.changed = True
        target.save()


def _digest(hasher: FileHasher, path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hasher.digest(path)
    except InputFileError:  # a missing file is the dataset's problem, named where it is read
        return None


def dataset_content(ds: NnUNetDataset, cache_root: str | Path | None = None) -> DatasetContent:
    """Fingerprint and per-case content of `ds`; file digests come from (and go to) the memo of
    `cache_root` when that folder exists."""
    memo = Path(cache_root) / HASHES if cache_root and Path(cache_root).is_dir() else None
    hasher = FileHasher(memo)
    cases: dict[str, CaseContent] = {}
    rows = []
    for rec in sorted(ds.cases, key=lambda r: r.case_id):
        images = {p: _digest(hasher, f) for p, f in ds.image_paths(rec.case_id).items()}
        case = CaseContent(
            rec.patient_id, rec.label, images, _digest(hasher, ds.label_path(rec.case_id))
        )
        cases[rec.case_id] = case
        boxes = {p: list(b) for p, b in sorted(rec.phase_boxes.items())}
        rows.append(
            [rec.case_id, case.patient, case.label or "", sorted(images.items()), case.mask]
            + [list(rec.bbox) if rec.bbox else None, boxes]
        )
    if memo is not None:
        try:
            hasher.save()
        except OSError:  # a read-only cache only costs hashing again next time
            pass
    text = json.dumps([FORMAT, rows], separators=(",", ":"))
    return DatasetContent(ds.root, hashlib.sha256(text.encode()).hexdigest(), cases, hasher)


def items_cache_root(items: dict[str, dict[str, Any]]) -> Path | None:
    """The cache folder trainer items were read from (an item's image is CACHE/<key>/image.npy)."""
    first = next(iter(items.values()), None)
    return Path(first["image"]).parent.parent if first else None


def training_record(content: DatasetContent, case_ids: Sequence[str]) -> dict[str, Any]:
    """A bundle's `data`: the dataset fingerprint and, per training case, its patient and the
    digests of its phase images."""
    cases = {
        c: {"patient": content.cases[c].patient, "images": sorted(content.cases[c].digests)}
        for c in sorted(set(case_ids))
    }
    return {
        "fingerprint": content.fingerprint,
        "cases": cases,
        "patients": sorted({v["patient"] for v in cases.values()}),
    }


def items_training_data(
    ds: NnUNetDataset, items: dict[str, dict[str, Any]], case_ids: Sequence[str]
) -> dict[str, Any]:
    """The `data` of a bundle trained on `case_ids` of `items` (digests from the items' cache)."""
    return training_record(dataset_content(ds, items_cache_root(items)), case_ids)


def run_data(ds: NnUNetDataset, cache_root: str | Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """run.json's entries: `data_fingerprint` (what ablate and compare match) and `data` (the
    dataset, its case count, and the case and patient ids some model of the run trained on)."""
    content = dataset_content(ds, cache_root)
    ids = sorted(set(case_ids))
    return {
        "data_fingerprint": content.fingerprint,
        "data": {
            "dataset": str(ds.root),
            "n_cases": len(content.cases),
            "train_cases": ids,
            "train_patients": sorted({content.cases[c].patient for c in ids}),
        },
    }


@dataclass
class Overlap:
    """Which of the studies to evaluate are training data of the bundles, by content or patient."""

    checked: bool  # False: a bundle recorded no training data
    same_dataset: bool = False  # every bundle's fingerprint is the dataset's
    studies: list[str] = field(default_factory=list)  # a phase image is a training image
    patients: list[str] = field(default_factory=list)  # their patient is a training patient
    cases: list[str] = field(default_factory=list)  # either: not unseen

    def describe(self, n: int) -> str:
        """One sentence: how many of `n` studies overlap, by content and by patient, and which."""
        return (
            f"{len(self.cases)} of the {n} studies to evaluate overlap the bundle(s)' training "
            f"data: {len(self.studies)} share image content with a training study"
            f"{_examples(self.studies)}, {len(self.patients)} patient(s) were trained on"
            f"{_examples(self.patients)}"
        )


def _examples(ids: Sequence[str]) -> str:
    if not ids:
        return ""
    more = ", ..." if len(ids) > N_EXAMPLES else ""
    return f" ({', '.join(ids[:N_EXAMPLES])}{more})"


def find_overlap(
    trained: Sequence[dict[str, Any] | None], content: DatasetContent, cases: Sequence[str]
) -> Overlap:
    """The overlap of `cases` of a dataset with the training data the bundles recorded (`trained`:
    each bundle's `data`, None when it predates it); see the module docstring for the rules."""
    if not trained or any(not isinstance(t, dict) or "cases" not in t for t in trained):
        return Overlap(checked=False)
    owner: dict[str, str] = {}  # training image digest -> its patient
    train_patients: set[str] = set()
    for t in trained:
        for rec in t["cases"].values():
            train_patients.add(rec["patient"])
            owner.update(dict.fromkeys(rec["images"], rec["patient"]))
    same = all(t.get("fingerprint") == content.fingerprint for t in trained)
    # every study of the dataset, evaluated or not, can link its patient to the training data
    matched = {c: v for c, v in content.cases.items() if v.digests & owner.keys()}
    one_namespace = same or any(
        owner[d] == v.patient for v in matched.values() for d in v.digests & owner.keys()
    )
    patients = {v.patient for v in matched.values()} | (train_patients if one_namespace else set())
    hits = [c for c in cases if c in matched or content.cases[c].patient in patients]
    return Overlap(
        checked=True,
        same_dataset=same,
        studies=[c for c in cases if c in matched],
        patients=sorted({content.cases[c].patient for c in hits}),
        cases=hits,
    )


@dataclass
class Screened:
    """What `evaluate` scores after the overlap check, and what its report says about it."""

    scored: list[str]
    overlap: Overlap
    section: str
    note: str | None = None  # the CLI's line: overlap allowed or not checked, studies left out


def screen_evaluation(
    trained: Sequence[dict[str, Any] | None],
    content: DatasetContent,
    scored: Sequence[str],
    submission: Sequence[str] = (),
    allow_overlap: bool = False,
) -> Screened:
    """Check the studies `evaluate` would score and submit against the bundles' training data.
    No overlap: all scored. On the bundles' own dataset (same fingerprint, e.g. an official-split
    run on its test split) the training studies and patients are left out of the scores. Any other
    overlap raises DataOverlapError unless `allow_overlap`, which scores everything and says so."""
    wanted = list(dict.fromkeys([*scored, *submission]))
    n = len(wanted)
    overlap = find_overlap(trained, content, wanted)
    head = "## Training data\n\n"
    if not overlap.checked:
        old = sum(not (isinstance(t, dict) and "cases" in t) for t in trained)
        note = (
            f"warning: overlap with the training data cannot be checked: {old} bundle(s) were "
            "written before bundles recorded their training data"
        )
        text = (
            "Overlap with the training data could not be checked: the bundle(s) were written "
            "before bundles recorded their training data. Nothing here shows that these studies "
            "and patients are unseen.\n"
        )
        return Screened(list(scored), overlap, head + text, note)
    fingerprint = f"Dataset fingerprint `{content.fingerprint[:16]}`."
    if not overlap.cases:
        text = (
            f"None of the {n} evaluated studies is training data of the bundle(s): no phase image "
            "is byte-identical to a training image and no patient was trained on"
            + ("" if overlap.same_dataset else " (patient ids are compared within one dataset)")
            + f". {fingerprint}\n"
        )
        return Screened(list(scored), overlap, head + text)
    described = overlap.describe(n)
    if allow_overlap:
        text = (
            f"**This evaluation includes training data** (`--allow-overlap`): {described}. "
            "Figures over studies or patients the model was trained on are optimistic; they do "
            f"not estimate performance on new patients. {fingerprint}\n"
        )
        note = f"warning: evaluated with --allow-overlap: {described}"
        return Screened(list(scored), overlap, head + text, note)
    left = set(overlap.cases)
    if overlap.same_dataset and not left & set(submission):
        kept = [c for c in scored if c not in left]
        if kept or submission:
            note = (
                f"the bundle(s)' own dataset: {len(left)} studies that were training data, or of "
                f"a training patient, left out; {len(kept)} scored"
            )
            text = (
                f"This is the dataset the bundle(s) were trained on (same fingerprint). {described}"
                f"; they are left out, and the figures are over the {len(kept)} labeled studies "
                f"the bundle(s) never saw. {fingerprint}\n"
            )
            return Screened(kept, overlap, head + text, note)
    raise DataOverlapError(
        f"{described}: evaluate on unseen data, or pass --allow-overlap to evaluate anyway "
        "(the report then states the overlap)",
        content.root,
    )


def _run_fingerprint(run: Path) -> str | None:
    path = Path(run) / "run.json"
    try:
        value = json.loads(path.read_text()).get("data_fingerprint") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def check_runs_data(
    runs: dict[str, Path], ds: NnUNetDataset, cache_root: str | Path | None = None
) -> None:
    """Refuse runs not trained on `ds` (DataMismatchError: their run.json fingerprint differs from
    the dataset's); runs that predate fingerprints are let through with a warning."""
    recorded = {label: _run_fingerprint(run) for label, run in runs.items()}
    if any(recorded.values()):
        content = dataset_content(ds, cache_root)
        for label, fingerprint in recorded.items():
            if fingerprint is not None and fingerprint != content.fingerprint:
                raise DataMismatchError(
                    f"run {label!r} was trained on other data than {ds.root} (dataset fingerprint "
                    f"{fingerprint[:16]}, the dataset's {content.fingerprint[:16]}): compare runs "
                    "trained on this dataset",
                    Path(runs[label]) / "run.json",
                )
    unknown = [label for label, f in recorded.items() if f is None]
    if unknown:
        log.warning(
            "warning: %s record no dataset fingerprint (written before runs recorded their "
            "data): cannot check that they were trained on %s",
            ", ".join(repr(u) for u in unknown),
            ds.root,
        )
