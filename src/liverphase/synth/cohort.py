"""What every synthetic cohort shares: the plan of patients and studies, and the output check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverphase.errors import ConfigError


def plan_patients(
    rng: np.random.Generator, studies: int, labels: Sequence[str], second: float
) -> list[tuple[int, str, bool]]:
    """(patient index from 0, label, is_follow_up) per study: each new patient takes the rarest
    label so far (balanced classes) and, with probability `second`, a second study."""
    rows: list[tuple[int, str, bool]] = []
    counts = dict.fromkeys(labels, 0)
    patient = 0
    while len(rows) < studies:
        rarest = [k for k in labels if counts[k] == min(counts.values())]
        label = str(rng.choice(rarest))
        n = 2 if len(rows) + 1 < studies and rng.random() < second else 1
        rows += [(patient, label, k == 1) for k in range(n)]
        counts[label] += n
        patient += 1
    return rows


def check_output_folder(out: Path) -> None:
    """A ConfigError unless `out` is new, empty, or an earlier synthetic cohort (overwritten)."""
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "synth.json").exists())
    ):
        raise ConfigError(
            "output exists and is not an earlier synthetic cohort; choose a new folder", out
        )
