"""Challenge submission files: LLD-MMRI 2023's JSON, written from class probabilities and checked.

The format, as the challenge publishes it: `[{"image_id": "MR210196", "prediction": 0, "score":
[7 floats]}, ...]`, classes in the challenge's order (LLD_MMRI_CLASSES), score the probabilities in
that order. A dataset may list its classes in any order: columns are mapped by name, never by index.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_text
from liverphase.errors import ConfigError, DatasetError, LiverphaseError
from liverphase.io.cases_csv import CaseRecord
from liverphase.io.importers.lld_mmri import CLASSES as LLD_CLASSES
from liverphase.io.published_split import has_split_column, split_of

LLD_MMRI_CLASSES = LLD_CLASSES  # the importer's class names, in the challenge's order
SUBMISSION_FORMATS = ("lld-mmri",)
LLD_KEYS = frozenset({"image_id", "prediction", "score"})
LLD_ID = re.compile(r"^MR\d+$")
# DATASETS.md: ids are MR + digits, 16 of them written MR-411388; the challenge's form has no dash
_LLD_ID_IN = re.compile(r"^MR-?(\d+)$", re.IGNORECASE)
SUM_TOLERANCE = 1e-4


class SubmissionError(LiverphaseError, ValueError):
    """A submission does not follow the challenge's published format."""


def lld_image_id(case_id: str) -> str:
    """The challenge's image_id of a case id: 'MR' + digits ('MR-411388' → 'MR411388')."""
    m = _LLD_ID_IN.match(case_id.strip())
    if not m:
        raise DatasetError(f"case id {case_id!r} is not an LLD-MMRI id (MR + digits)")
    return f"MR{m.group(1)}"


def lld_class_columns(class_names: Sequence[str]) -> list[int]:
    """For each challenge class in order, its column among `class_names` (matched by name,
    case-insensitive); DatasetError unless the classes are exactly the challenge's seven."""
    index = {str(c).strip().lower(): i for i, c in enumerate(class_names)}
    wanted = [c.lower() for c in LLD_MMRI_CLASSES]
    if len(class_names) != len(wanted) or sorted(index) != sorted(wanted):
        raise DatasetError(
            f"classes {list(class_names)} are not LLD-MMRI's seven ({', '.join(LLD_MMRI_CLASSES)}): "
            "cannot write its submission"
        )
    return [index[c] for c in wanted]


def lld_submission(
    case_ids: Sequence[str], probs: np.ndarray, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """The submission entries of `case_ids` with class probabilities `probs` (N, K) whose columns
    are `class_names`; validated before it is returned."""
    columns = lld_class_columns(class_names)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(case_ids), len(class_names)):
        raise ValueError(f"probs {probs.shape} for {len(case_ids)} cases × {len(class_names)}")
    entries = []
    for cid, row in zip(case_ids, probs, strict=True):
        score = row[columns]
        # renormalised in float64: float32 softmax sums drift by ~1e-7, the checker allows 1e-4
        score = score / score.sum()
        entries.append(
            {
                "image_id": lld_image_id(cid),
                "prediction": int(np.argmax(score)),
                "score": [float(v) for v in score],
            }
        )
    validate_lld_submission(entries)
    return entries


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_lld_submission(obj: Any) -> None:
    """Raise SubmissionError unless `obj` is a valid LLD-MMRI submission (the published format)."""
    if not isinstance(obj, list) or not obj:
        raise SubmissionError("a submission is a non-empty JSON list of entries")
    seen: set[str] = set()
    n = len(LLD_MMRI_CLASSES)
    for i, entry in enumerate(obj):
        where = f"entry {i}"
        if not isinstance(entry, dict) or set(entry) != LLD_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise SubmissionError(f"{where}: needs exactly the keys {sorted(LLD_KEYS)}, got {keys}")
        image_id = entry["image_id"]
        if not isinstance(image_id, str) or not LLD_ID.match(image_id):
            raise SubmissionError(f"{where}: image_id {image_id!r} is not 'MR' + digits")
        if image_id in seen:
            raise SubmissionError(f"{where}: image_id {image_id!r} appears twice")
        seen.add(image_id)
        score = entry["score"]
        if not isinstance(score, list) or len(score) != n or not all(map(_is_real, score)):
            raise SubmissionError(f"{where} ({image_id}): score must be a list of {n} numbers")
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in score):
            raise SubmissionError(f"{where} ({image_id}): scores must be finite, in [0, 1]")
        if abs(math.fsum(score) - 1.0) > SUM_TOLERANCE:
            raise SubmissionError(
                f"{where} ({image_id}): scores sum to {math.fsum(score):.6f}, not 1"
            )
        pred = entry["prediction"]
        if not isinstance(pred, int) or isinstance(pred, bool) or not 0 <= pred < n:
            raise SubmissionError(
                f"{where} ({image_id}): prediction {pred!r} is not an int 0-{n - 1}"
            )
        # argmax, ties allowed: any class of the highest score is the argmax
        if score[pred] < max(score):
            raise SubmissionError(
                f"{where} ({image_id}): prediction {pred} is not the argmax of score "
                f"({int(np.argmax(score))})"
            )


def submission_cases(records: Sequence[CaseRecord], path: Path | None = None) -> list[str]:
    """The cases a submission covers: the `test` split (the one a challenge scores), or every
    case of a dataset without a split column; labeled or not, in cases.csv order."""
    if not has_split_column(records):
        return [r.case_id for r in records]
    ids = [r.case_id for r in records if split_of(r) == "test"]
    if not ids:
        raise DatasetError("no case in split 'test': no submission to write", path)
    return ids


def check_submission(fmt: str, case_ids: Sequence[str], class_names: Sequence[str]) -> None:
    """Raise a one-line error unless a submission of format `fmt` can be written for these case
    ids and classes (before any prediction is made)."""
    if fmt not in SUBMISSION_FORMATS:
        raise ConfigError(
            f"unknown submission format {fmt!r}; known: {', '.join(SUBMISSION_FORMATS)}",
            "--submission",
        )
    lld_class_columns(class_names)
    twice = sorted(i for i, n in Counter(lld_image_id(c) for c in case_ids).items() if n > 1)
    if twice:
        raise DatasetError(f"case ids give the same image_id {twice[:5]}")


def write_submission(
    fmt: str,
    path: str | Path,
    case_ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Write a submission file of format `fmt` atomically (validated first); return its path."""
    check_submission(fmt, case_ids, class_names)
    entries = lld_submission(case_ids, probs, class_names)
    path = Path(path)
    atomic_write_text(path, json.dumps(entries, indent=1) + "\n")
    # read back: what reaches the disk is what the challenge's checker reads
    validate_lld_submission(json.loads(path.read_text()))
    return path


def submission_filename(fmt: str) -> str:
    """The file name a RUN folder gives a submission of format `fmt`."""
    return f"submission_{fmt}.json"
