"""Synthetic T1W/T2W liver MRI for cirrhosis staging: studies and cohorts (`synth_cirrhosis_cohort`).

A study is one MRI examination of one patient: T1W and/or T2W of the whole liver (plus spleen and
some surroundings). Each sequence has its own grid (in-plane 1.2-2 mm, its own slice thickness and
field of view) and sees the anatomy displaced by a small rigid shift relative to the reference
sequence (T1W when present, else T2W), which carries the binary liver mask. Signal is in arbitrary
units (int16): a tissue table per sequence, scaled by a per-study gain, partial-volume blur, a smooth
multiplicative bias field (stronger on the 3 T "scanners"), and Rician noise (the magnitude of
complex Gaussian noise, so the background is positive), formed by `synth.mri_signal`. The
stage-dependent anatomy and the tissue signals are in `cirrhosis_anatomy`; `synth.json` holds every
feature's truth per case, and cases.csv gains the columns stage, sequences, reference, scanner,
field_strength, follow_up and shift_T2W_mm (the anatomy's displacement in T2W relative to T1W,
"dz dy dx" in LPS mm, as the CT phantom's shift columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_dir, atomic_write_json
from liverphase.config import ConfigBase
from liverphase.errors import ConfigError
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.study import Study, geometry_of
from liverphase.synth.acquisition import sample_shift
from liverphase.synth.anatomy import T
from liverphase.synth.cirrhosis_anatomy import (
    ASCITES,
    LIVER_LABELS,
    SEQUENCES,
    STAGES,
    CirrhosisPatient,
    build_patient,
    render,
    sample_features,
    signal_table,
)
from liverphase.synth.cohort import check_output_folder, plan_patients
from liverphase.synth.imaging import TexturePart, add_texture
from liverphase.synth.mri_signal import bias_field, form_mr_image, random_bias_waves
from liverphase.synth.shapes import Domain, Grid, member

CIRRHOSIS_STAGES = STAGES[1:]

# name: field strength (T), bias-field strength range (log units), noise multiplier
SCANNERS: dict[str, tuple[float, tuple[float, float], float]] = {
    "A15": (1.5, (0.04, 0.12), 1.25),
    "B15": (1.5, (0.08, 0.18), 1.0),
    "C30": (3.0, (0.18, 0.35), 0.75),
    "D30": (3.0, (0.25, 0.45), 0.85),
}


@dataclass
class CirrhosisSynthConfig(ConfigBase):
    """Synthetic cirrhosis MRI settings (see `PRESETS`); spacings and margins in mm."""

    inplane_spacing_mm: tuple[float, float] = (1.2, 2.0)
    t1w_slice_mm: tuple[float, float] = (1.5, 4.0)  # 3D gradient echo
    t2w_slice_mm: tuple[float, float] = (3.0, 6.0)  # 2D fast spin echo
    fov_margin_mm: tuple[float, float] = (8.0, 30.0)  # around liver + spleen, per side
    shift_mm: float = 4.0  # largest rigid T2W-vs-T1W displacement (mostly cranio-caudal)
    blur_mm: tuple[float, float] = (0.4, 0.9)  # in-plane Gaussian sigma; z: 0.35 × slice
    noise: tuple[float, float] = (0.02, 0.06)  # Rician sigma / the sequence's liver signal
    gain: tuple[float, float] = (0.6, 1.6)  # arbitrary-unit scale per study
    bias_scale: float = 1.0  # multiplies every scanner's bias-field strength (0: no bias)
    signal_jitter: float = 0.08  # relative sd of each tissue's signal per study
    sequence_mix: tuple[float, float, float] = (0.5, 0.3, 0.2)  # both, T1W only, T2W only
    second_study_fraction: float = 0.1
    severity_sd: float = 0.35  # latent severity = stage + N(0, severity_sd)
    healthy_sd: float = 0.2
    ascites_onset: float = 2.6  # severity where half the patients have ascites

    def validate(self) -> None:
        """Check ranges and that the sequence mix is a distribution."""
        ranges = ("inplane_spacing_mm", "t1w_slice_mm", "t2w_slice_mm", "fov_margin_mm")
        for name in (*ranges, "blur_mm", "noise", "gain"):
            lo, hi = getattr(self, name)
            positive = name in ranges[:3] or name == "gain"
            if not 0 <= lo <= hi or (positive and lo <= 0):
                raise ConfigError(f"{name} must be 0 <= low <= high, got {(lo, hi)}", name)
        mix = self.sequence_mix
        if min(mix) < 0 or abs(sum(mix) - 1.0) > 1e-6:
            raise ConfigError(f"sequence_mix must be 3 shares >= 0 summing to 1, got {mix}", "mix")
        for name in ("second_study_fraction", "signal_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1]", name)
        for name in ("shift_mm", "severity_sd", "healthy_sd", "bias_scale"):
            if not 0.0 <= getattr(self, name) <= 20.0:
                raise ConfigError(f"{name} must lie in [0, 20]", name)

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> CirrhosisSynthConfig:
        """A named preset with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}", "preset")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name}")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # tests: coarse voxels and a tight field of view, about 60k voxels a sequence
    "tiny": {
        "inplane_spacing_mm": (3.5, 4.0),
        "t1w_slice_mm": (5.0, 6.0),
        "t2w_slice_mm": (5.0, 6.0),
        "fov_margin_mm": (2.0, 8.0),
    },
}


def sample_patient(
    rng: np.random.Generator, config: CirrhosisSynthConfig, stage: int
) -> CirrhosisPatient:
    """A random patient of a stage (0 healthy ... 3 severe): latent severity, features, anatomy."""
    if stage not in range(len(STAGES)):
        raise ConfigError(f"stage must be 0-{len(STAGES) - 1}, got {stage}", "stage")
    features = sample_features(
        rng, stage, config.severity_sd, config.healthy_sd, config.ascites_onset
    )
    return build_patient(rng, features)


def draw_sequences(
    rng: np.random.Generator, mix: Sequence[float] = (0.5, 0.3, 0.2)
) -> tuple[str, ...]:
    """The sequences of one study: both, T1W only or T2W only with probabilities `mix`."""
    return (("T1W", "T2W"), ("T1W",), ("T2W",))[int(rng.choice(3, p=np.asarray(mix)))]


def _grid(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    spacing: Sequence[float],
    margin: tuple[float, float],
) -> Grid:
    """An axial grid covering [lo, hi] (physical mm) plus a random margin on each side."""
    lo = lo - rng.uniform(*margin, 3)
    hi = hi + rng.uniform(*margin, 3)
    size = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / np.asarray(spacing)), 1))
    return Grid(size, tuple(float(s) for s in spacing), tuple(round(float(v), 3) for v in lo))


def synth_cirrhosis_study(
    rng: np.random.Generator,
    config: CirrhosisSynthConfig,
    case_id: str,
    patient_id: str,
    stage: int,
    patient: CirrhosisPatient | None = None,
    sequences: Sequence[str] | None = None,
) -> tuple[Study, dict[str, Any]]:
    """One MRI study (T1W and/or T2W, int16) with its liver mask on the reference sequence's grid,
    and the truth used to make it. `metadata["labels"]` keeps each sequence's tissue labels."""
    if stage not in range(len(STAGES)):
        raise ConfigError(f"stage must be 0-{len(STAGES) - 1}, got {stage}", "stage")
    if patient is None:
        patient = sample_patient(rng, config, stage)
    if sequences is None:
        sequences = draw_sequences(rng, config.sequence_mix)
    sequences = [s for s in SEQUENCES if s in sequences]
    if not sequences:
        raise ConfigError("a study needs at least one of T1W, T2W", "sequences")
    reference = sequences[0]
    scanner = str(rng.choice(sorted(SCANNERS)))
    tesla, bias_range, noise_scale = SCANNERS[scanner]
    gain = float(rng.uniform(*config.gain))
    bias_strength = float(rng.uniform(*bias_range)) * config.bias_scale
    coil = random_bias_waves(rng)  # one receive-coil profile for every sequence of the study
    images, labels_of, truth_seq = {}, {}, {}
    for seq in sequences:
        shift = np.zeros(3) if seq == reference else sample_shift(rng, config.shift_mm)
        lo_mm, hi_mm = config.t1w_slice_mm if seq == "T1W" else config.t2w_slice_mm
        sxy = round(float(rng.uniform(*config.inplane_spacing_mm)), 3)
        thick = float(rng.uniform(lo_mm, hi_mm))
        rounded = round(thick * 2) / 2  # protocols use half-millimetre steps
        spacing = (sxy, sxy, rounded if lo_mm <= rounded <= hi_mm else round(thick, 3))
        grid = _grid(
            rng, patient.box_lo + shift, patient.box_hi + shift, spacing, config.fov_margin_mm
        )
        domain = Domain(grid=grid, shift=shift)
        labels = render(patient, domain)
        jitter = 1 + config.signal_jitter * rng.standard_normal(256).astype(np.float32)
        table = signal_table(seq) * np.clip(jitter, 0.5, 1.5) * np.float32(gain)
        values = table[labels]
        an = patient.anatomy
        liver_signal = float(table[T.LIVER])
        texture = TexturePart(
            an.liver_lo, an.liver_hi, LIVER_LABELS, patient.liver_texture, liver_signal
        )
        add_texture(values, labels, domain, [texture])
        blur = float(rng.uniform(*config.blur_mm))
        sigma = float(rng.uniform(*config.noise)) * noise_scale * liver_signal
        bias = bias_field(grid, coil, bias_strength)
        images[seq] = grid.to_image(form_mr_image(values, grid.spacing, blur, bias, sigma, rng))
        labels_of[seq] = labels
        truth_seq[seq] = {
            "shift_mm_zyx": [round(float(v), 3) for v in shift[::-1]],
            "noise_sigma": round(sigma, 3),
            "liver_signal": round(liver_signal, 2),
            "blur_mm": round(blur, 3),
            "grid": geometry_of(images[seq]),
        }
    ref_labels = labels_of[reference]
    mask = member(ref_labels, LIVER_LABELS).astype(np.uint8)
    voxel_ml = float(np.prod(images[reference].GetSpacing())) / 1000
    label = STAGES[stage]
    truth = {
        "case_id": case_id,
        "patient_id": patient_id,
        "label": label,
        **patient.truth(),
        "liver_volume_ml": round(float(mask.sum()) * voxel_ml, 1),
        "ascites_volume_ml": round(float((ref_labels == ASCITES).sum()) * voxel_ml, 1),
        "sequences": sequences,
        "reference": reference,
        "scanner": scanner,
        "field_strength_t": tesla,
        "gain": round(gain, 4),
        "bias_strength": round(bias_strength, 4),
        "per_sequence": truth_seq,
    }
    study = Study(
        case_id,
        images,
        patient_id=patient_id,
        mask=Grid.of(images[reference]).to_image(mask),
        label=label,
        reference_phase=reference,
        metadata={"synth": truth, "labels": labels_of},
    )
    return study, truth


# ---- cohorts ---------------------------------------------------------------------------------------
def synth_cirrhosis_cohort(
    out: str | Path,
    cases: int,
    seed: int,
    healthy: int = 0,
    preset: str = "default",
    **overrides: Any,
) -> Path:
    """Write a synthetic T1W/T2W cirrhosis cohort: nnU-Net layout (liver masks) + cases.csv +
    synth.json. `cases` studies balanced over mild/moderate/severe, then `healthy` controls.

    Deterministic for a seed: case i draws from its own generator seeded by (seed, i).
    """
    out = Path(out)
    for name, value, least in (("cases", cases, 1), ("healthy", healthy, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}", name)
    config = CirrhosisSynthConfig.preset(preset, **overrides)
    check_output_folder(out)
    second = config.second_study_fraction
    staged = plan_patients(np.random.default_rng([seed, 10**6]), cases, CIRRHOSIS_STAGES, second)
    first = len({p for p, _, _ in staged})
    controls = plan_patients(
        np.random.default_rng([seed, 10**6 + 1]), healthy, ("healthy",), second
    )
    rows = [(f"P{p:04d}", label, follow) for p, label, follow in staged]
    rows += [(f"P{first + p:04d}", label, follow) for p, label, follow in controls]
    class_names = list(STAGES) if healthy else list(CIRRHOSIS_STAGES)
    patients: dict[str, CirrhosisPatient] = {}
    truths = []
    with atomic_dir(out) as tmp:
        writer = NnUNetWriter(
            tmp,
            SEQUENCES,
            "T1W",
            labels={"background": 0, "liver": 1},
            class_names=class_names,
            extra_json={
                "modality": "MR",
                "roi": "organ",
                "ordinal": True,
            },
            allow_missing=True,
        )
        for i, (pid, label, follow) in enumerate(rows):
            rng = np.random.default_rng([seed, i])
            stage = STAGES.index(label)
            if not follow:
                patients[pid] = sample_patient(rng, config, stage)
            case_id = f"MR{i:04d}"
            study, truth = synth_cirrhosis_study(rng, config, case_id, pid, stage, patients[pid])
            truth["follow_up"] = follow
            extra = {
                "stage": stage,
                "sequences": " ".join(truth["sequences"]),
                "reference": truth["reference"],
                "scanner": truth["scanner"],
                "field_strength": truth["field_strength_t"],
                "follow_up": int(follow),
            }
            if len(truth["sequences"]) == 2:
                shift = truth["per_sequence"]["T2W"]["shift_mm_zyx"]
                extra["shift_T2W_mm"] = " ".join(f"{v:g}" for v in shift)
            writer.add(study, extra=extra)
            truths.append(truth)
        writer.close()
        atomic_write_json(
            tmp / "synth.json",
            {
                "kind": "mri-cirrhosis",
                "seed": seed,
                "n_cases": cases,
                "n_healthy": healthy,
                "preset": preset,
                "config": config.to_dict(),
                "cases": truths,
            },
        )
    return out
