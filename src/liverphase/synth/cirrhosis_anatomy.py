"""A cirrhotic abdomen: the CT phantom's anatomy reshaped by a latent fibrosis severity.

A patient draws a latent severity s (stage + noise) and every feature from s with its own noise
(`sample_features`), so no single feature separates neighbouring stages. `build_patient` then
reshapes the shared analytic anatomy (`synth.anatomy.sample_anatomy`): right lobe atrophy, left
lobe and caudate hypertrophy, a nodular liver surface, splenomegaly and ascites. Inside the liver,
one band-limited random field B (body mm) sets the parenchymal pattern: fibrous septa where |B| is
small (its zero sheets form a reticular network) and regenerative nodules where |B| is large; the
surface bulges over the same nodules and dips at the septa. `signal_table` gives each tissue
label its T1W and T2W signal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtri

from liverphase.synth.anatomy import LIVER_TISSUE, Anatomy, T, render_labels, sample_anatomy
from liverphase.synth.shapes import Domain, Ellipsoid, Grid, Waves, member

# Labels beyond the shared tissue set (lesion labels are 30-36)
ASCITES = 40
FIBROSIS = 41
NODULE = 42
LIVER_LABELS: tuple[int, ...] = (*LIVER_TISSUE, FIBROSIS, NODULE)
STAGES: tuple[str, ...] = ("healthy", "mild", "moderate", "severe")
SEQUENCES: tuple[str, ...] = ("T1W", "T2W")
_NODULE_CAP = 2.4  # |B| is capped here so the surface displacement stays bounded
_MEAN_ABS = float(np.sqrt(2 / np.pi))  # E|B| for a unit Gaussian field: the surface keeps its size


# Signal (arbitrary units, liver T1W = 500) of each tissue: fat bright on both; fluid, spleen and
# ascites bright on T2W and dark on T1W; liver mid on T1W and darker on T2W; fibrous septa T2-bright
# and T1-dark; regenerative nodules T1-iso/bright and T2-dark; flowing blood dark on T2W.
_SIGNAL: dict[int, tuple[float, float]] = {
    T.AIR: (0, 0),
    T.FAT: (900, 760),
    T.MUSCLE: (330, 180),
    T.VISCERAL_FAT: (880, 720),
    T.LUNG: (0, 0),
    T.BOWEL: (280, 480),
    T.LIVER: (500, 260),
    T.GALLBLADDER: (170, 1300),
    T.PORTAL_BRANCH: (210, 110),
    T.HEPATIC_VEIN: (210, 110),
    T.DUCT: (170, 1200),
    T.SPLEEN: (360, 620),
    T.KIDNEY_CORTEX: (420, 520),
    T.KIDNEY_MEDULLA: (300, 700),
    T.KIDNEY_SINUS: (820, 680),
    T.IVC: (230, 120),
    T.PORTAL_VEIN: (230, 120),
    T.AORTA: (160, 60),
    T.BONE_CORTEX: (20, 20),
    T.BONE_MARROW: (650, 520),
    T.DISC: (260, 650),
    T.CANAL: (150, 1400),
    ASCITES: (90, 1450),
    FIBROSIS: (380, 440),
    NODULE: (560, 185),
}


def signal_table(sequence: str) -> np.ndarray:
    """Tissue label → baseline signal (float32, 256 entries) of a sequence."""
    col = SEQUENCES.index(sequence)
    table = np.zeros(256, dtype=np.float32)
    for label, values in _SIGNAL.items():
        table[int(label)] = values[col]
    return table


@dataclass(frozen=True)
class NodularWaves(Waves):
    """Lobulation plus a nodular term scale·(min(|B|, cap) − E|B|): rounded bulges over the
    nodules (|B| large) and sharp notches where fibrous septa retract the surface (B = 0)."""

    nodules: Waves | None = None
    scale: float = 0.0

    @property
    def max_abs(self) -> float:
        """Upper bound of |field|."""
        return super().max_abs + self.scale * max(_MEAN_ABS, _NODULE_CAP - _MEAN_ABS)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field value at (broadcastable) coordinates."""
        base = super().__call__(x, y, z)
        if self.nodules is None or self.scale == 0:
            return base
        b = np.minimum(np.abs(self.nodules(x, y, z)), np.float32(_NODULE_CAP))
        return base + np.float32(self.scale) * (b - np.float32(_MEAN_ABS))


@dataclass(frozen=True)
class SubphrenicEllipsoid(Ellipsoid):
    """An ellipsoid cut off 4 mm under the diaphragm dome (fluid stays in the abdomen)."""

    dome_z: float = 1e9
    dome_curv: float = 0.0

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of points inside and below the dome."""
        # the same dome surface as synth.anatomy paints (drop towards the flanks, at most 40 mm)
        drop = np.minimum(self.dome_curv * ((x + 40.0) ** 2 + 0.6 * y**2) * 0.5, 40.0)
        return super().inside(x, y, z) & (z < self.dome_z - drop)


@dataclass
class CirrhosisFeatures:
    """The latent severity and every stage-dependent feature drawn from it (the truth)."""

    stage: int
    severity: float
    nodularity_mm: float  # surface bump amplitude
    nodule_wavelength_mm: float  # spatial scale of nodules and septa
    right_lobe_scale: float  # < 1: atrophy
    left_lobe_scale: float  # > 1: hypertrophy
    caudate_scale: float
    fibrosis_fraction: float  # share of parenchyma in fibrous septa
    nodule_fraction: float  # share of parenchyma in regenerative nodules
    spleen_scale: float
    ascites_mm: float  # 0: no ascites
    liver_size: float  # nuisance: liver size independent of stage


def sample_features(
    rng: np.random.Generator,
    stage: int,
    severity_sd: float = 0.35,
    healthy_sd: float = 0.2,
    ascites_onset: float = 2.6,
) -> CirrhosisFeatures:
    """Latent severity s = stage + N(0, sd) and each feature from s with its own noise."""
    s = float(rng.normal(stage, severity_sd if stage > 0 else healthy_sd))

    def feat(base: float, slope: float, sd: float, lo: float, hi: float) -> float:
        return float(np.clip(base + slope * s + rng.normal(0, sd), lo, hi))

    ascites = rng.random() < 1.0 / (1.0 + np.exp(-(s - ascites_onset) / 0.25))
    return CirrhosisFeatures(
        stage=stage,
        severity=round(s, 4),
        nodularity_mm=feat(0.0, 0.8, 0.85, 0.0, 6.0),
        nodule_wavelength_mm=feat(34.0, -4.0, 4.5, 12.0, 50.0),
        right_lobe_scale=feat(1.0, -0.06, 0.065, 0.6, 1.25),
        left_lobe_scale=feat(1.0, 0.06, 0.065, 0.8, 1.5),
        caudate_scale=feat(1.0, 0.11, 0.11, 0.7, 1.9),
        fibrosis_fraction=feat(0.0, 0.045, 0.048, 0.0, 0.35),
        nodule_fraction=feat(0.0, 0.05, 0.053, 0.0, 0.4),
        spleen_scale=feat(1.0, 0.1, 0.105, 0.8, 1.7),
        ascites_mm=float(np.clip(rng.uniform(4, 10) + 3 * (s - 2.5), 3, 25)) if ascites else 0.0,
        liver_size=float(np.exp(rng.normal(0, 0.08))),
    )


@dataclass
class CirrhosisPatient:
    """One patient: reshaped anatomy, the parenchymal field and the truth it was made from."""

    anatomy: Anatomy
    features: CirrhosisFeatures
    nodule_field: Waves  # B: rms 1, body mm
    septa_threshold: float  # |B| below: fibrous septum
    nodule_threshold: float  # |B| above: regenerative nodule
    liver_texture: Waves
    box_lo: np.ndarray  # liver + spleen bounds (body mm), from a coarse render
    box_hi: np.ndarray
    caudate_right_ratio: float  # caudate / right-lobe transverse width
    spleen_volume_ml: float  # of the un-lobulated ellipsoid

    def truth(self) -> dict[str, float | int]:
        """Features as plain values for synth.json."""
        out: dict[str, float | int] = {
            k: (round(v, 4) if isinstance(v, float) else v) for k, v in vars(self.features).items()
        }
        out["caudate_right_ratio"] = round(self.caudate_right_ratio, 4)
        out["spleen_volume_ml"] = round(self.spleen_volume_ml, 1)
        return out


def _scaled(e: Ellipsoid, anchor: np.ndarray, scale: np.ndarray, lobes: Waves) -> Ellipsoid:
    """`e` with semi-axes scaled (x, y, z of its own frame) and its centre moved towards `anchor`."""
    centre = anchor + (np.asarray(e.centre) - anchor) * scale
    return Ellipsoid(tuple(centre), tuple(np.asarray(e.semi_axes) * scale), e.rot, lobes)


def _nodular(lobes: Waves, field: Waves, nodularity_mm: float, e: Ellipsoid) -> NodularWaves:
    size = float(np.exp(np.mean(np.log(e.semi_axes))))  # ρ displacement × size ≈ mm
    return NodularWaves(lobes.k, lobes.phase, lobes.amp, field, nodularity_mm / size)


def build_patient(rng: np.random.Generator, features: CirrhosisFeatures) -> CirrhosisPatient:
    """Reshape a random abdomen by the features: lobes, caudate, surface, spleen and ascites."""
    base = sample_anatomy(rng)
    f = features
    liver_idx = [i for i, (_, v, _) in enumerate(base.shapes) if v == T.LIVER]
    (right, _, within), (left, _, _) = base.shapes[liver_idx[0]], base.shapes[liver_idx[1]]
    assert isinstance(right, Ellipsoid) and isinstance(left, Ellipsoid) and right.lobes
    ivc = next(s for s, v, _ in base.post_lesion if v == T.IVC)
    cavity = next(s for s, v, _ in base.shapes if v == T.VISCERAL_FAT)
    cx, cy = cavity.semi_axes[0], cavity.semi_axes[1]
    hilum, g = base.hilum, f.liver_size
    # the diaphragm follows the liver's size (the dome sits at a fixed depth into the right lobe)
    dome_z = float(hilum[2] + (base.dome_z - hilum[2]) * g)
    fluid = {"dome_z": dome_z, "dome_curv": base.dome_curv}
    wl = f.nodule_wavelength_mm
    field = Waves.random(rng, 10, (0.8 * wl, 1.25 * wl), 1.0)

    def grown(e: Ellipsoid) -> Ellipsoid:  # overall liver size about the hilum
        return Ellipsoid(
            tuple(hilum + (np.asarray(e.centre) - hilum) * g),
            tuple(np.asarray(e.semi_axes) * g),
            e.rot,
            e.lobes,
        )

    right, left = grown(right), grown(left)
    a = np.asarray(right.semi_axes)
    rs = f.right_lobe_scale
    # the right lobe shrinks towards its medial, posterior, upper side (the dome stays put)
    right = _scaled(
        right,
        np.asarray(right.centre) + a * [0.8, 0.3, 0.8],
        np.array([rs, rs, np.sqrt(rs)]),
        right.lobes,
    )
    la = np.asarray(left.semi_axes)
    ls = f.left_lobe_scale
    left = _scaled(
        left,
        np.asarray(left.centre) + la * [-0.8, 0.5, 0.0],
        np.array([ls, ls, np.sqrt(ls)]),
        left.lobes,
    )
    ivc_x, ivc_y = ivc.centre[0], ivc.centre[1]
    caud_axes = np.array([rng.uniform(0.13, 0.17) * cx, rng.uniform(0.11, 0.15) * cy, 30.0])
    caudate = Ellipsoid(
        (ivc_x + 0.12 * cx, ivc_y - 0.18 * cy, float(hilum[2]) + 20.0),
        tuple(caud_axes * g * f.caudate_scale),
        np.eye(3),
        right.lobes,
    )
    lobes = [
        _replace_lobes(e, _nodular(e.lobes, field, f.nodularity_mm, e))
        for e in (right, left, caudate)
    ]
    liver_within = (*within, ASCITES)
    shapes = list(base.shapes[: liver_idx[0]])
    post = list(base.post_lesion)
    spleen_i = next(i for i, (_, v, _) in enumerate(post) if v == T.SPLEEN)
    spleen = post[spleen_i][0]
    assert isinstance(spleen, Ellipsoid)
    ss = f.spleen_scale
    # The shared anatomy's spleen is large for a healthy one: shrink it towards the posterior
    # flank, then let it grow forwards and downwards with the stage.
    a0 = np.asarray(spleen.semi_axes)
    sa = a0 * 0.8
    spleen = Ellipsoid(
        tuple(
            np.asarray(spleen.centre)
            + 0.2 * a0 * [0.3, 0.4, 0.0]
            + (ss - 1) * sa * [-0.2, -0.5, -0.5]
        ),
        tuple(sa * ss),
        spleen.rot,
        spleen.lobes,
    )
    post[spleen_i] = (spleen, T.SPLEEN, (*post[spleen_i][2], ASCITES))
    if f.ascites_mm > 0:
        shapes += _ascites(lobes, f.ascites_mm, float(hilum[2]), cx, cy, fluid)
        post.insert(
            spleen_i, (_fluid_around(spleen, f.ascites_mm, fluid), ASCITES, (T.VISCERAL_FAT,))
        )
    shapes += [(e, T.LIVER, liver_within) for e in lobes]
    shapes += [(s, v, w) for s, v, w in base.shapes[liver_idx[1] + 1 :]]
    # kidneys and other soft-tissue shapes paint over fluid too
    post = [(s, v, (*w, ASCITES) if w and T.VISCERAL_FAT in w else w) for s, v, w in post]
    bounds = [e.bounds() for e in lobes]
    anatomy = replace(
        base,
        shapes=shapes,
        post_lesion=post,
        dome_z=dome_z,
        liver_lo=np.min([b[0] for b in bounds], axis=0),
        liver_hi=np.max([b[1] for b in bounds], axis=0),
    )
    fib, nod = f.fibrosis_fraction, f.nodule_fraction
    patient = CirrhosisPatient(
        anatomy=anatomy,
        features=f,
        nodule_field=field,
        septa_threshold=float(ndtri((1 + fib) / 2)) if fib > 0 else 0.0,
        nodule_threshold=float(ndtri(1 - nod / 2)) if nod > 0 else np.inf,
        liver_texture=Waves.random(rng, 6, (10, 40), 0.03),
        box_lo=np.zeros(3),
        box_hi=np.zeros(3),
        caudate_right_ratio=float(caudate.semi_axes[0] / right.semi_axes[0]),
        spleen_volume_ml=float(4 / 3 * np.pi * np.prod(spleen.semi_axes) / 1000),
    )
    patient.box_lo, patient.box_hi = _organ_box(patient)
    return patient


def _replace_lobes(e: Ellipsoid, lobes: Waves) -> Ellipsoid:
    return Ellipsoid(e.centre, e.semi_axes, e.rot, lobes)


def _fluid_around(e: Ellipsoid, mm: float, dome: dict[str, float]) -> SubphrenicEllipsoid:
    """A fluid layer `mm` thick around an organ, below the dome (paint it before the organ)."""
    return SubphrenicEllipsoid(e.centre, tuple(np.asarray(e.semi_axes) + mm), e.rot, None, **dome)


def _ascites(
    lobes: list[Ellipsoid], mm: float, hilum_z: float, cx: float, cy: float, dome: dict[str, float]
) -> list:
    """Perihepatic fluid around each lobe and free fluid low in the cavity (in visceral fat)."""
    out: list = [(_fluid_around(e, mm, dome), ASCITES, (T.VISCERAL_FAT,)) for e in lobes]
    low = Ellipsoid((0.0, -0.2 * cy, hilum_z - 110.0), (0.85 * cx, 0.7 * cy, 50 + 3 * mm))
    out.append((low, ASCITES, (T.VISCERAL_FAT,)))
    return out


def render(patient: CirrhosisPatient, domain: Domain) -> np.ndarray:
    """Tissue labels (uint8) with fibrous septa and regenerative nodules painted into the liver."""
    labels = render_labels(patient.anatomy, None, domain)
    an = patient.anatomy
    found = domain.sub(an.liver_lo, an.liver_hi)
    if found is None or (patient.septa_threshold <= 0 and np.isinf(patient.nodule_threshold)):
        return labels
    idx, coords = found
    region = labels[idx]
    where = member(region, (T.LIVER,))
    if where.any():
        xs, ys, zs = (np.broadcast_to(c, where.shape)[where] for c in coords)
        b = np.abs(patient.nodule_field(xs, ys, zs))
        values = region[where]
        values[b < patient.septa_threshold] = FIBROSIS
        values[b > patient.nodule_threshold] = NODULE
        region[where] = values
        if not isinstance(idx, tuple):
            labels[idx] = region
    return labels


def _organ_box(patient: CirrhosisPatient, step: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (body mm) of liver and spleen, from a coarse render (the FOV is built around them)."""
    an = patient.anatomy
    spleen = next(s for s, v, _ in an.post_lesion if v == T.SPLEEN)
    lo = np.minimum(an.liver_lo, spleen.bounds()[0]) - step
    hi = np.maximum(an.liver_hi, spleen.bounds()[1]) + step
    size = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    grid = Grid(size, (step,) * 3, tuple(float(v) for v in lo))
    labels = render_labels(an, None, Domain(grid))
    organ = member(labels, (*LIVER_TISSUE, T.SPLEEN))
    nz = np.argwhere(organ)[:, ::-1]  # (x, y, z) indices
    return grid.physical(nz.min(0) - 0.5), grid.physical(nz.max(0) + 0.5)
