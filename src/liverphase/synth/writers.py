"""Write synthetic studies as DICOM study folders that look like exports from real scanners.

One series per phase with varied SeriesDescription wording (all named correctly by the default
`PhaseRules`), acquisition times in phase order, random file names, some nesting, InstanceNumber
shuffled in some series and unsigned storage with intercept -1024 in others. Shared by the CT and
MRI phantoms: they pass their own description lists and modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from liverphase.io.dicom_write import dicom_time, uid_from, write_dicom_series
from liverphase.io.study import Study

CT_SERIES_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "NC": ("NATIVE 5.0 B30f", "Non-contrast abdomen", "PRE 3mm", "Plain 1.25 STD", "NC Liver"),
    "ART": (
        "ARTERIAL 1.0 B30f",
        "Late arterial 2.0 I30f",
        "AP Liver 3mm",
        "Art phase",
        "ABD ARTERIAL",
    ),
    "PV": ("PORTAL VENOUS", "PV 3.0 B30f", "Venous 5.0", "Portal phase 70s", "PVP Liver"),
    "DL": ("DELAYED 3MIN", "Delay 180s", "Equilibrium 5.0 B30f", "Late phase 3min", "DL Liver"),
}


def write_dicom_study(
    study: Study,
    folder: str | Path,
    rng: np.random.Generator,
    *,
    descriptions: Mapping[str, Sequence[str]],
    patient_name: str,
    birth_date: str,
    acquisition_seconds: Mapping[str, float],
    uid_seed: str,
    modality: str = "CT",
) -> dict[str, list[Path]]:
    """Write every phase of `study` as a series under `folder`; return phase → files.

    Layout is one of: all files flat; a folder per series; or DICOM/<study>/<series>/ nesting.
    """
    folder = Path(folder)
    study_uid = uid_from(uid_seed, "study")
    layout = str(rng.choice(["flat", "series", "deep"]))
    numbers = rng.permutation(len(study.phases)) + 2
    written: dict[str, list[Path]] = {}
    for k, (phase, image) in enumerate(study.phases.items()):
        number = int(numbers[k])
        sub = {
            "flat": folder,
            "series": folder / f"SE{number:03d}",
            "deep": folder / "DICOM" / "ST000001" / f"SE{number:06d}",
        }[layout]
        unsigned = bool(rng.random() < 0.5) and modality == "CT"
        written[phase] = write_dicom_series(
            image,
            sub,
            series_description=str(rng.choice(list(descriptions[phase]))),
            patient_id=str(study.patient_id),
            patient_name=patient_name,
            birth_date=birth_date,
            study_uid=study_uid,
            acquisition_time=dicom_time(acquisition_seconds[phase]),
            series_number=number,
            modality=modality,
            rescale=(1.0, -1024.0) if unsigned else (1.0, 0.0),
            shuffle_instance_numbers=bool(rng.random() < 0.5),
            rng=rng,
        )
    return written
