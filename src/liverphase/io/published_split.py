"""A dataset's published split: the `split` column of cases.csv (train/val/test), read and checked.

`cv --splits official` trains on it and `inspect` reports it; both read it here so they agree on
what counts as a problem. A row with an empty `split` lies outside the published split (CirrMRI600+'s
healthy subjects are published without one): it is counted and left out, not an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverphase.errors import DatasetError, SplitError
from liverphase.io.cases_csv import CaseRecord

SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "val", "test")


def has_split_column(records: Sequence[CaseRecord]) -> bool:
    """Whether cases.csv has a `split` column (every row then carries the key in `extra`)."""
    return any(SPLIT_COLUMN in r.extra for r in records)


def split_of(record: CaseRecord) -> str:
    """A case's split value, stripped ('' when empty or absent)."""
    return (record.extra.get(SPLIT_COLUMN) or "").strip()


def _listing(ids: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def split_problems(records: Sequence[CaseRecord], path: Path | None = None) -> list[SplitError]:
    """Every problem of the split column: values other than train/val/test, a patient in two splits."""
    problems: list[SplitError] = []
    unknown: dict[str, list[str]] = {}
    for r in records:
        value = split_of(r)
        if value and value not in SPLIT_VALUES:
            unknown.setdefault(value, []).append(r.case_id)
    for value, ids in sorted(unknown.items()):
        problems.append(
            SplitError(
                f"split value {value!r} (case(s) {_listing(ids)}) is not one of "
                f"{', '.join(SPLIT_VALUES)}",
                path,
            )
        )
    splits_of_patient: dict[str, set[str]] = {}
    for r in records:
        if split_of(r) in SPLIT_VALUES:
            splits_of_patient.setdefault(r.patient_id, set()).add(split_of(r))
    leaked = sorted(p for p, s in splits_of_patient.items() if len(s) > 1)
    for pid in leaked:
        where = ", ".join(sorted(splits_of_patient[pid], key=SPLIT_VALUES.index))
        problems.append(SplitError(f"patient {pid!r} is in two splits ({where})", path))
    return problems


def split_counts(records: Sequence[CaseRecord]) -> dict[str, dict[str, Any]]:
    """Per split value (train, val, test, then any other; '' for none): cases, patients, labels."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = out.setdefault(split_of(r), {"cases": 0, "patients": set(), "labels": Counter()})
        entry["cases"] += 1
        entry["patients"].add(r.patient_id)
        entry["labels"][r.label or "(unlabeled)"] += 1
    order = {v: i for i, v in enumerate(SPLIT_VALUES)}
    return {
        value: {
            "cases": e["cases"],
            "patients": len(e["patients"]),
            "labels": dict(sorted(e["labels"].items())),
        }
        for value, e in sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    }


def describe_splits(records: Sequence[CaseRecord]) -> list[str]:
    """Report lines of the split counts ([] without a split column)."""
    if not has_split_column(records):
        return []
    lines = ["splits (cases.csv column 'split'):"]
    for value, c in split_counts(records).items():
        name = value or "(none: outside the published split)"
        labels = ", ".join(f"{k} {v}" for k, v in c["labels"].items())
        lines.append(f"  {name}: {c['cases']} cases, {c['patients']} patients ({labels})")
    return lines


@dataclass
class PublishedSplit:
    """The published split of a dataset's labeled cases, ready to train and score."""

    train: list[str]
    val: list[str]
    test: list[str]  # labeled: scored
    unscored: list[str]  # test cases whose label is withheld: predicted, never scored
    outside: list[str] = field(default_factory=list)  # no split value: left out

    def to_json(self) -> dict[str, Any]:
        """The splits.json object: one fold "0" (so fold readers see train/test) marked official."""
        return {
            "0": {
                "kind": "official",
                "source": f"cases.csv column '{SPLIT_COLUMN}'",
                "train": list(self.train),
                "validation": list(self.val),
                "test": list(self.test),
                "test_unscored": list(self.unscored),
                "outside": list(self.outside),
            }
        }


def published_split(
    records: Sequence[CaseRecord], usable: Sequence[str], path: Path | None = None
) -> PublishedSplit:
    """The published split of `records` among the `usable` case ids (those with the phases an
    experiment needs): labeled cases by split, unlabeled test cases as unscored (unlabeled train or
    val rows are for pretraining only); the first problem is raised."""
    if not has_split_column(records):
        raise DatasetError(
            f"no '{SPLIT_COLUMN}' column (train/val/test per case): --splits official needs one; "
            "use --splits kfold",
            path,
        )
    problems = split_problems(records, path)
    if problems:
        raise problems[0]
    keep = set(usable)
    by_split: dict[str, list[str]] = {v: [] for v in (*SPLIT_VALUES, "")}
    unscored: list[str] = []
    for r in records:
        if r.case_id not in keep:
            continue
        if r.label:
            by_split[split_of(r)].append(r.case_id)
        elif split_of(r) == "test":
            unscored.append(r.case_id)
    if not by_split["train"]:
        raise SplitError("no labeled case in split 'train': nothing to train on", path)
    if not by_split["test"] and not unscored:
        raise SplitError("no case in split 'test': nothing to predict", path)
    return PublishedSplit(
        by_split["train"], by_split["val"], by_split["test"], unscored, by_split[""]
    )
