"""Contrast kinetics: HU of every tissue and lesion sub-region in each CT phase (NC, ART, PV, DL).

Tissue values follow textbook multi-phase liver CT (liver about 55/75/115/95 HU, aorta about
40/300/160/120). Each study draws a bolus strength (scales every enhancement) and an arterial
timing (0 = early arterial: aorta very bright, liver and tumours less enhanced; 1 = late arterial),
so absolute lesion HU shifts from study to study and the signal lives in the lesion relative to the
liver in the same phase, and in the spatial pattern (rim vs core, capsule, mosaic, nodules).

Each lesion class draws its parameters from ranges; `difficulty="easy"` narrows the ranges around
their centres, fixes the timing late-arterial and has no atypical lesions; `"realistic"` uses the
full ranges and an atypical share (HCC without washout or hypo-enhancing, small ICC with diffuse
arterial enhancement, flash-filling hemangioma, proteinaceous cyst, hypervascular metastasis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from liverphase.phases import CT_PHASES
from liverphase.synth.anatomy import N_LABELS, T
from liverphase.synth.lesion import LesionMorphology

CLASSES_2: tuple[str, ...] = ("HCC", "ICC")
CLASSES_5: tuple[str, ...] = ("HCC", "ICC", "hemangioma", "cyst", "metastasis")
DIFFICULTIES = ("easy", "realistic")

# Tissue: NC HU, then enhancement above NC at bolus 1: ART (early), ART (late), PV, DL.
TISSUES: dict[int, tuple[float, float, float, float, float]] = {
    T.AIR: (-1000, 0, 0, 0, 0),
    T.FAT: (-100, 0, 0, 2, 2),
    T.MUSCLE: (50, 3, 8, 15, 12),
    T.VISCERAL_FAT: (-90, 0, 0, 2, 2),
    T.LUNG: (-850, 0, 0, 0, 0),
    T.BOWEL: (35, 5, 25, 50, 35),
    T.LIVER: (55, 8, 25, 60, 40),  # NC replaced by the study's liver_nc
    T.GALLBLADDER: (8, 0, 0, 0, 0),
    T.PORTAL_BRANCH: (40, 20, 120, 140, 90),
    T.HEPATIC_VEIN: (40, 5, 25, 120, 85),
    T.DUCT: (10, 0, 0, 0, 0),
    T.SPLEEN: (45, 35, 75, 75, 55),
    T.KIDNEY_CORTEX: (35, 110, 160, 140, 110),
    T.KIDNEY_MEDULLA: (30, 15, 50, 130, 140),
    T.KIDNEY_SINUS: (-90, 0, 0, 0, 0),
    T.IVC: (40, 10, 60, 115, 85),
    T.PORTAL_VEIN: (40, 30, 130, 140, 90),
    T.AORTA: (40, 320, 220, 120, 80),
    T.BONE_CORTEX: (750, 0, 0, 0, 0),
    T.BONE_MARROW: (220, 5, 10, 15, 10),
    T.DISC: (85, 0, 2, 5, 5),
    T.CANAL: (15, 0, 0, 0, 0),
}


@dataclass(frozen=True)
class Contrast:
    """Per-study contrast: bolus strength, arterial timing (0 early … 1 late), unenhanced liver HU."""

    bolus: float = 1.0
    timing: float = 1.0
    liver_nc: float = 55.0

    def enhancement(self, tissue: int) -> np.ndarray:
        """Enhancement above NC per phase (NC, ART, PV, DL) at bolus 1."""
        _, early, late, pv, dl = TISSUES[tissue]
        return np.array([0.0, early + (late - early) * self.timing, pv, dl])

    @property
    def arterial(self) -> float:
        """Tumour arterial supply factor: peaks in the late arterial phase."""
        return 0.45 + 0.55 * self.timing


def sample_contrast(rng: np.random.Generator, difficulty: str) -> Contrast:
    """A study's bolus, timing and liver attenuation."""
    if difficulty == "easy":
        return Contrast(rng.uniform(0.92, 1.08), rng.uniform(0.8, 1.0), rng.uniform(52, 58))
    return Contrast(rng.uniform(0.7, 1.3), rng.uniform(0.0, 1.0), rng.uniform(40, 65))


@dataclass
class LesionProfile:
    """A lesion's class, variant ("typical" or the atypical kind), shape and kinetic parameters."""

    label: str
    variant: str
    morph: LesionMorphology
    params: dict[str, float] = field(default_factory=dict)
    texture_hu: float = 5.0


class _Draw:
    """Draws parameters from [lo, hi], narrowed around the centre by the difficulty's spread."""

    def __init__(self, rng: np.random.Generator, spread: float) -> None:
        self.rng, self.spread = rng, spread

    def __call__(self, lo: float, hi: float) -> float:
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * self.spread
        return float(self.rng.uniform(mid - half, mid + half))

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def count(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


# ---- per-class parameter sampling ----------------------------------------------------------------
def _hcc(d: _Draw, atypical: bool, diameter: float) -> tuple[str, LesionMorphology, dict]:
    p = {
        "nc_off": d(-18, -2),
        "art": d(20, 95),
        "wo_pv": d(-5, 38),
        "wo_dl": d(-8, 40),
        "rim_art": 0.0,
        "cap_pv": d(8, 25),
        "cap_dl": d(15, 35),
        "mos_art": d(10, 35),
        "mos_b_nc": d(-35, -10),
    }
    variant = "typical"
    if atypical:
        # no washout (mimics the diffuse-arterial ICC), or hypo-enhancing with peripheral
        # enhancement and no washout (scirrhous / well-differentiated: mimics a typical ICC)
        variant = "no-washout" if d.chance(0.4) else "hypo-enhancing"
        if variant == "no-washout":
            p.update(wo_pv=d(-12, 4), wo_dl=d(-10, 6))
        else:
            p.update(art=d(0, 20), rim_art=d(15, 40), wo_pv=d(-5, 15), wo_dl=d(-15, 5))
    easy = d.spread < 1
    morph = LesionMorphology(
        lobulation=d(0.02, 0.08),
        rim_mm=d(2, 4),
        capsule_mm=d(1.0, 2.2) if d.chance(0.7 if easy else 0.5) else 0.0,
        mosaic=d.count(3, 7) if d.chance(0.6 if diameter > 30 else 0.3) else 0,
        ducts=1 if (not easy and d.chance(0.05)) else 0,
    )
    return variant, morph, p


def _icc(d: _Draw, atypical: bool, diameter: float) -> tuple[str, LesionMorphology, dict]:
    p = {
        "nc_off": d(-20, -4),
        "rim_art": d(0, 40),
        "rim_pv": d(-10, 8),
        "rim_dl": d(-8, 8),
        "core_art": d(0, 40),
        "core_pv": d(15, 60),
        "core_dl": d(20, 80),
        "center_dl": d(0, 15),
    }
    variant = "typical"
    if atypical:
        # small ICC with diffuse arterial enhancement, persistent or washing out (HCC mimic)
        variant = "diffuse-arterial"
        washout = d.chance(0.5)
        p.update(
            diffuse_art=d(40, 75),
            diffuse_pv=d(-25, -5) if washout else d(-4, 10),
            diffuse_dl=d(-25, -5) if washout else d(2, 18),
        )
    easy = d.spread < 1
    morph = LesionMorphology(
        lobulation=d(0.08, 0.2) if not atypical else d(0.05, 0.15),
        rim_mm=d(3, 7),
        mosaic=d.count(2, 3) if (not easy and diameter > 35 and d.chance(0.15)) else 0,
        ducts=d.count(1, 3) if d.chance(0.3 if atypical else 0.45) else 0,
    )
    return variant, morph, p


def _hemangioma(d: _Draw, atypical: bool, diameter: float) -> tuple[str, LesionMorphology, dict]:
    p = {
        "nc_abs": 40 + d(-8, 2),
        "nod": d(0.75, 0.95),
        "rim_art": d(0.05, 0.25),
        "rim_pv": d(0.6, 0.95),
        "core_pv": d(0.3, 0.7),
        "core_dl": d(0.75, 1.0),
        "center_pv": d(0.05, 0.35),
        "center_dl": d(0.3, 1.0),
    }
    variant = "typical"
    if atypical:
        variant = "flash-filling"
        p.update(rim_art=d(0.8, 1.0), core_art=d(0.8, 1.0))
    morph = LesionMorphology(lobulation=d(0.03, 0.1), rim_mm=3.0, nodules=d.count(4, 8))
    return variant, morph, p


def _cyst(d: _Draw, atypical: bool, diameter: float) -> tuple[str, LesionMorphology, dict]:
    p = {"nc_abs": d(0, 15), "e_art": d(0, 2), "e_pv": d(0, 4), "e_dl": d(0, 4)}
    variant = "typical"
    if atypical:
        variant = "proteinaceous"
        p["nc_abs"] = d(20, 35)
    return variant, LesionMorphology(lobulation=d(0.0, 0.03), rim_mm=1.0), p


def _metastasis(d: _Draw, atypical: bool, diameter: float) -> tuple[str, LesionMorphology, dict]:
    p = {
        "nc_off": d(-28, -10),
        "rim_art": d(5, 30),
        "rim_pv": d(-15, 5),
        "rim_dl": d(-15, 0),
        "core_art": d(0, 12),
        "core_pv": d(15, 40),
        "core_dl": d(18, 42),
        "nec": d(0, 15),
    }
    variant = "typical"
    if atypical:
        variant = "hypervascular"
        p.update(hyper_art=d(40, 80), wo=d(10, 30))
    morph = LesionMorphology(lobulation=d(0.05, 0.15), rim_mm=d(3, 8), center_frac=d(0.3, 0.5))
    return variant, morph, p


_SAMPLERS: dict[str, Callable[[_Draw, bool, float], tuple[str, LesionMorphology, dict]]] = {
    "HCC": _hcc,
    "ICC": _icc,
    "hemangioma": _hemangioma,
    "cyst": _cyst,
    "metastasis": _metastasis,
}
_TEXTURE = {
    "HCC": (5, 10),
    "ICC": (4, 8),
    "hemangioma": (3, 6),
    "cyst": (1, 2),
    "metastasis": (4, 8),
}


def lesion_diameter_limit(label: str, variant: str) -> float | None:
    """Largest diameter (mm) a variant may have: the diffuse-arterial ICC mimic is a small ICC."""
    return 30.0 if (label, variant) == ("ICC", "diffuse-arterial") else None


def sample_lesion_profile(
    rng: np.random.Generator,
    label: str,
    difficulty: str,
    atypical_fraction: float,
    diameter_mm: float,
) -> LesionProfile:
    """A lesion's variant, morphology and kinetic parameters for its class and difficulty."""
    if label not in _SAMPLERS:
        raise ValueError(f"unknown lesion class {label!r}; known: {sorted(_SAMPLERS)}")
    easy = difficulty == "easy"
    draw = _Draw(rng, 0.35 if easy else 1.0)
    atypical = (not easy) and bool(rng.random() < atypical_fraction)
    variant, morph, params = _SAMPLERS[label](draw, atypical, diameter_mm)
    return LesionProfile(label, variant, morph, params, float(rng.uniform(*_TEXTURE[label])))


# ---- per-class HU ----------------------------------------------------------------------------------
def lesion_region_hu(profile: LesionProfile, contrast: Contrast) -> dict[int, np.ndarray]:
    """HU per phase (NC, ART, PV, DL) of each lesion sub-region under a study's contrast."""
    p, b, h = profile.params, contrast.bolus, contrast.arterial
    liver = contrast.enhancement(T.LIVER)
    blood = contrast.enhancement(T.AORTA)
    nc = contrast.liver_nc + p.get("nc_off", 0.0) if "nc_abs" not in p else p["nc_abs"]
    one = np.array([0.0, 1.0, 0.0, 0.0])

    def hu(e: np.ndarray | list[float], base: float = nc) -> np.ndarray:
        return base + b * np.asarray(e, dtype=np.float64)

    label, v = profile.label, profile.variant
    if label == "HCC":
        core = np.array([0, p["art"] * h, liver[2] - p["wo_pv"], liver[3] - p["wo_dl"]])
        capsule = [0, liver[1] - 5, liver[2] + p["cap_pv"], liver[3] + p["cap_dl"]]
        rim = core + (p["rim_art"] * h - 3) * one
        out = {
            T.LESION_CENTER: hu(core),
            T.LESION_CORE: hu(core),
            T.LESION_RIM: hu(rim),
            T.LESION_CAPSULE: hu(capsule, contrast.liver_nc - 3),
            T.LESION_MOSAIC_A: hu(core + p["mos_art"] * h * one),
            T.LESION_MOSAIC_B: hu([0, 3, 5, 5], nc + p["mos_b_nc"]),
        }
    elif label == "ICC":
        if v == "diffuse-arterial":
            core = [0, p["diffuse_art"] * h, liver[2] + p["diffuse_pv"], liver[3] + p["diffuse_dl"]]
            rim, center = core, core
        else:
            rim = [0, liver[1] + p["rim_art"] * h, liver[2] + p["rim_pv"], liver[3] + p["rim_dl"]]
            core = [0, p["core_art"], p["core_pv"], p["core_dl"]]
            center = [0, 0.7 * p["core_art"], 0.8 * p["core_pv"], p["core_dl"] + p["center_dl"]]
        out = {
            T.LESION_CENTER: hu(center),
            T.LESION_CORE: hu(core),
            T.LESION_RIM: hu(rim),
            T.LESION_MOSAIC_A: hu([0, 2, 4, 6], nc - 10),
            T.LESION_MOSAIC_B: hu([0, 2, 4, 6], nc - 10),
        }
    elif label == "hemangioma":
        fill = {
            T.LESION_NODULE: [0, p["nod"], 0.95, 1.0],
            T.LESION_RIM: [0, p["rim_art"], p["rim_pv"], 0.97],
            T.LESION_CORE: [0, p.get("core_art", 0.03), p["core_pv"], p["core_dl"]],
            T.LESION_CENTER: [0, p.get("core_art", 0.0), p["center_pv"], p["center_dl"]],
        }
        out = {k: hu(np.asarray(f) * blood) for k, f in fill.items()}
    elif label == "cyst":
        e = hu([0, p["e_art"], p["e_pv"], p["e_dl"]])
        out = {T.LESION_CENTER: e, T.LESION_CORE: e, T.LESION_RIM: e}
    elif label == "metastasis":
        if v == "hypervascular":
            core = [0, p["hyper_art"] * h, liver[2] - p["wo"], liver[3] - p["wo"]]
            rim = core
        else:
            rim = [0, liver[1] + p["rim_art"] * h, liver[2] + p["rim_pv"], liver[3] + p["rim_dl"]]
            core = [0, p["core_art"], p["core_pv"], p["core_dl"]]
        out = {
            T.LESION_CORE: hu(core),
            T.LESION_RIM: hu(rim),
            T.LESION_CENTER: hu([0, 2, 5, 8], nc - p["nec"]),
        }
    else:  # pragma: no cover - guarded by sample_lesion_profile
        raise ValueError(label)
    core_hu = out[T.LESION_CORE]
    for region in (T.LESION_CAPSULE, T.LESION_MOSAIC_A, T.LESION_MOSAIC_B, T.LESION_NODULE):
        out.setdefault(region, core_hu)  # sub-regions a class does not use look like its core
    return {int(k): np.asarray(v_, dtype=np.float64) for k, v_ in out.items()}


def phase_luts(contrast: Contrast, profile: LesionProfile | None) -> np.ndarray:
    """Look-up tables (4, N_LABELS): HU of each label id in each phase (NC, ART, PV, DL)."""
    lut = np.zeros((len(CT_PHASES), N_LABELS), dtype=np.float32)
    for tissue, row in TISSUES.items():
        nc = contrast.liver_nc if tissue == T.LIVER else row[0]
        lut[:, tissue] = nc + contrast.bolus * contrast.enhancement(tissue)
    if profile is not None:
        for region, values in lesion_region_hu(profile, contrast).items():
            lut[:, region] = values
    return lut
