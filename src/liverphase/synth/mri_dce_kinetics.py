"""The DCE-MRI phantom's patient and signal model: scanner sites, tissue and HCC signal in PRE,
ART, PV, TP and HBP (gadoxetic acid), the HCC's class features, and the patient (anatomy + HCC).

Signals are T1-weighted, in units of the unenhanced liver (1.0), before the study's arbitrary gain.
A tissue has a pre-contrast signal and an enhancement per phase (arterial interpolated between an
early and a late arterial draw by the study's timing); the scanner turns them into signal as
pre^gamma + cap·(1 - exp(-relaxivity·bolus·E / cap)) (`SiteProfile`): a 3 T site stretches the
unenhanced T1 contrast, enhances differently and saturates at another level.

Liver enhances progressively and is brightest in HBP (hepatocyte uptake, scaled per study); blood
peaks in ART (aorta) or PV (portal vein) and is dark in HBP; bile ducts turn bright in HBP
(biliary excretion). HCC never takes up gadoxetate, so it is hypointense in HBP for both classes.

Proliferative vs non-proliferative HCC: five imaging correlates, each drawn with a class-dependent
probability or shift (`sample_hcc_features`), so that none separates the classes alone: larger
size, rim (vs diffuse) arterial enhancement, necrosis, a non-smooth margin, peritumoral HBP
hypointensity. A capsule is drawn independently of the class (a nuisance feature). The patient's
labels add PERITUMORAL: liver within a few mm of the HCC whose HBP uptake is reduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from liverphase.errors import ConfigError
from liverphase.phases import DCE_PHASES
from liverphase.synth.anatomy import N_LABELS, Anatomy, T, render_labels, sample_anatomy
from liverphase.synth.lesion import Lesion, LesionMorphology, place_lesion
from liverphase.synth.shapes import Domain, Waves, member

DCE_CLASSES: tuple[str, ...] = ("non-proliferative", "proliferative")
PERITUMORAL = 45  # label id: liver around the lesion with reduced HBP uptake (not lesion)

# Tissue: PRE signal, then enhancement in ART (early), ART (late), PV, TP, HBP.
TISSUES: dict[int, tuple[float, float, float, float, float, float]] = {
    T.AIR: (0.0, 0, 0, 0, 0, 0),
    T.FAT: (0.9, 0, 0, 0.02, 0.02, 0.02),  # imperfect fat suppression: bright-ish
    T.MUSCLE: (0.55, 0.05, 0.1, 0.2, 0.22, 0.2),
    T.VISCERAL_FAT: (0.85, 0, 0, 0.02, 0.02, 0.02),
    T.LUNG: (0.03, 0, 0, 0, 0, 0),
    T.BOWEL: (0.5, 0.1, 0.3, 0.5, 0.45, 0.45),
    T.LIVER: (1.0, 0.1, 0.3, 0.6, 0.65, 1.2),  # HBP × the study's hepatocyte uptake (0.6-1.1)
    T.GALLBLADDER: (0.3, 0, 0, 0, 0, 0.3),  # HBP: some excreted contrast, scaled by uptake
    T.PORTAL_BRANCH: (0.45, 0.2, 1.0, 1.5, 0.9, 0.35),
    T.HEPATIC_VEIN: (0.45, 0.05, 0.2, 1.3, 0.9, 0.3),
    T.DUCT: (0.3, 0, 0, 0, 0.1, 1.1),  # bile: bright in HBP, scaled by uptake
    T.SPLEEN: (0.75, 0.8, 1.0, 0.9, 0.6, 0.35),
    T.KIDNEY_CORTEX: (0.8, 1.5, 1.6, 1.2, 0.9, 0.6),
    T.KIDNEY_MEDULLA: (0.6, 0.3, 0.8, 1.2, 1.0, 0.6),
    T.KIDNEY_SINUS: (0.85, 0, 0, 0.02, 0.02, 0.02),
    T.IVC: (0.45, 0.05, 0.3, 1.3, 0.9, 0.3),
    T.PORTAL_VEIN: (0.45, 0.2, 1.0, 1.5, 0.9, 0.35),
    T.AORTA: (0.4, 2.2, 1.7, 1.0, 0.7, 0.3),
    T.BONE_CORTEX: (0.05, 0, 0, 0, 0, 0),
    T.BONE_MARROW: (0.7, 0.05, 0.1, 0.15, 0.15, 0.1),
    T.DISC: (0.4, 0, 0.02, 0.05, 0.05, 0.05),
    T.CANAL: (0.25, 0, 0, 0, 0, 0),  # fluid: dark on T1
}
_UPTAKE_SCALED = (T.LIVER, T.GALLBLADDER, T.DUCT)


@dataclass(frozen=True)
class SiteProfile:
    """A scanner (site): field strength, signal model, and the ranges its studies draw from."""

    name: str
    field_strength_t: float
    vendors: tuple[str, ...]
    relaxivity: float  # enhancement per unit contrast
    pre_gamma: float  # unenhanced signal = (tissue PRE)^gamma: T1 contrast between tissues
    saturation: float  # enhancement saturates towards this signal
    bias: tuple[float, float]  # bias-field strength (log units)
    noise: tuple[float, float]  # Rician sigma / unenhanced liver signal
    timing: tuple[float, float]  # arterial timing: 0 early ... 1 late arterial
    gain: tuple[float, float]  # arbitrary units of the unenhanced liver
    spacing_factor: tuple[float, float]  # × the config's in-plane and slice spacing ranges

    def signal(self, pre: np.ndarray, enhancement: np.ndarray) -> np.ndarray:
        """T1-weighted signal from pre-contrast signal and contrast enhancement."""
        e = np.maximum(self.relaxivity * enhancement, 0.0)
        return np.power(pre, self.pre_gamma) + self.saturation * (1 - np.exp(-e / self.saturation))


SITES: dict[str, SiteProfile] = {
    "A": SiteProfile(
        name="A",
        field_strength_t=1.5,
        vendors=("siemens", "philips"),
        relaxivity=1.0,
        pre_gamma=1.0,
        saturation=3.5,
        bias=(0.03, 0.08),
        noise=(0.035, 0.06),
        timing=(0.25, 1.0),
        gain=(300, 600),
        spacing_factor=(1.0, 1.0),
    ),
    # 3 T: lower r1 of gadoxetate but stretched unenhanced T1 contrast, a stronger coil bias,
    # less noise, earlier arterial acquisitions (fixed delay), finer in-plane and thicker slices
    "B": SiteProfile(
        name="B",
        field_strength_t=3.0,
        vendors=("ge", "siemens"),
        relaxivity=0.85,
        pre_gamma=1.3,
        saturation=2.5,
        bias=(0.12, 0.22),
        noise=(0.02, 0.035),
        timing=(0.0, 0.7),
        gain=(800, 1500),
        spacing_factor=(0.8, 1.3),
    ),
}


@dataclass(frozen=True)
class DCEContrast:
    """Per-study contrast: bolus strength, arterial timing, hepatocyte uptake, liver PRE signal."""

    bolus: float = 1.0
    timing: float = 1.0
    uptake: float = 1.0
    liver_pre: float = 1.0

    def enhancement(self, tissue: int) -> np.ndarray:
        """Enhancement per DCE phase (PRE, ART, PV, TP, HBP) at bolus 1."""
        _, early, late, pv, tp, hbp = TISSUES[tissue]
        if tissue in _UPTAKE_SCALED:
            hbp *= self.uptake
        return np.array([0.0, early + (late - early) * self.timing, pv, tp, hbp])

    @property
    def arterial(self) -> float:
        """Tumour arterial supply factor: peaks in the late arterial phase."""
        return 0.4 + 0.6 * self.timing


def sample_dce_contrast(rng: np.random.Generator, site: SiteProfile) -> DCEContrast:
    """A study's bolus, timing (site's distribution), hepatocyte uptake and liver PRE signal."""
    return DCEContrast(
        float(rng.uniform(0.8, 1.2)),
        float(rng.uniform(*site.timing)),
        float(rng.uniform(0.6, 1.1)),
        float(rng.uniform(0.9, 1.1)),
    )


@dataclass(frozen=True)
class HCCFeatures:
    """Truth of one HCC: the class correlates and the signal draws that render it."""

    diameter_mm: float
    rim_aphe: bool  # rim arterial enhancement (else diffuse)
    necrosis: bool
    necrosis_fraction: float  # normalised radius of the non-enhancing core (0 without necrosis)
    margin_irregularity: float  # surface lobulation amplitude (relative)
    peritumoral_hypo: bool  # peritumoral hypointensity in HBP
    peritumoral_width_mm: float
    peritumoral_uptake: float  # HBP uptake of the peritumoral liver relative to the liver's
    capsule: bool  # class-independent
    pre: float  # lesion PRE signal relative to the liver's
    art: float  # arterial enhancement of the enhancing tumour (diffuse) or of the rim
    core_art: float  # arterial enhancement of the core when the enhancement is rim-like
    washout_pv: float
    washout_tp: float
    hbp: float  # HBP enhancement (no uptake: small extracellular enhancement only)

    def truth(self) -> dict[str, float | bool]:
        """Plain values for synth.json."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_hcc_features(
    rng: np.random.Generator, proliferative: bool, diameter_mm: tuple[float, float]
) -> HCCFeatures:
    """An HCC of a class: each correlate drawn with a class-dependent probability or shift."""
    c = bool(proliferative)
    lo, hi = diameter_mm
    for _ in range(100):  # log-normal size truncated to the allowed range
        diameter = float(np.exp(rng.normal(np.log(35.0 if c else 26.0), 0.4)))
        if lo <= diameter <= hi:
            break
    else:
        diameter = float(rng.uniform(lo, hi))
    necrosis = bool(rng.random() < (0.5 if c else 0.18) * (1.3 if diameter > 35 else 1.0))
    margin = float(np.clip(rng.normal(0.08 if c else 0.06, 0.03), 0.01, 0.16))
    peri = bool(rng.random() < (0.5 if c else 0.17))
    return HCCFeatures(
        diameter_mm=diameter,
        rim_aphe=bool(rng.random() < (0.55 if c else 0.2)),
        necrosis=necrosis,
        necrosis_fraction=float(rng.uniform(0.3, 0.6)) if necrosis else 0.0,
        margin_irregularity=margin,
        peritumoral_hypo=peri,
        peritumoral_width_mm=float(rng.uniform(3.0, 7.0)) if peri else 0.0,
        peritumoral_uptake=float(rng.uniform(0.3, 0.6)) if peri else 1.0,
        capsule=bool(rng.random() < 0.5),
        pre=float(rng.uniform(0.7, 0.92)),
        art=float(rng.uniform(0.7, 1.4)),
        core_art=float(rng.uniform(0.05, 0.35)),
        washout_pv=float(rng.uniform(0.0, 0.35)),
        washout_tp=float(rng.uniform(0.1, 0.45)),
        hbp=float(rng.uniform(0.05, 0.3)),
    )


def lesion_regions(f: HCCFeatures, c: DCEContrast) -> dict[int, tuple[float, np.ndarray]]:
    """(PRE signal, enhancement per phase) of each lesion sub-region under a study's contrast."""
    liver = c.enhancement(T.LIVER)
    h = c.arterial
    pre = c.liver_pre * f.pre
    tumour = np.array([0.0, f.art * h, liver[2] - f.washout_pv, liver[3] - f.washout_tp, f.hbp])
    core = tumour.copy()
    if f.rim_aphe:
        core[1] = f.core_art * h
    necrotic = np.array([0.0, 0.01, 0.02, 0.03, 0.03])
    capsule = np.array([0.0, 0.1, liver[2] + 0.15, liver[3] + 0.25, 0.2])  # HBP-dark
    out = {
        T.LESION_RIM: (pre, tumour),
        T.LESION_CORE: (pre, core),
        T.LESION_CENTER: (0.55 * c.liver_pre, necrotic) if f.necrosis else (pre, core),
        T.LESION_CAPSULE: (0.85 * c.liver_pre, capsule),
        T.LESION_MOSAIC_A: (pre, core + np.array([0, 0.25 * h, 0, 0, 0])),
        T.LESION_MOSAIC_B: (min(1.1, f.pre + 0.25) * c.liver_pre, core),  # T1-bright nodule
        T.LESION_NODULE: (pre, core),
    }
    return {int(k): v for k, v in out.items()}


def dce_luts(contrast: DCEContrast, features: HCCFeatures | None, site: SiteProfile) -> np.ndarray:
    """Look-up tables (5, N_LABELS): signal of each label id in PRE, ART, PV, TP, HBP."""
    pre = np.zeros(N_LABELS)
    enh = np.zeros((len(DCE_PHASES), N_LABELS))
    for tissue, row in TISSUES.items():
        pre[tissue] = contrast.liver_pre if tissue == T.LIVER else row[0]
        enh[:, tissue] = contrast.enhancement(tissue)
    pre[PERITUMORAL], enh[:, PERITUMORAL] = pre[T.LIVER], enh[:, T.LIVER]
    if features is not None:
        enh[4, PERITUMORAL] *= features.peritumoral_uptake
        for region, (p, e) in lesion_regions(features, contrast).items():
            pre[region], enh[:, region] = p, e
    return site.signal(pre[None, :], contrast.bolus * enh).astype(np.float32)


# ---- the patient ------------------------------------------------------------------------------
@dataclass
class DCEPatient:
    """What stays fixed across a patient's studies: anatomy, the HCC and its features, textures."""

    anatomy: Anatomy
    lesion: Lesion
    features: HCCFeatures
    liver_texture: Waves
    lesion_texture: Waves
    peritumoral_field: Waves

    def followup(self, rng: np.random.Generator, max_diameter: float) -> DCEPatient:
        """The same patient later: the lesion grown by up to 25 %."""
        grow = max(min(rng.uniform(1.0, 1.25), max_diameter / (2 * self.lesion.radius)), 1.0)
        lesion = self.lesion.scaled(grow)
        features = replace(self.features, diameter_mm=2 * lesion.radius)
        return replace(self, lesion=lesion, features=features)


def sample_dce_patient(rng: np.random.Generator, config: Any, label: str) -> DCEPatient:
    """A random abdomen with one HCC of class `label` (one of `DCE_CLASSES`); `config` needs
    lesion_diameter_mm and edge_lesion_fraction (a `DCESynthConfig`)."""
    if label not in DCE_CLASSES:
        raise ConfigError(f"label must be one of {DCE_CLASSES}, got {label!r}", "label")
    anatomy = sample_anatomy(rng)
    f = sample_hcc_features(rng, label == "proliferative", config.lesion_diameter_mm)
    morph = LesionMorphology(
        lobulation=f.margin_irregularity,
        rim_mm=float(rng.uniform(2.5, 4.5)),
        capsule_mm=float(rng.uniform(1.0, 2.0)) if f.capsule else 0.0,
        mosaic=int(rng.integers(3, 7)) if f.diameter_mm > 30 and rng.random() < 0.25 else 0,
        center_frac=f.necrosis_fraction if f.necrosis else 0.3,
    )
    touch = bool(rng.random() < config.edge_lesion_fraction)
    lesion = place_lesion(rng, anatomy, f.diameter_mm, morph, touch_edge=touch)
    return DCEPatient(
        anatomy,
        lesion,
        replace(f, diameter_mm=2 * lesion.radius),  # placement may have shrunk it
        Waves.random(rng, 6, (10, 40), 0.04),
        Waves.random(rng, 8, (3, 12), float(rng.uniform(0.04, 0.08))),
        Waves.random(rng, 5, (10, 30), 1.0),
    )


def render_dce_labels(patient: DCEPatient, domain: Domain) -> np.ndarray:
    """Tissue labels with the lesion and, when the HCC has it, its peritumoral HBP-dark liver."""
    labels = render_labels(patient.anatomy, patient.lesion, domain)
    width = patient.features.peritumoral_width_mm
    if not patient.features.peritumoral_hypo or width <= 0:
        return labels
    outline = patient.lesion.outline
    found = domain.sub(*outline.bounds(width + 2.0))
    if found is None:
        return labels
    idx, (x, y, z) = found
    region = labels[idx]
    depth = outline.depth(x, y, z)
    # a partial, wedge-like shell: where a smooth field is high, within `width` of the surface
    shell = (depth >= 1.0) & (depth < 1.0 + width / patient.lesion.radius)
    shell &= patient.peritumoral_field(x, y, z) > -0.3
    np.copyto(region, np.uint8(PERITUMORAL), where=shell & member(region, (T.LIVER,)))
    if not isinstance(idx, tuple):
        labels[idx] = region
    return labels
