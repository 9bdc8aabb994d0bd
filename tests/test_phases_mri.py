"""DCE-MRI phase vocabulary: naming rules for vendor series descriptions, and the DICOM reader
picking MR rules for Modality MR studies (CT behaviour is covered by test_dicom.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverphase.io.dicom import read_dicom_study, scan_dicom_study
from liverphase.io.dicom_write import dicom_time, write_dicom_series
from liverphase.phases import CT_PHASES, DCE_PHASES, PhaseRules
from liverphase.synth.mri_dce_writers import GE_MULTIPHASE, MR_SERIES_DESCRIPTIONS
from liverphase.synth.writers import CT_SERIES_DESCRIPTIONS

MR = PhaseRules.for_modality("MR")

# (description as a scanner or a PACS would show it, expected phase)
REAL_WORLD: list[tuple[str, str | None]] = [
    # Siemens VIBE
    ("t1_vibe_fs_tra_bh_pre", "PRE"),
    ("t1_vibe_fs_tra pre", "PRE"),
    ("t1_vibe_fs_tra_caipi_p4_bh_native", "PRE"),
    ("t1_vibe_fs_tra_dyn arterial", "ART"),
    ("t1_vibe_fs_tra_dyn_late_art", "ART"),
    ("t1_vibe_fs_tra_bh_35s", "ART"),
    ("t1_vibe_fs_tra_dyn portal venous", "PV"),
    ("t1_vibe_fs_tra_bh_70s", "PV"),
    ("t1_vibe_fs_tra_3min", "TP"),
    ("t1_vibe_fs_tra_bh_transitional", "TP"),
    ("t1_vibe_fs_tra_20min", "HBP"),
    ("t1_vibe_fs_tra_bh_HBP", "HBP"),
    ("t1_vibe_fs_cor_hepatobiliary", "HBP"),
    # GE LAVA / LAVA-Flex
    ("Ax LAVA-Flex pre", "PRE"),
    ("WATER: Ax LAVA-Flex arterial", "ART"),
    ("Ax LAVA+C portal", "PV"),
    ("Ax LAVA-Flex delayed", "TP"),
    ("Ax LAVA 20 min delay", "HBP"),  # "delay" alone would be TP: HBP wording wins
    ("Ax LAVA-Flex Ph2 portal venous", "PV"),
    ("Ph1/Ax LAVA-Flex MPh", None),  # temporal index only: named by acquisition order
    ("Ph3/Ax LAVA MPh +C", None),
    ("FAT: Ax LAVA-Flex arterial", None),  # Dixon fat image, not the phase's image
    ("InPhase: Ax LAVA-Flex", None),
    # Philips THRIVE / eTHRIVE / mDIXON
    ("T1 THRIVE pre", "PRE"),
    ("eTHRIVE dyn arterial", "ART"),
    ("eTHRIVE_portal", "PV"),
    ("eTHRIVE equilibrium", "TP"),
    ("eTHRIVE 20min HBP", "HBP"),
    ("T1_mDIXON_W_pre", "PRE"),
    ("T1_mDIXON_W_TP", "TP"),
    ("T1_mDIXON_F_arterial", None),  # fat image
    ("mDIXON_IP_pre", None),  # in-phase image
    # generic wording
    ("Pre-contrast T1 FS", "PRE"),
    ("T1 fat sat pre gad", "PRE"),  # "fat sat" is fat suppression, not a fat image
    ("non-contrast", "PRE"),
    ("Late arterial phase", "ART"),
    ("Portal venous phase", "PV"),
    ("1 min post", "PV"),
    ("Transitional phase 3 min", "TP"),
    ("Delayed 5 min", "TP"),
    ("late dynamic", "TP"),
    ("Hepatobiliary phase", "HBP"),
    ("HBP 15 min", "HBP"),
    ("hbp", "HBP"),
    ("20min", "HBP"),
    ("2 min", "TP"),  # "2 min" is transitional, "20 min" hepatobiliary
    # not a DCE phase image
    ("t1_vibe_fs_tra_dyn_art_SUB", None),  # subtraction
    ("MIP arterial", None),
    ("t2_haste_tra_mbh pre", None),  # a T2W series, whatever its wording
    ("ep2d_diff_b50_800_tra ADC", None),
    ("localizer", None),
    ("t1_vibe_fs_tra_dyn", None),
    ("", None),
]


@pytest.mark.parametrize(("description", "phase"), REAL_WORLD)
def test_mr_rules_name_vendor_descriptions(description: str, phase: str | None) -> None:
    assert MR.match(description) == phase


def test_specificity_pairs() -> None:
    # "pre" is a word, never a prefix of "portal"/"prep"; minutes: 2-5 → TP, 10-30 → HBP
    assert MR.match("portal") == "PV" and MR.match("prep portal") == "PV"
    for minutes, phase in [(2, "TP"), (3, "TP"), (5, "TP"), (10, "HBP"), (20, "HBP"), (30, "HBP")]:
        assert MR.match(f"t1 vibe {minutes} min") == phase
        assert MR.match(f"t1_vibe_{minutes}min") == phase


def test_phase_vocabulary_and_modality_choice() -> None:
    assert DCE_PHASES == ("PRE", "ART", "PV", "TP", "HBP")
    assert MR.phases == DCE_PHASES  # acquisition order: what the reader's gap filling uses
    assert PhaseRules.for_modality("mr").phases == DCE_PHASES
    assert PhaseRules.for_modality("CT") == PhaseRules()
    assert PhaseRules().phases == CT_PHASES
    with pytest.raises(ValueError, match="modality"):
        PhaseRules.for_modality("US")


def test_ct_rules_are_unchanged_by_the_mr_additions() -> None:
    ct = PhaseRules()
    for phase, descriptions in CT_SERIES_DESCRIPTIONS.items():
        for d in descriptions:
            assert ct.match(d) == phase
    # CT rules know no MRI phase names; the MR ones no CT phase names
    assert ct.match("t1_vibe_fs_tra_20min") is None
    assert MR.match("DELAYED 3MIN") == "TP" and MR.match("NATIVE 5.0 B30f") == "PRE"


def test_phantom_descriptions_are_named_by_the_mr_rules() -> None:
    for vendor, table in MR_SERIES_DESCRIPTIONS.items():
        assert tuple(table) == DCE_PHASES, vendor
        for phase, descriptions in table.items():
            for d in descriptions:
                assert MR.match(d) == phase, (vendor, d)
    assert all(MR.match(d) is None for ds in GE_MULTIPHASE.values() for d in ds)


# ---- the DICOM reader with MR series ---------------------------------------------------------------
def _volume(seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    img = sitk.GetImageFromArray(rng.integers(0, 1200, (5, 10, 12)).astype(np.int16))
    img.SetSpacing((1.5, 1.5, 3.0))
    img.SetOrigin((-9.0, 4.5, -30.0))
    return img


def _write_study(root: Path, series: list[tuple[str, float]], modality: str = "MR") -> list:
    images = []
    for k, (description, seconds) in enumerate(series):
        images.append(_volume(k))
        write_dicom_series(
            images[-1],
            root / f"s{k}",
            series_description=description,
            patient_id="PX",
            patient_name="DOE^JANE",
            birth_date="19600101",
            study_uid="1.2.826.0.1.7",
            acquisition_time=dicom_time(36000 + seconds),
            series_number=k + 1,
            modality=modality,
        )
    return images


def test_dicom_reader_names_mr_phases_with_mr_rules(tmp_path: Path) -> None:
    series = [
        ("t1_vibe_fs_tra_bh_pre", 0),
        ("t1_vibe_fs_tra_dyn arterial", 60),
        ("t1_vibe_fs_tra_dyn_art_SUB", 61),  # a subtraction of the arterial phase: not used
        ("t1_vibe_fs_tra_dyn portal venous", 100),
        ("t1_vibe_fs_tra_bh_3min", 220),
        ("t1_vibe_fs_tra_bh_20min", 1240),
    ]
    images = _write_study(tmp_path, series)
    study = read_dicom_study(tmp_path)
    assert list(study.phases) == list(DCE_PHASES)
    assert study.metadata["modality"] == "MR"
    wanted = dict(zip(DCE_PHASES, [images[i] for i in (0, 1, 3, 4, 5)], strict=True))
    for phase, image in wanted.items():
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(study.phases[phase]), sitk.GetArrayFromImage(image)
        )
    assert [u["description"] for u in study.metadata["unused_series"]] == [series[2][0]]
    summary, problems = scan_dicom_study(tmp_path)
    assert summary["phases"] == list(DCE_PHASES) and not problems
    # explicit rules still win over the modality's default
    ct_named = read_dicom_study(tmp_path, rules=PhaseRules())
    assert list(ct_named.phases) == ["NC", "ART", "PV"]  # pre, arterial, portal venous


def test_ge_multiphase_series_are_named_by_acquisition_order(tmp_path: Path) -> None:
    series = [
        ("Ax LAVA-Flex pre", 0),
        ("Ph1/Ax LAVA-Flex MPh", 65),
        ("Ph2/Ax LAVA-Flex MPh", 105),
        ("Ph3/Ax LAVA-Flex MPh", 230),
        ("Ax LAVA-Flex 20 min HBP", 1250),
    ]
    _write_study(tmp_path, series)
    study = read_dicom_study(tmp_path)
    assert list(study.phases) == list(DCE_PHASES)
    assert study.metadata["series_descriptions"] == {
        p: d for p, (d, _) in zip(DCE_PHASES, series, strict=True)
    }
    how = study.metadata["phase_assignment"]
    assert how == {
        "PRE": "description",
        "ART": "acquisition order",
        "PV": "acquisition order",
        "TP": "acquisition order",
        "HBP": "description",
    }


def test_ct_modality_keeps_ct_rules(tmp_path: Path) -> None:
    # the same MR-style wording in a CT study is read with the CT rules
    _write_study(tmp_path, [("pre", 0), ("arterial", 40), ("portal venous", 80)], modality="CT")
    assert list(read_dicom_study(tmp_path).phases) == ["NC", "ART", "PV"]
