"""Cohort planning, ids and DICOM export of the synthetic DCE-MRI phantom (`synth.mri_dce`).

Series descriptions follow one vendor per study (a study comes off one scanner): Siemens VIBE,
GE LAVA / LAVA-Flex, Philips THRIVE / eTHRIVE / mDIXON. GE studies are sometimes exported as a
multiphase series split by temporal phase ("Ph1/Ax LAVA-Flex MPh" ...): those descriptions name
no phase, and the DICOM reader names them by acquisition order between PRE and HBP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from liverphase.io.study import Study
from liverphase.phases import DCE_PHASES
from liverphase.synth.cohort import plan_patients
from liverphase.synth.mri_dce_kinetics import DCE_CLASSES
from liverphase.synth.writers import write_dicom_study

MR_SERIES_DESCRIPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "siemens": {
        "PRE": ("t1_vibe_fs_tra_bh_pre", "t1_vibe_fs_tra pre", "t1_vibe_fs_tra_caipi_native"),
        "ART": ("t1_vibe_fs_tra_dyn arterial", "t1_vibe_fs_tra_bh_art", "t1_vibe_fs_tra_late_art"),
        "PV": ("t1_vibe_fs_tra_dyn portal venous", "t1_vibe_fs_tra_bh_pv", "t1_vibe_fs_tra_70s"),
        "TP": ("t1_vibe_fs_tra_bh_3min", "t1_vibe_fs_tra transitional", "t1_vibe_fs_tra_delayed"),
        "HBP": ("t1_vibe_fs_tra_bh_20min", "t1_vibe_fs_tra_HBP", "t1_vibe_fs_tra hepatobiliary"),
    },
    "ge": {
        "PRE": ("Ax LAVA-Flex pre", "WATER: Ax LAVA-Flex PRE", "Ax LAVA non-contrast"),
        "ART": ("WATER: Ax LAVA-Flex arterial", "Ax LAVA+C arterial", "Ax LAVA-Flex late arterial"),
        "PV": ("WATER: Ax LAVA-Flex portal", "Ax LAVA+C portal venous", "Ax LAVA-Flex PV 70s"),
        "TP": ("WATER: Ax LAVA-Flex delayed", "Ax LAVA+C 3 min", "Ax LAVA-Flex transitional"),
        "HBP": ("WATER: Ax LAVA-Flex 20 min", "Ax LAVA HBP 20min", "Ax LAVA-Flex hepatobiliary"),
    },
    "philips": {
        "PRE": ("T1 THRIVE pre", "eTHRIVE_pre", "T1_mDIXON_W_pre"),
        "ART": ("eTHRIVE dyn arterial", "T1 THRIVE art", "T1_mDIXON_W_art"),
        "PV": ("eTHRIVE dyn portal", "T1 THRIVE PV", "T1_mDIXON_W_PV"),
        "TP": ("eTHRIVE dyn 3min", "T1 THRIVE transitional", "T1_mDIXON_W_TP"),
        "HBP": ("eTHRIVE 20min HBP", "T1 THRIVE hepatobiliary", "T1_mDIXON_W_HBP"),
    },
}
GE_MULTIPHASE: dict[str, tuple[str, ...]] = {
    "ART": ("Ph1/Ax LAVA-Flex MPh",),
    "PV": ("Ph2/Ax LAVA-Flex MPh",),
    "TP": ("Ph3/Ax LAVA-Flex MPh",),
}
GE_MULTIPHASE_FRACTION = 0.3


def dce_case_id(site: str, seed: int, index: int) -> str:
    """Case id of study `index` of a (site, seed) cohort: D{site}{seed}-{index:04d}."""
    return f"D{site}{seed}-{index:04d}"


def dce_patient_id(site: str, seed: int, index: int) -> str:
    """Patient id of patient `index` of a (site, seed) cohort: P{site}{seed}-{index:04d}."""
    return f"P{site}{seed}-{index:04d}"


def plan_rows(
    rng: np.random.Generator, cases: int, unlabeled: int, config: Any
) -> list[tuple[int, str, bool, bool]]:
    """(patient index, class, is_follow_up, labeled) per study: `cases` labeled studies, each new
    patient taking the rarest class so far, then `unlabeled` studies of new patients (their
    hidden classes balanced the same way)."""
    rows: list[tuple[int, str, bool, bool]] = []
    patient = 0
    for n, labeled in ((cases, True), (unlabeled, False)):
        block = plan_patients(rng, n, DCE_CLASSES, config.second_study_fraction)
        rows += [(patient + p, label, follow, labeled) for p, label, follow in block]
        patient += len({p for p, _, _ in block})
    return rows


def write_dicom_case(
    root: Path,
    study: Study,
    rng: np.random.Generator,
    uid_seed: str,
    vendor: str,
    truth: dict[str, Any],
) -> None:
    """Write a study as MR series in `vendor` wording under root/{case_id}/, timed like a gadoxetic
    exam: PRE, injection, ART 15-35 s after it (later for a late-arterial draw), PV about 70 s,
    TP about 3 min, HBP about 20 min."""
    # one protocol per study: the k-th wording of every phase (a study's series share a style)
    k = int(rng.integers(len(MR_SERIES_DESCRIPTIONS[vendor]["PRE"])))
    descriptions = {p: (d[k],) for p, d in MR_SERIES_DESCRIPTIONS[vendor].items()}
    if vendor == "ge" and rng.random() < GE_MULTIPHASE_FRACTION:
        descriptions.update(GE_MULTIPHASE)
    t0 = float(rng.uniform(8 * 3600, 17 * 3600))
    inject = t0 + float(rng.uniform(30, 60))
    after = {
        "ART": 15 + 20 * truth["contrast"]["timing"],
        "PV": rng.uniform(60, 75),
        "TP": rng.uniform(170, 200),
        "HBP": rng.uniform(1150, 1300),
    }
    times = {p: t0 if p == "PRE" else inject + float(after[p]) for p in DCE_PHASES}
    birth = f"{rng.integers(1935, 1990)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    write_dicom_study(
        study,
        root / study.case_id,
        rng,
        descriptions=descriptions,
        patient_name=f"SYNTH^PATIENT^{study.patient_id}",
        birth_date=birth,
        acquisition_seconds=times,
        uid_seed=f"{uid_seed}/{study.case_id}",
        modality="MR",
    )
