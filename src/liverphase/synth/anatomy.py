"""An abdomen as analytic shapes in physical LPS mm, rendered to integer tissue labels on any grid.

Body frame: x to the patient's left, y posterior, z superior, origin in the body centre at the
level of the liver hilum. Anatomy is sampled once per patient (`sample_anatomy`), a lesion once per
lesion (`synth.lesion.place_lesion`); `render_labels` paints both on a domain, so every phase of a study, on its
own grid and displaced by breathing, shows exactly the same anatomy moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from liverphase.synth.shapes import (
    Domain,
    Ellipsoid,
    Tube,
    Waves,
    member,
    paint,
    rotation,
)

if TYPE_CHECKING:
    from liverphase.synth.lesion import Lesion

INF = float("inf")


class T(IntEnum):
    """Tissue label ids (the kinetics module gives each its HU per phase)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERAL_FAT = 3
    LUNG = 4
    BOWEL = 5
    LIVER = 6
    GALLBLADDER = 7
    PORTAL_BRANCH = 8
    HEPATIC_VEIN = 9
    DUCT = 10
    SPLEEN = 11
    KIDNEY_CORTEX = 12
    KIDNEY_MEDULLA = 13
    KIDNEY_SINUS = 14
    IVC = 15
    PORTAL_VEIN = 16
    AORTA = 17
    BONE_CORTEX = 18
    BONE_MARROW = 19
    DISC = 20
    CANAL = 21
    # lesion sub-regions
    LESION_CENTER = 30
    LESION_CORE = 31
    LESION_RIM = 32
    LESION_CAPSULE = 33
    LESION_MOSAIC_A = 34
    LESION_MOSAIC_B = 35
    LESION_NODULE = 36


LESION_LABELS: tuple[int, ...] = tuple(int(t) for t in T if t.name.startswith("LESION"))
LIVER_TISSUE: tuple[int, ...] = (T.LIVER, T.PORTAL_BRANCH, T.HEPATIC_VEIN)
N_LABELS = 64
_DOME_DROP = 40.0  # mm the diaphragm falls off towards the flanks
_ABOVE_DOME = (T.LIVER, T.VISCERAL_FAT, T.BOWEL, T.GALLBLADDER, T.PORTAL_BRANCH, T.HEPATIC_VEIN)


@dataclass
class Anatomy:
    """One patient's abdomen: shapes in paint order, plus the landmarks lesions are placed by."""

    shapes: list[tuple[Ellipsoid | Tube, int, tuple[int, ...] | None]]
    post_lesion: list[tuple[Ellipsoid | Tube, int, tuple[int, ...] | None]]
    dome_z: float
    dome_curv: float
    liver_lo: np.ndarray
    liver_hi: np.ndarray
    hilum: np.ndarray
    body_centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    vertebra_period: float = 33.0
    disc_height: float = 7.0
    disc_phase: float = 0.0
    spine_xy: tuple[float, float, float] = (0.0, 50.0, 18.0)  # x, y, radius


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random abdomen: body wall, liver, spleen, kidneys, vessels, spine, bowel, lungs."""
    ax, ay = _u(rng, 125, 165), _u(rng, 95, 125)
    fat, muscle = _u(rng, 8, 30), _u(rng, 6, 13)
    cx, cy = ax - fat - muscle, ay - fat - muscle  # peritoneal cavity semi-axes
    sp_r = _u(rng, 16, 21)
    sp_y = cy * 0.62
    zrot = rotation(rng, (0, 0, 6))

    def cyl(x: float, y: float, a: float, b: float, rot: np.ndarray | None = None) -> Ellipsoid:
        return Ellipsoid((x, y, 0.0), (a, b, INF), rot if rot is not None else np.eye(3))

    cavity = (T.VISCERAL_FAT, T.BOWEL)
    s: list = [
        (cyl(0, 0, ax, ay, zrot), T.FAT, None),
        (cyl(0, 0, ax - fat, ay - fat, zrot), T.MUSCLE, None),
        (cyl(0, 0, cx, cy, zrot), T.VISCERAL_FAT, None),
    ]
    for _ in range(int(rng.integers(4, 9))):  # bowel loops, anterior and inferior
        c = (_u(rng, -0.2, 0.8) * cx, _u(rng, -0.8, 0.1) * cy, _u(rng, -90, -10))
        e = Ellipsoid(
            c, (_u(rng, 12, 30), _u(rng, 10, 22), _u(rng, 15, 35)), rotation(rng, (30,) * 3)
        )
        s.append((e, T.BOWEL, (T.VISCERAL_FAT,)))
    # liver: a right lobe and a flatter left lobe, lobulated, inside the cavity below the dome
    lz = 0.0
    right_c = np.array([-0.5 * cx, -0.08 * cy, lz + _u(rng, -5, 5)])
    right_a = np.array([_u(rng, 0.45, 0.56) * cx, _u(rng, 0.62, 0.75) * cy, _u(rng, 70, 90)])
    lobes = Waves.random(rng, 6, (80, 180), _u(rng, 0.03, 0.07))
    right = Ellipsoid(tuple(right_c), tuple(right_a), rotation(rng, (8, 8, 12)), lobes)
    left_c = np.array([_u(rng, 0.0, 0.2) * cx, -0.45 * cy, lz + _u(rng, 5, 20)])
    left_a = np.array([_u(rng, 0.35, 0.5) * cx, _u(rng, 0.3, 0.4) * cy, _u(rng, 40, 55)])
    left = Ellipsoid(tuple(left_c), tuple(left_a), rotation(rng, (5, 5, 25)), lobes)
    s += [(right, T.LIVER, cavity), (left, T.LIVER, cavity)]
    hilum = np.array([-0.22 * cx, -0.05 * cy, lz - 8])
    gb = Ellipsoid(
        (-0.3 * cx + _u(rng, -8, 8), -0.55 * cy, lz - _u(rng, 35, 50)),
        (_u(rng, 12, 17), _u(rng, 14, 20), _u(rng, 25, 40)),
        rotation(rng, (20, 20, 20)),
    )
    s.append((gb, T.GALLBLADDER, (T.LIVER,)))
    s += [
        (t, T.PORTAL_BRANCH, (T.LIVER,)) for t in _vessel_tree(rng, hilum, right_c, right_a, cx, cy)
    ]
    ivc_xy = (-0.2 * cx, sp_y - sp_r - 14)
    for target in (
        [-0.75 * cx, 0.1 * cy, 25],
        [-0.3 * cx, -0.55 * cy, 15],
        [0.15 * cx, -0.5 * cy, 30],
    ):
        start = np.array([ivc_xy[0], ivc_xy[1], lz + 55])
        end = np.asarray(target) + rng.uniform(-10, 10, 3)
        mid = start + (end - start) * 0.55
        s.append((Tube(tuple(start), tuple(mid), _u(rng, 4.5, 6)), T.HEPATIC_VEIN, (T.LIVER,)))
        s.append((Tube(tuple(mid), tuple(end), _u(rng, 2.5, 3.5)), T.HEPATIC_VEIN, (T.LIVER,)))
    spleen = Ellipsoid(
        (0.62 * cx, 0.35 * cy, lz + _u(rng, 5, 25)),
        (_u(rng, 25, 35), _u(rng, 45, 60), _u(rng, 45, 60)),
        rotation(rng, (10, 10, 40)),
        Waves.random(rng, 4, (60, 120), 0.04),
    )
    post: list = [(spleen, T.SPLEEN, (T.VISCERAL_FAT, T.BOWEL, *LIVER_TISSUE))]
    soft = (T.VISCERAL_FAT, T.BOWEL, *LIVER_TISSUE, T.GALLBLADDER)
    for side in (-1, 1):
        kc = (side * _u(rng, 55, 68), sp_y - 5, lz - _u(rng, 40, 60) - (10 if side < 0 else 0))
        ka = np.array([_u(rng, 24, 30), _u(rng, 22, 27), _u(rng, 50, 60)])
        rot = _zrot(side * _u(rng, 15, 30)) @ rotation(rng, (10, 10, 0))
        post.append((Ellipsoid(kc, tuple(ka), rot), T.KIDNEY_CORTEX, soft))
        post.append((Ellipsoid(kc, tuple(ka - 6), rot), T.KIDNEY_MEDULLA, (T.KIDNEY_CORTEX,)))
        sinus_c = np.asarray(kc) + rot @ np.array([-side * ka[0] * 0.5, 0, 0])
        sinus = Ellipsoid(tuple(sinus_c), (ka[0] * 0.45, ka[1] * 0.4, ka[2] * 0.35), rot)
        post.append((sinus, T.KIDNEY_SINUS, (T.KIDNEY_MEDULLA, T.KIDNEY_CORTEX)))
    post.append((cyl(ivc_xy[0], ivc_xy[1], _u(rng, 11, 15), _u(rng, 8, 11)), T.IVC, None))
    pv_a = np.array([0.05 * cx, sp_y - sp_r - 30, lz - 55])
    post.append((Tube(tuple(pv_a), tuple(hilum), _u(rng, 6, 8)), T.PORTAL_VEIN, None))
    ao_r = _u(rng, 9, 13)
    post.append((cyl(_u(rng, 10, 20), sp_y - sp_r - ao_r - 3, ao_r, ao_r), T.AORTA, None))
    post.append((cyl(0, sp_y, sp_r, sp_r * 0.9), T.BONE_CORTEX, None))
    post.append((cyl(0, sp_y, sp_r - 2.5, sp_r * 0.9 - 2.5), T.BONE_MARROW, None))
    post.append((cyl(0, sp_y + sp_r + 12, 14, 18), T.BONE_CORTEX, None))  # posterior arch
    post.append((cyl(0, sp_y + sp_r + 7, 8, 7), T.CANAL, None))
    for side in (-1, 1):
        post.append((cyl(side * 38, sp_y + 28, 24, 20), T.MUSCLE, None))
    liver_lo = np.minimum(right.bounds()[0], left.bounds()[0])
    liver_hi = np.maximum(right.bounds()[1], left.bounds()[1])
    dome_z = float(right_c[2] + right_a[2] * _u(rng, 0.7, 0.85))
    return Anatomy(
        shapes=s,
        post_lesion=post,
        dome_z=dome_z,
        dome_curv=_u(rng, 0.002, 0.004),
        liver_lo=liver_lo,
        liver_hi=liver_hi,
        hilum=hilum,
        vertebra_period=_u(rng, 30, 36),
        disc_height=_u(rng, 5, 9),
        disc_phase=_u(rng, 0, 36),
        spine_xy=(0.0, sp_y, sp_r),
    )


def _zrot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _vessel_tree(
    rng: np.random.Generator, hilum: np.ndarray, c: np.ndarray, a: np.ndarray, cx: float, cy: float
) -> list[Tube]:
    # portal branches: right anterior/posterior and left, each splitting once
    tubes: list[Tube] = []
    targets = [
        c + [-0.2 * a[0], -0.5 * a[1], 0.3 * a[2]],
        c + [-0.4 * a[0], 0.4 * a[1], 0.1 * a[2]],
        np.array([0.1 * cx, -0.4 * cy, hilum[2] + 20]),
    ]
    for target in targets:
        mid = hilum + (target - hilum) * 0.5 + rng.uniform(-6, 6, 3)
        tubes.append(Tube(tuple(hilum), tuple(mid), _u(rng, 4.5, 5.5)))
        for _ in range(2):
            end = target + rng.uniform(-25, 25, 3)
            tubes.append(Tube(tuple(mid), tuple(end), _u(rng, 2.2, 3.2)))
    return tubes


def render_labels(anatomy: Anatomy, lesion: Lesion | None, domain: Domain) -> np.ndarray:
    """Tissue labels (uint8) of the anatomy and lesion on a grid or at points."""
    labels = domain.empty()
    for shape, value, within in anatomy.shapes:
        paint(labels, domain, shape, value, within)
    _lungs_and_dome(labels, anatomy, domain)
    if lesion is not None:
        for duct in lesion.ducts:
            paint(labels, domain, duct, T.DUCT, (T.LIVER,))
        _paint_lesion(labels, domain, lesion)
    for shape, value, within in anatomy.post_lesion:
        paint(labels, domain, shape, value, within)
    _discs(labels, anatomy, domain)
    return labels


def _lungs_and_dome(labels: np.ndarray, anatomy: Anatomy, domain: Domain) -> None:
    # Above the diaphragm dome, liver and cavity become lung, under a 4 mm muscular diaphragm.
    lo = np.array([-1e4, -1e4, anatomy.dome_z - _DOME_DROP - 1.0])
    found = domain.sub(lo, lo + [2e4, 2e4, 2e4])
    if found is None:
        return
    idx, (x, y, z) = found
    region = labels[idx]
    drop = np.minimum(anatomy.dome_curv * ((x + 40.0) ** 2 + 0.6 * y**2) * 0.5, _DOME_DROP)
    height = z - (anatomy.dome_z - drop)
    soft = member(region, _ABOVE_DOME)
    np.copyto(region, np.uint8(T.MUSCLE), where=(height > 0) & soft)
    np.copyto(region, np.uint8(T.LUNG), where=(height > 4.0) & soft)
    if not isinstance(idx, tuple):
        labels[idx] = region


def _discs(labels: np.ndarray, anatomy: Anatomy, domain: Domain) -> None:
    x0, y0, r = anatomy.spine_xy
    found = domain.sub([x0 - r, y0 - r, -1e5], [x0 + r, y0 + r, 1e5])
    if found is None:
        return
    idx, (_x, _y, z) = found
    region = labels[idx]
    in_disc = np.mod(z - anatomy.disc_phase, anatomy.vertebra_period) < anatomy.disc_height
    np.copyto(
        region, np.uint8(T.DISC), where=in_disc & member(region, (T.BONE_CORTEX, T.BONE_MARROW))
    )
    if not isinstance(idx, tuple):
        labels[idx] = region


def _paint_lesion(labels: np.ndarray, domain: Domain, lesion: Lesion) -> None:
    found = domain.sub(*lesion.outline.bounds())
    if found is None:
        return
    idx, (x, y, z) = found
    region = labels[idx]
    depth = lesion.outline.depth(x, y, z)
    allowed = member(region, (*LIVER_TISSUE, T.DUCT)) & (depth < 1.0)
    r = lesion.radius
    m = lesion.morph
    sub = np.full(np.broadcast_shapes(depth.shape, region.shape), T.LESION_CORE, dtype=np.uint8)
    sub[np.broadcast_to(depth < m.center_frac, sub.shape)] = T.LESION_CENTER
    # a rim or capsule never takes more than a fixed share of a small lesion's radius
    sub[np.broadcast_to(depth > 1.0 - min(m.rim_mm / r, 0.35), sub.shape)] = T.LESION_RIM
    for shape, value in lesion.mosaic:
        _paint_within(sub, shape, value, x, y, z)
    for shape in lesion.nodules:
        _paint_within(sub, shape, T.LESION_NODULE, x, y, z)
    if m.capsule_mm > 0:
        sub[np.broadcast_to(depth > 1.0 - min(m.capsule_mm / r, 0.2), sub.shape)] = T.LESION_CAPSULE
    np.copyto(region, sub, where=allowed)
    if not isinstance(idx, tuple):
        labels[idx] = region


def _paint_within(sub: np.ndarray, shape: Ellipsoid, value: int, x, y, z) -> None:  # noqa: ANN001
    inside = np.broadcast_to(shape.inside(x, y, z), sub.shape)
    sub[inside] = value
