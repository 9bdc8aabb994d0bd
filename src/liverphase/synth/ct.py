"""Synthetic multi-phase liver CT: studies (`synth_ct_study`) and cohorts (`synth_ct_cohort`).

A study is four phases (NC, ART, PV, DL) of one abdomen. Each phase is rendered analytically on
its own grid (slice spacing and z position may differ), with the anatomy displaced by a rigid
breathing shift; PV is the reference (unshifted) and carries the lesion mask. Images are int16 HU
with partial-volume blur and correlated Gaussian noise, clipped at -1024.

Breathing shifts are recorded in `cases.csv` as `shift_<PHASE>_mm = "dz dy dx"`: the displacement
of the anatomy in that phase relative to PV, in physical LPS mm listed in numpy (z, y, x) order like
the bbox (dz > 0: the anatomy sits more superior). A lesion at physical point p in PV is at
p + (dx, dy, dz) in that phase. `synth.json` holds the full truth per case (contrast, variant,
grids, lesion centre and per-phase lesion centroid, flips).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_dir, atomic_write_json
from liverphase.config import ConfigBase
from liverphase.errors import ConfigError
from liverphase.io.nifti import write_image
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.study import Study, geometry_of
from liverphase.phases import CT_PHASES
from liverphase.synth.acquisition import MARGIN_MM, sample_grids, sample_shift
from liverphase.synth.anatomy import LESION_LABELS, Anatomy, T, render_labels, sample_anatomy
from liverphase.synth.cohort import check_output_folder, plan_patients
from liverphase.synth.imaging import TexturePart, add_texture, form_image
from liverphase.synth.kinetics import (
    CLASSES_2,
    CLASSES_5,
    DIFFICULTIES,
    LesionProfile,
    lesion_diameter_limit,
    phase_luts,
    sample_contrast,
    sample_lesion_profile,
)
from liverphase.synth.lesion import Lesion, place_lesion
from liverphase.synth.shapes import Domain, Waves, member
from liverphase.synth.writers import CT_SERIES_DESCRIPTIONS, write_dicom_study

REFERENCE = "PV"
_ACQUISITION_TRIES = 5


@dataclass
class CTSynthConfig(ConfigBase):
    """Synthetic CT cohort settings (see `PRESETS`); sizes in (x, y, z) order, mm."""

    fov_mm: tuple[float, float, float] = (240.0, 200.0, 96.0)
    inplane_spacing_mm: tuple[float, float] = (0.6, 1.8)
    slice_spacing_mm: tuple[float, float] = (1.0, 5.0)
    grid_size: tuple[int, int, int] | None = None  # force every phase onto this size …
    grid_spacing_mm: tuple[float, float, float] | None = None  # … and spacing
    center_on: str = "body"  # "body": FOV centred on the abdomen; "lesion": on the lesion
    noise_hu: tuple[float, float] = (10.0, 20.0)
    blur_mm: tuple[float, float] = (0.4, 0.9)  # in-plane Gaussian sigma; z: 0.35 × slice spacing
    breathing_shift_mm: float = 10.0
    phase_z_jitter_mm: float = 8.0
    other_slice_spacing_fraction: float = 0.25
    flip_fraction: float = 0.2
    second_study_fraction: float = 0.15
    lesion_diameter_mm: tuple[float, float] = (8.0, 60.0)
    edge_lesion_fraction: float = 0.15
    difficulty: str = "realistic"
    classes: int = 2
    atypical_fraction: float = 0.2
    # lesion structure: the normalised depth of the lesion's central region, drawn per lesion from
    # this range (None: each class's own; HCC and ICC 0.45). Other values test whether a model's
    # region reading merely matches the phantom's constant.
    center_frac: tuple[float, float] | None = None

    def validate(self) -> None:
        """Check ranges, names and that the largest lesion fits the field of view."""
        for name in (
            "inplane_spacing_mm",
            "slice_spacing_mm",
            "noise_hu",
            "blur_mm",
            "lesion_diameter_mm",
        ):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ConfigError(f"{name} must be 0 <= low <= high, got {(lo, hi)}", name)
        if self.inplane_spacing_mm[0] <= 0 or self.slice_spacing_mm[0] <= 0:
            raise ConfigError("spacings must be positive", "spacing")
        if self.difficulty not in DIFFICULTIES:
            raise ConfigError(f"difficulty must be one of {DIFFICULTIES}", "difficulty")
        if self.classes not in (2, 5):
            raise ConfigError("classes must be 2 (HCC, ICC) or 5", "classes")
        if self.center_frac is not None and not 0 < self.center_frac[0] <= self.center_frac[1] < 1:
            raise ConfigError(
                f"center_frac must be 0 < low <= high < 1, got {self.center_frac}", "center_frac"
            )
        if self.center_on not in ("body", "lesion"):
            raise ConfigError("center_on must be 'body' or 'lesion'", "center_on")
        if (self.grid_size is None) != (self.grid_spacing_mm is None):
            raise ConfigError("grid_size and grid_spacing_mm go together", "grid_size")
        for name in (
            "flip_fraction",
            "second_study_fraction",
            "edge_lesion_fraction",
            "atypical_fraction",
            "other_slice_spacing_fraction",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1]", name)
        room = min(self.field_of_view()) - 2 * (self.breathing_shift_mm + MARGIN_MM)
        if self.lesion_diameter_mm[1] * 1.1 > room or self.lesion_diameter_mm[0] < 4:
            raise ConfigError(
                f"lesion_diameter_mm {self.lesion_diameter_mm} must be >= 4 and fit the field "
                f"of view {self.field_of_view()} with breathing shifts",
                "lesion_diameter_mm",
            )

    def field_of_view(self) -> tuple[float, float, float]:
        """Physical extent (x, y, z) in mm."""
        if self.grid_size is not None and self.grid_spacing_mm is not None:
            return tuple(n * s for n, s in zip(self.grid_size, self.grid_spacing_mm, strict=True))
        return self.fov_mm

    @property
    def class_names(self) -> tuple[str, ...]:
        """Lesion classes of the cohort."""
        return CLASSES_2 if self.classes == 2 else CLASSES_5

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> CTSynthConfig:
        """A named preset with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}", "preset")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name}")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # tests: a small FOV around the lesion, coarse voxels, ≤ 48×48×29 voxels a phase
    "tiny": {
        "fov_mm": (84.0, 84.0, 72.0),
        "inplane_spacing_mm": (1.8, 2.0),
        "slice_spacing_mm": (2.5, 3.0),
        "lesion_diameter_mm": (10.0, 30.0),
        "center_on": "lesion",
        "breathing_shift_mm": 6.0,
        "phase_z_jitter_mm": 4.0,
    },
}


@dataclass
class CTPatient:
    """What stays fixed across a patient's studies: anatomy, lesion, its class profile, textures."""

    anatomy: Anatomy
    lesion: Lesion
    profile: LesionProfile
    liver_texture: Waves
    lesion_texture: Waves

    def followup(self, rng: np.random.Generator, max_diameter: float) -> CTPatient:
        """The same patient later: the lesion grown by up to 25 %."""
        grow = min(rng.uniform(1.0, 1.25), max_diameter / (2 * self.lesion.radius))
        return CTPatient(
            self.anatomy,
            self.lesion.scaled(max(grow, 1.0)),
            self.profile,
            self.liver_texture,
            self.lesion_texture,
        )


def sample_lesion_draws(
    rng: np.random.Generator, config: CTSynthConfig, label: str
) -> tuple[LesionProfile, float]:
    """A lesion's profile (variant, shape, kinetics) and diameter in mm (log-uniform, capped per variant)."""
    lo, hi = config.lesion_diameter_mm
    diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    profile = sample_lesion_profile(
        rng, label, config.difficulty, config.atypical_fraction, diameter
    )
    limit = lesion_diameter_limit(label, profile.variant)
    if limit is not None and diameter > limit:
        diameter = float(rng.uniform(lo, max(lo, min(limit, hi))))
    return profile, diameter


def sample_patient(rng: np.random.Generator, config: CTSynthConfig, label: str) -> CTPatient:
    """A random abdomen with one lesion of class `label`."""
    anatomy = sample_anatomy(rng)
    profile, diameter = sample_lesion_draws(rng, config, label)
    touch = bool(rng.random() < config.edge_lesion_fraction)
    morph = profile.morph
    if config.center_frac is not None:
        # drawn from a copy of the stream: every other draw of the cohort stays as it was, so a
        # cohort with other structure is the same patients and lesions, paired
        draw = copy.deepcopy(rng).uniform(*config.center_frac)
        morph = replace(morph, center_frac=float(draw))
        profile = replace(profile, morph=morph)
    lesion = place_lesion(rng, anatomy, diameter, morph, touch_edge=touch)
    return CTPatient(
        anatomy,
        lesion,
        profile,
        Waves.random(rng, 6, (10, 40), 3.5),
        Waves.random(rng, 8, (3, 12), profile.texture_hu),
    )


def synth_ct_study(
    rng: np.random.Generator,
    config: CTSynthConfig,
    case_id: str,
    patient_id: str,
    label: str,
    patient: CTPatient | None = None,
) -> tuple[Study, dict[str, Any]]:
    """One 4-phase CT study (int16 HU) with its PV lesion mask, and the truth used to make it."""
    if patient is None:
        patient = sample_patient(rng, config, label)
    contrast = sample_contrast(rng, config.difficulty)
    luts = phase_luts(contrast, patient.profile)
    noise = float(rng.uniform(*config.noise_hu))
    blur = float(rng.uniform(*config.blur_mm))
    for _ in range(_ACQUISITION_TRIES):
        shifts = {
            p: np.zeros(3) if p == REFERENCE else sample_shift(rng, config.breathing_shift_mm)
            for p in CT_PHASES
        }
        grids = sample_grids(rng, config, patient.lesion, shifts)
        labels = {
            p: render_labels(patient.anatomy, patient.lesion, Domain(grids[p], shift=shifts[p]))
            for p in CT_PHASES
        }
        lesions = {p: member(labels[p], LESION_LABELS) for p in CT_PHASES}
        if all(m.any() for m in lesions.values()):
            break  # a tiny lesion can fall between thick slices: draw the acquisition again
    else:
        raise RuntimeError(f"{case_id}: the lesion stays invisible in some phase")
    phases, centroids = {}, {}
    for k, phase in enumerate(CT_PHASES):
        grid, domain = grids[phase], Domain(grid=grids[phase], shift=shifts[phase])
        hu = luts[k][labels[phase]]
        add_texture(hu, labels[phase], domain, _texture_parts(patient, enhanced=phase != "NC"))
        phases[phase] = grid.to_image(form_image(hu, grid.spacing, blur, noise, rng))
        where = np.argwhere(lesions[phase])[:, ::-1].mean(0)[None]
        centroids[phase] = grid.physical(where)[0].tolist()
    mask = lesions[REFERENCE].astype(np.uint8)
    nz = np.argwhere(mask)
    bbox = tuple(int(v) for v in (*nz.min(0), *(nz.max(0) + 1)))
    truth = {
        "case_id": case_id,
        "patient_id": patient_id,
        "label": label,
        "variant": patient.profile.variant,
        "difficulty": config.difficulty,
        "lesion_diameter_mm": round(2 * patient.lesion.radius, 2),
        "lesion_centre_mm": [round(v, 3) for v in patient.lesion.centre],
        "lesion_touches_edge": patient.lesion.touches_edge,
        "morphology": dict(vars(patient.lesion.morph)),
        "contrast": dict(vars(contrast)),
        "noise_hu": round(noise, 2),
        "blur_mm": round(blur, 3),
        "shifts_mm_zyx": {p: [round(float(v), 3) for v in shifts[p][::-1]] for p in CT_PHASES},
        "lesion_centroid_mm": centroids,
        "grids": {p: geometry_of(img) for p, img in phases.items()},
    }
    study = Study(
        case_id,
        phases,
        patient_id=patient_id,
        mask=grids[REFERENCE].to_image(mask),
        label=label,
        bbox=bbox,
        reference_phase=REFERENCE,
        metadata={"synth": truth},
    )
    return study, truth


def _texture_parts(patient: CTPatient, enhanced: bool) -> list[TexturePart]:
    """Liver parenchyma and intralesional heterogeneity (weaker before contrast)."""
    an, les = patient.anatomy, patient.lesion
    return [
        TexturePart(an.liver_lo, an.liver_hi, (T.LIVER,), patient.liver_texture),
        TexturePart(
            *les.outline.bounds(2.0),
            LESION_LABELS,
            patient.lesion_texture,
            1.0 if enhanced else 0.6,
        ),
    ]


# ---- cohorts ---------------------------------------------------------------------------------------
def synth_ct_cohort(
    out: str | Path,
    cases: int,
    seed: int,
    classes: int = 2,
    dicom: int = 0,
    difficulty: str = "realistic",
    preset: str = "default",
    **overrides: Any,
) -> Path:
    """Write a synthetic CT cohort: nnU-Net layout + cases.csv + synth.json, and DICOM for the
    first `dicom` cases under OUT/dicom/{case_id}/ (mask: OUT/dicom/{case_id}_mask.nii.gz).

    Deterministic for a seed: case i draws from its own generator seeded by (seed, i).
    """
    out = Path(out)
    if cases < 1:
        raise ConfigError("cases must be at least 1", "cases")
    if not 0 <= dicom <= cases:
        raise ConfigError(f"dicom must lie in [0, cases={cases}]", "dicom")
    config = CTSynthConfig.preset(preset, classes=classes, difficulty=difficulty, **overrides)
    check_output_folder(out)
    plan = plan_patients(
        np.random.default_rng([seed, 10**6]),
        cases,
        config.class_names,
        config.second_study_fraction,
    )
    rows = [(f"CT{i:04d}", f"P{p:04d}", label, follow) for i, (p, label, follow) in enumerate(plan)]
    patients: dict[str, CTPatient] = {}
    truths = []
    with atomic_dir(out) as tmp:
        writer = NnUNetWriter(
            tmp,
            CT_PHASES,
            REFERENCE,
            class_names=config.class_names,
            extra_json={"name": "liverphase synthetic CT", "modality": "CT"},
        )
        for i, (case_id, pid, label, follow) in enumerate(rows):
            rng = np.random.default_rng([seed, i])
            if follow:
                patient = patients[pid].followup(rng, config.lesion_diameter_mm[1])
            else:
                patient = patients[pid] = sample_patient(rng, config, label)
            study, truth = synth_ct_study(rng, config, case_id, pid, label, patient)
            flip: tuple[int, ...] = ()
            if rng.random() < config.flip_fraction:
                flip = tuple(int(a) for a in [(0,), (1,), (2,), (0, 1)][rng.integers(4)])
            truth["flip_axes"] = list(flip)
            extra = {
                f"shift_{p}_mm": " ".join(f"{v:g}" for v in truth["shifts_mm_zyx"][p])
                for p in CT_PHASES
            }
            extra.update(variant=truth["variant"], flip_axes=" ".join(map(str, flip)))
            writer.add(study, flip_axes=flip, extra=extra)
            if i < dicom:
                _write_dicom_case(tmp / "dicom", study, rng, seed)
            truths.append(truth)
        writer.close()
        atomic_write_json(
            tmp / "synth.json",
            {
                "kind": "ct",
                "seed": seed,
                "n_cases": cases,
                "config": config.to_dict(),
                "cases": truths,
            },
        )
    return out


def _write_dicom_case(root: Path, study: Study, rng: np.random.Generator, seed: int) -> None:
    t0 = float(rng.uniform(8 * 3600, 17 * 3600))
    offsets = np.cumsum([0.0, rng.uniform(60, 90), rng.uniform(30, 45), rng.uniform(120, 180)])
    times = {p: t0 + float(o) for p, o in zip(CT_PHASES, offsets, strict=True)}
    birth = f"{rng.integers(1935, 1990)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    write_dicom_study(
        study,
        root / study.case_id,
        rng,
        descriptions=CT_SERIES_DESCRIPTIONS,
        patient_name=f"SYNTH^PATIENT^{study.patient_id}",
        birth_date=birth,
        acquisition_seconds=times,
        uid_seed=f"{seed}/{study.case_id}",
    )
    assert study.mask is not None
    write_image(study.mask, root / f"{study.case_id}_mask.nii.gz")
