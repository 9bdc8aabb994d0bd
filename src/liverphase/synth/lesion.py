"""A liver lesion as analytic shapes: its morphology, its placement inside a patient's liver."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from liverphase.synth.anatomy import LIVER_TISSUE, Anatomy, T, render_labels
from liverphase.synth.shapes import (
    Domain,
    Ellipsoid,
    Tube,
    Waves,
    fibonacci_sphere,
    member,
    rotation,
)


@dataclass
class LesionMorphology:
    """Shape features of a lesion class instance (sampled by the kinetics module)."""

    lobulation: float = 0.05  # relative surface displacement amplitude
    rim_mm: float = 3.0
    capsule_mm: float = 0.0  # 0: no capsule
    mosaic: int = 0  # number of intralesional nodules
    nodules: int = 0  # number of peripheral nodules
    ducts: int = 0  # dilated bile ducts leaving the lesion
    center_frac: float = 0.45  # normalised depth of the central region


@dataclass
class Lesion:
    """A placed lesion: outline, sub-region shapes, attached ducts."""

    outline: Ellipsoid
    morph: LesionMorphology
    mosaic: list[tuple[Ellipsoid, int]]
    nodules: list[Ellipsoid]
    ducts: list[Tube]
    touches_edge: bool

    @property
    def centre(self) -> np.ndarray:
        """Centre in body mm."""
        return np.asarray(self.outline.centre)

    @property
    def radius(self) -> float:
        """Mean radius in mm (un-lobulated)."""
        return float(np.mean(self.outline.semi_axes))

    def scaled(self, factor: float) -> Lesion:
        """The same lesion grown by `factor` (a follow-up study)."""
        c = self.centre

        def grow(e: Ellipsoid) -> Ellipsoid:
            cc = c + (np.asarray(e.centre) - c) * factor
            return replace(e, centre=tuple(cc), semi_axes=tuple(np.asarray(e.semi_axes) * factor))

        return replace(
            self,
            outline=grow(self.outline),
            mosaic=[(grow(e), v) for e, v in self.mosaic],
            nodules=[grow(e) for e in self.nodules],
        )


def place_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    diameter_mm: float,
    morph: LesionMorphology,
    touch_edge: bool = False,
    tries: int = 400,
) -> Lesion:
    """Place a lobulated lesion of about `diameter_mm` inside the liver (touching its edge if asked).

    Candidates are checked by rendering the anatomy at test points: a sphere of radius r + 3 mm
    all in liver tissue, or, for an edge lesion, the inner half in liver and part of the outer
    sphere outside it. The diameter shrinks when no place is found.
    """
    dirs = fibonacci_sphere(60)
    r = diameter_mm / 2
    for attempt in range(tries):
        if attempt and attempt % 100 == 0:
            r *= 0.8
        c = rng.uniform(anatomy.liver_lo, anatomy.liver_hi)
        pts = np.concatenate([c[None], c + dirs * (0.5 * r), c + dirs * (r + 3)])
        lab = render_labels(anatomy, None, Domain(points=pts))
        in_liver = member(lab, LIVER_TISSUE)
        inner_ok = in_liver[: 1 + len(dirs)].all()
        outer = in_liver[1 + len(dirs) :]
        if not inner_ok:
            continue
        if (touch_edge and 3 <= (~outer).sum() <= len(dirs) // 3) or (
            not touch_edge and outer.all()
        ):
            return _build_lesion(rng, anatomy, c, r, morph, touch_edge)
    raise RuntimeError(f"no room for a {diameter_mm:.0f} mm lesion in this liver")


def _build_lesion(
    rng: np.random.Generator,
    anatomy: Anatomy,
    c: np.ndarray,
    r: float,
    morph: LesionMorphology,
    touches: bool,
) -> Lesion:
    semi = r * rng.uniform(0.85, 1.15, 3)
    semi *= r / np.exp(np.mean(np.log(semi)))
    lobes = None
    if morph.lobulation > 0:
        lobes = Waves.random(rng, 6, (0.9 * r, 2.5 * r), morph.lobulation)
    outline = Ellipsoid(tuple(c), tuple(semi), rotation(rng, (180, 180, 180)), lobes)
    mosaic = []
    for k in range(morph.mosaic):
        p = c + fibonacci_sphere(morph.mosaic)[k] * r * rng.uniform(0.1, 0.55)
        rad = r * rng.uniform(0.18, 0.32)
        value = T.LESION_MOSAIC_A if k % 3 else T.LESION_MOSAIC_B
        mosaic.append((Ellipsoid(tuple(p), (rad, rad, rad), np.eye(3), None), int(value)))
    nodules = []
    for k in range(morph.nodules):
        p = c + fibonacci_sphere(morph.nodules)[k] * semi.mean() * rng.uniform(0.72, 0.88)
        rad = max(1.5, r * rng.uniform(0.1, 0.2))
        nodules.append(Ellipsoid(tuple(p), (rad, rad, rad), np.eye(3), None))
    ducts = []
    away = c - anatomy.hilum
    away /= np.linalg.norm(away) + 1e-9
    for _ in range(morph.ducts):
        d = away + rng.normal(0, 0.45, 3)
        d /= np.linalg.norm(d)
        start = c + d * r * 0.8
        ducts.append(
            Tube(tuple(start), tuple(start + d * rng.uniform(15, 35)), float(rng.uniform(1.5, 2.6)))
        )
    return Lesion(outline, morph, mosaic, nodules, ducts, touches)
