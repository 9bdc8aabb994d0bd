"""An anatomy-like multi-phase CT phantom for the preprocessing tests (and a check of the phantom).

Anatomy is a function of physical position (soft-edged ellipsoids, a textured liver, a lesion,
spine and aorta), so a phase displaced by a known vector is exactly the same anatomy moved: the
registration answer is known. Phases differ in contrast like real CT phases.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from liverphase.io.study import Study

# HU per phase (NC, ART, PV, DL): the lesion is hyper-enhancing then washes out (HCC-like)
CONTRAST = {
    "body": (30, 35, 45, 40),
    "liver": (55, 70, 110, 90),
    "lesion": (40, 130, 75, 60),
    "aorta": (40, 250, 150, 100),
    "spine": (400, 400, 400, 400),
}
PHASES = ("NC", "ART", "PV", "DL")
LESION_CENTRE = (-30.0, -5.0, 10.0)  # mm (x, y, z) in the patient frame


def _soft(r: np.ndarray, edge: float) -> np.ndarray:
    # 1 inside, 0 outside, a smooth ramp of about `edge` (in normalised radius) at r = 1
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -50, 50)))


def _ellipsoid(p: np.ndarray, centre: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    d = (p - np.asarray(centre)) / np.asarray(axes)
    return np.sqrt((d**2).sum(-1))


def anatomy(
    points: np.ndarray,
    phase_index: int,
    lesion_radius: float = 12.0,
    lesion_centre: Sequence[float] = LESION_CENTRE,
) -> np.ndarray:
    """HU at physical points (N, 3) for one phase (no noise)."""
    k = phase_index
    p = points
    hu = np.full(p.shape[0], -1000.0)
    body = _soft(_ellipsoid(p, (0, 0, 0), (75, 60, 400)), 0.02)
    hu = hu + body * (1000 + CONTRAST["body"][k])
    liver = _soft(_ellipsoid(p, (-25, -5, 5), (45, 40, 50)), 0.04)
    # smooth texture tied to position so it moves with the anatomy
    tex = 12 * np.sin(p @ np.array([0.21, 0.13, 0.07]) + 0.5) + 8 * np.sin(
        p @ np.array([-0.09, 0.25, 0.15])
    )
    hu = hu + liver * (CONTRAST["liver"][k] - CONTRAST["body"][k] + tex)
    lesion = _soft(_ellipsoid(p, lesion_centre, (lesion_radius,) * 3), 0.08)
    hu = hu + lesion * liver * (CONTRAST["lesion"][k] - CONTRAST["liver"][k] - tex)
    spine = _soft(_ellipsoid(p * np.array([1, 1, 0]), (0, 40, 0), (14, 14, 1)), 0.08)
    hu = hu + spine * (CONTRAST["spine"][k] - CONTRAST["body"][k])
    aorta = _soft(_ellipsoid(p * np.array([1, 1, 0]), (18, 20, 0), (10, 10, 1)), 0.08)
    return hu + aorta * (CONTRAST["aorta"][k] - CONTRAST["body"][k])


def phantom_image(
    phase_index: int,
    shift_mm: Sequence[float] = (0, 0, 0),
    *,
    shape=(40, 88, 100),
    spacing=(1.6, 1.6, 3.0),
    origin=None,
    seed: int = 0,
    noise: float = 8.0,
    **kwargs,
) -> sitk.Image:
    """One phase as an int16 image (z, y, x) = `shape`; its anatomy displaced by `shift_mm` (x, y, z)."""
    nz, ny, nx = shape
    if origin is None:  # centre the volume on the patient frame origin
        origin = tuple(-(n - 1) * s / 2 for n, s in zip((nx, ny, nz), spacing, strict=True))
    img = sitk.Image(nx, ny, nz, sitk.sitkInt16)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1)
    pts = np.asarray(origin) + idx.reshape(-1, 3) * np.asarray(spacing)
    hu = anatomy(pts - np.asarray(shift_mm, float), phase_index, **kwargs)
    arr = hu.reshape(nx, ny, nz).transpose(2, 1, 0)
    arr = arr + np.random.default_rng(seed).normal(0, noise, arr.shape)
    out = sitk.GetImageFromArray(np.round(arr).astype(np.int16))
    out.CopyInformation(img)
    return out


def lesion_mask(
    reference: sitk.Image, radius: float = 12.0, centre: Sequence[float] = LESION_CENTRE
) -> sitk.Image:
    """The lesion (radius in mm) as a uint8 mask on `reference`'s grid."""
    nx, ny, nz = reference.GetSize()
    idx = np.stack(np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"), -1)
    pts = np.asarray(reference.GetOrigin()) + idx.reshape(-1, 3) * np.asarray(
        reference.GetSpacing()
    )
    inside = _ellipsoid(pts, centre, (radius,) * 3) <= 1.0
    out = sitk.GetImageFromArray(inside.reshape(nx, ny, nz).transpose(2, 1, 0).astype(np.uint8))
    out.CopyInformation(reference)
    return out


def phantom_study(
    case_id: str = "p0", shifts: dict[str, Sequence[float]] | None = None, seed: int = 0, **kwargs
) -> Study:
    """A four-phase study with its lesion mask on the PV grid; `shifts` (mm, x y z) per phase."""
    shifts = shifts or {}
    radius = kwargs.pop("lesion_radius", 12.0)
    centre = kwargs.pop("lesion_centre", LESION_CENTRE)
    phases = {
        name: phantom_image(
            k,
            shifts.get(name, (0, 0, 0)),
            seed=seed + k,
            lesion_radius=radius,
            lesion_centre=centre,
            **kwargs,
        )
        for k, name in enumerate(PHASES)
    }
    mask = lesion_mask(phases["PV"], radius, np.add(centre, shifts.get("PV", (0, 0, 0))))
    return Study(case_id, phases, mask=mask, label="HCC", reference_phase="PV")


def test_phantom_has_phase_contrast_and_moves_with_shift() -> None:
    study = phantom_study(shifts={"ART": (4.8, 0.0, 0.0)})
    pv, art = (sitk.GetArrayFromImage(study.phases[p]).astype(float) for p in ("PV", "ART"))
    mask = sitk.GetArrayFromImage(study.mask).astype(bool)
    assert 60 < pv[mask].mean() < 90  # lesion washout in PV
    assert abs(art.mean() - pv.mean()) > 1  # phases differ
    # ART's lesion sits 3 voxels (4.8 mm) further along x
    art_mask = np.roll(mask, 3, axis=2)
    assert art[art_mask].mean() > 110 and art[mask & ~art_mask].mean() < art[art_mask].mean()
