"""Synthetic gadoxetic-acid DCE-MRI: studies (`synth_dce_study`) and cohorts (`synth_dce_cohort`).

A study is five T1-weighted phases (PRE, ART, PV, TP, HBP) of one abdomen with one HCC, rendered
from the CT phantom's analytic anatomy and lesion shapes on per-phase grids, the anatomy displaced
by a rigid breathing shift (PV, the reference, unshifted; it carries the lesion mask). Signal is in
arbitrary units (int16): tissue and lesion signal per phase (`mri_dce_kinetics`), a per-study gain,
partial-volume blur, a smooth multiplicative coil bias and Rician noise (`mri_signal`).

The target is proliferative vs non-proliferative HCC; its correlates (size, rim arterial
enhancement, necrosis, margin, peritumoral HBP hypointensity) overlap between the classes.
`site` picks a scanner profile: "B" (3 T) differs from "A" (1.5 T) in contrast, bias, noise,
arterial timing and resolution, and draws other patients, so it can serve as an external test set.
Reference phase PV: the middle of the dynamic series, so the dynamic phases need the smallest
registration to it (HBP comes 20 min later); it is also the pipeline's default reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_dir, atomic_write_json
from liverphase.config import ConfigBase
from liverphase.errors import ConfigError
from liverphase.io.nifti import write_image
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.io.study import Study, geometry_of
from liverphase.phases import DCE_PHASES
from liverphase.synth.acquisition import MARGIN_MM, sample_grids, sample_shift
from liverphase.synth.anatomy import LESION_LABELS, N_LABELS, T
from liverphase.synth.cohort import check_output_folder
from liverphase.synth.imaging import TexturePart, add_texture
from liverphase.synth.mri_dce_kinetics import (
    DCE_CLASSES,
    PERITUMORAL,
    SITES,
    DCEPatient,
    dce_luts,
    render_dce_labels,
    sample_dce_contrast,
    sample_dce_patient,
)
from liverphase.synth.mri_dce_writers import (
    dce_case_id,
    dce_patient_id,
    plan_rows,
    write_dicom_case,
)
from liverphase.synth.mri_signal import bias_field, form_mr_image, random_bias_waves
from liverphase.synth.shapes import Domain, member

REFERENCE = "PV"
_TUMOUR = tuple(v for v in LESION_LABELS if v != T.LESION_CAPSULE)
_ACQUISITION_TRIES = 5


@dataclass
class DCESynthConfig(ConfigBase):
    """Synthetic DCE-MRI cohort settings (see `PRESETS`); sizes in (x, y, z) order, mm.

    Spacing ranges are site A's; a site scales them by its `spacing_factor` (`for_site`).
    """

    fov_mm: tuple[float, float, float] = (190.0, 160.0, 90.0)
    inplane_spacing_mm: tuple[float, float] = (1.6, 2.0)
    slice_spacing_mm: tuple[float, float] = (2.5, 3.5)
    grid_size: tuple[int, int, int] | None = None  # force every phase onto this size …
    grid_spacing_mm: tuple[float, float, float] | None = None  # … and spacing (no site scaling)
    center_on: str = "body"  # "body": FOV centred on the abdomen; "lesion": on the lesion
    blur_mm: tuple[float, float] = (0.4, 0.9)
    breathing_shift_mm: float = 8.0
    phase_z_jitter_mm: float = 2.0
    other_slice_spacing_fraction: float = 0.15  # HBP acquired at another slice spacing
    noise_scale: float = 1.0  # × the site's noise
    bias_scale: float = 1.0  # × the site's bias strength
    signal_jitter: float = 0.05  # relative sd of each tissue's signal per study
    lesion_diameter_mm: tuple[float, float] = (10.0, 56.0)
    edge_lesion_fraction: float = 0.1
    second_study_fraction: float = 0.1

    def validate(self) -> None:
        """Check ranges, names and that the largest lesion fits the field of view."""
        for name in ("inplane_spacing_mm", "slice_spacing_mm", "blur_mm", "lesion_diameter_mm"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ConfigError(f"{name} must be 0 <= low <= high, got {(lo, hi)}", name)
        if self.inplane_spacing_mm[0] <= 0 or self.slice_spacing_mm[0] <= 0:
            raise ConfigError("spacings must be positive", "spacing")
        if self.center_on not in ("body", "lesion"):
            raise ConfigError("center_on must be 'body' or 'lesion'", "center_on")
        if (self.grid_size is None) != (self.grid_spacing_mm is None):
            raise ConfigError("grid_size and grid_spacing_mm go together", "grid_size")
        for name in ("other_slice_spacing_fraction", "edge_lesion_fraction", "signal_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1]", name)
        if not 0.0 <= self.second_study_fraction <= 1.0:
            raise ConfigError("second_study_fraction must lie in [0, 1]", "second_study_fraction")
        for name in ("noise_scale", "bias_scale", "breathing_shift_mm", "phase_z_jitter_mm"):
            if not 0.0 <= getattr(self, name) <= 50.0:
                raise ConfigError(f"{name} must lie in [0, 50]", name)
        room = min(self.field_of_view()) - 2 * (self.breathing_shift_mm + MARGIN_MM)
        if self.lesion_diameter_mm[1] * 1.1 > room or self.lesion_diameter_mm[0] < 6:
            raise ConfigError(
                f"lesion_diameter_mm {self.lesion_diameter_mm} must be >= 6 and fit the field "
                f"of view {self.field_of_view()} with breathing shifts",
                "lesion_diameter_mm",
            )

    def field_of_view(self) -> tuple[float, float, float]:
        """Physical extent (x, y, z) in mm."""
        if self.grid_size is not None and self.grid_spacing_mm is not None:
            return tuple(n * s for n, s in zip(self.grid_size, self.grid_spacing_mm, strict=True))
        return self.fov_mm

    def for_site(self, site: str) -> DCESynthConfig:
        """This config with the spacing ranges of a site's scanner."""
        if site not in SITES:
            raise ConfigError(f"site must be one of {sorted(SITES)}, got {site!r}", "site")
        fxy, fz = SITES[site].spacing_factor
        xy, z = self.inplane_spacing_mm, self.slice_spacing_mm
        return self.replace(
            inplane_spacing_mm=(xy[0] * fxy, xy[1] * fxy), slice_spacing_mm=(z[0] * fz, z[1] * fz)
        )

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> DCESynthConfig:
        """A named preset with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}", "preset")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name}")


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # tests: a small FOV around the lesion and coarse voxels, about 40×40×20 voxels a phase
    "tiny": {
        "fov_mm": (84.0, 84.0, 72.0),
        "inplane_spacing_mm": (2.0, 2.4),
        "slice_spacing_mm": (3.0, 4.0),
        "lesion_diameter_mm": (10.0, 40.0),
        "center_on": "lesion",
        "breathing_shift_mm": 6.0,
    },
}


def synth_dce_study(
    rng: np.random.Generator,
    config: DCESynthConfig,
    case_id: str,
    patient_id: str,
    label: str,
    patient: DCEPatient | None = None,
    site: str = "A",
    labeled: bool = True,
) -> tuple[Study, dict[str, Any]]:
    """One 5-phase DCE-MRI study (int16) with its PV lesion mask, and the truth used to make it.

    `config` holds site A's spacings (`site` scales them); `label` is the lesion's class; with
    `labeled=False` the Study carries no label (the truth keeps it). `metadata["labels"]` holds each
    phase's tissue labels.
    """
    if label not in DCE_CLASSES:
        raise ConfigError(f"label must be one of {DCE_CLASSES}, got {label!r}", "label")
    config = config.for_site(site)  # ConfigError for an unknown site
    profile = SITES[site]
    if patient is None:
        patient = sample_dce_patient(rng, config, label)
    contrast = sample_dce_contrast(rng, profile)
    jitter = np.clip(1 + config.signal_jitter * rng.standard_normal(N_LABELS), 0.7, 1.3)
    # one draw for the liver with its peritumoral rim, and one for the tumour's sub-regions, so
    # jitter never fakes a peritumoral band or a rim-vs-core difference
    jitter[PERITUMORAL] = jitter[T.LIVER]
    jitter[list(_TUMOUR)] = jitter[T.LESION_CORE]
    gain = float(rng.uniform(*profile.gain))
    luts = dce_luts(contrast, patient.features, profile) * (jitter * gain).astype(np.float32)
    liver_pre = float(luts[0, T.LIVER])
    noise_rel = float(rng.uniform(*profile.noise)) * config.noise_scale
    sigma = noise_rel * liver_pre
    bias_strength = float(rng.uniform(*profile.bias)) * config.bias_scale
    bias_waves = random_bias_waves(rng)
    blur = float(rng.uniform(*config.blur_mm))
    for _ in range(_ACQUISITION_TRIES):
        shifts = {
            p: np.zeros(3) if p == REFERENCE else sample_shift(rng, config.breathing_shift_mm)
            for p in DCE_PHASES
        }
        grids = sample_grids(rng, config, patient.lesion, shifts, odd_phases=("HBP",))
        labels = {
            p: render_dce_labels(patient, Domain(grids[p], shift=shifts[p])) for p in DCE_PHASES
        }
        lesions = {p: member(labels[p], LESION_LABELS) for p in DCE_PHASES}
        if all(m.any() for m in lesions.values()):
            break  # a tiny lesion can fall between thick slices: draw the acquisition again
    else:
        raise RuntimeError(f"{case_id}: the lesion stays invisible in some phase")
    phases, centroids = {}, {}
    les = patient.lesion
    for k, phase in enumerate(DCE_PHASES):
        grid, domain = grids[phase], Domain(grid=grids[phase], shift=shifts[phase])
        values = luts[k][labels[phase]]
        parts = _texture_parts(patient, luts[k], phase)
        add_texture(values, labels[phase], domain, parts)
        bias = bias_field(grid, bias_waves, bias_strength)
        phases[phase] = grid.to_image(form_mr_image(values, grid.spacing, blur, bias, sigma, rng))
        where = np.argwhere(lesions[phase])[:, ::-1].mean(0)[None]
        centroids[phase] = [round(float(v), 3) for v in grid.physical(where)[0]]
    mask = lesions[REFERENCE].astype(np.uint8)
    nz = np.argwhere(mask)
    bbox = tuple(int(v) for v in (*nz.min(0), *(nz.max(0) + 1)))
    truth = {
        "case_id": case_id,
        "patient_id": patient_id,
        "label": label,
        "labeled": labeled,
        "site": site,
        "field_strength_t": profile.field_strength_t,
        "features": patient.features.truth(),
        "lesion_centre_mm": [round(float(v), 3) for v in les.centre],
        "lesion_touches_edge": les.touches_edge,
        "morphology": dict(vars(les.morph)),
        "contrast": {k: round(v, 4) for k, v in vars(contrast).items()},
        "gain": round(gain, 3),
        "liver_pre_signal": round(liver_pre, 3),
        "noise_rel": round(noise_rel, 5),
        "noise_sigma": round(sigma, 3),
        "bias_strength": round(bias_strength, 4),
        "blur_mm": round(blur, 3),
        "shifts_mm_zyx": {p: [round(float(v), 3) for v in shifts[p][::-1]] for p in DCE_PHASES},
        "lesion_centroid_mm": centroids,
        "grids": {p: geometry_of(img) for p, img in phases.items()},
    }
    study = Study(
        case_id,
        phases,
        patient_id=patient_id,
        mask=grids[REFERENCE].to_image(mask),
        label=label if labeled else None,
        bbox=bbox,
        reference_phase=REFERENCE,
        metadata={"synth": truth, "labels": labels},
    )
    return study, truth


def _texture_parts(patient: DCEPatient, lut: np.ndarray, phase: str) -> list[TexturePart]:
    """Liver parenchyma and intralesional heterogeneity, relative to their signal in the phase."""
    an, les = patient.anatomy, patient.lesion
    liver = TexturePart(
        an.liver_lo, an.liver_hi, (T.LIVER, PERITUMORAL), patient.liver_texture, float(lut[T.LIVER])
    )
    scale = float(lut[T.LESION_CORE]) * (0.6 if phase == "PRE" else 1.0)
    return [
        liver,
        TexturePart(*les.outline.bounds(2.0), LESION_LABELS, patient.lesion_texture, scale),
    ]


# ---- cohorts ---------------------------------------------------------------------------------------
def synth_dce_cohort(
    out: str | Path,
    cases: int,
    seed: int,
    unlabeled: int = 0,
    site: str = "A",
    dicom: int = 0,
    preset: str = "default",
    **overrides: Any,
) -> Path:
    """Write a synthetic DCE-MRI cohort: `cases` labeled studies (balanced proliferative /
    non-proliferative) then `unlabeled` studies with an empty label, as an nnU-Net raw dataset
    + cases.csv + synth.json; DICOM for the first `dicom` studies under OUT/dicom/{case_id}/
    (mask: OUT/dicom/{case_id}_mask.nii.gz).

    Case ids D{site}{seed}-{i:04d} and patient ids P{site}{seed}-{k:04d} never collide across
    sites or seeds. Deterministic for (seed, site): study i draws from its own generator.
    """
    out = Path(out)
    for name, value, least in (("cases", cases, 0), ("unlabeled", unlabeled, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}", name)
    if cases + unlabeled < 1:
        raise ConfigError("need at least one study (cases + unlabeled >= 1)", "cases")
    if site not in SITES:
        raise ConfigError(f"site must be one of {sorted(SITES)}, got {site!r}", "site")
    if not 0 <= dicom <= cases:
        raise ConfigError(f"dicom must lie in [0, cases={cases}]", "dicom")
    config = DCESynthConfig.preset(preset, **overrides)
    config.for_site(site)  # validate the site's spacings before writing anything
    check_output_folder(out)
    key = ord(site)
    rows = plan_rows(np.random.default_rng([seed, key, 10**6]), cases, unlabeled, config)
    patients: dict[str, DCEPatient] = {}
    truths = []
    with atomic_dir(out) as tmp:
        writer = NnUNetWriter(
            tmp,
            DCE_PHASES,
            REFERENCE,
            class_names=DCE_CLASSES,
            extra_json={"name": f"liverphase synthetic DCE-MRI site {site}", "modality": "MR"},
        )
        for i, (pk, label, follow, labeled) in enumerate(rows):
            rng = np.random.default_rng([seed, key, i])
            case_id, pid = dce_case_id(site, seed, i), dce_patient_id(site, seed, pk)
            if follow:
                patient = patients[pid].followup(rng, config.lesion_diameter_mm[1])
            else:
                patient = patients[pid] = sample_dce_patient(rng, config, label)
            study, truth = synth_dce_study(
                rng, config, case_id, pid, label, patient, site=site, labeled=labeled
            )
            vendor = str(rng.choice(SITES[site].vendors))
            truth.update(follow_up=follow, vendor=vendor)
            extra = {
                "site": site,
                "field_strength_t": truth["field_strength_t"],
                "vendor": vendor,
                "follow_up": int(follow),
                **{
                    f"shift_{p}_mm": " ".join(f"{v:g}" for v in truth["shifts_mm_zyx"][p])
                    for p in DCE_PHASES
                },
            }
            writer.add(study, extra=extra)
            if i < dicom:
                write_dicom_case(tmp / "dicom", study, rng, f"{seed}/{site}", vendor, truth)
                assert study.mask is not None
                write_image(study.mask, tmp / "dicom" / f"{case_id}_mask.nii.gz")
            truths.append(truth)
        writer.close()
        atomic_write_json(
            tmp / "synth.json",
            {
                "kind": "mri-dce",
                "seed": seed,
                "site": site,
                "site_profile": vars(SITES[site]),
                "n_cases": cases,
                "n_unlabeled": unlabeled,
                "preset": preset,
                "config": config.to_dict(),
                "cases": truths,
            },
        )
    return out
