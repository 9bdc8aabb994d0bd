"""Acquisition geometry of a phantom study: per-phase grids and rigid breathing shifts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from liverphase.synth.lesion import Lesion
from liverphase.synth.shapes import Grid

SLICE_SPACINGS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
MARGIN_MM = 4.0  # kept between the lesion and the edge of the field of view


def sample_shift(rng: np.random.Generator, max_mm: float) -> np.ndarray:
    """A rigid breathing displacement (x, y, z) mm: mostly cranio-caudal, up to `max_mm`."""
    m = max_mm
    dz = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0) * m
    return np.round(np.array([rng.uniform(-0.15, 0.15) * m, rng.uniform(-0.3, 0.3) * m, dz]), 2)


def slice_spacing(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A common reconstruction slice spacing within [lo, hi] (any value if none is common)."""
    choices = [s for s in SLICE_SPACINGS if lo - 1e-9 <= s <= hi + 1e-9]
    return float(rng.choice(choices)) if choices else round(float(rng.uniform(lo, hi)), 2)


def sample_grids(
    rng: np.random.Generator,
    config: Any,
    lesion: Lesion,
    shifts: dict[str, np.ndarray],
    odd_phases: Sequence[str] = ("DL", "NC"),
) -> dict[str, Grid]:
    """Per-phase grids (phases = keys of `shifts`): shared in-plane FOV, own z position, and
    sometimes one of `odd_phases` reconstructed at another slice spacing.

    `config` needs grid_size, grid_spacing_mm, inplane_spacing_mm, slice_spacing_mm,
    other_slice_spacing_fraction, fov_mm, field_of_view(), center_on and phase_z_jitter_mm.
    The field of view keeps the lesion (plus breathing shift and a margin) inside when it can.
    """
    phases = list(shifts)
    if config.grid_size is not None and config.grid_spacing_mm is not None:
        spacing = {p: tuple(config.grid_spacing_mm) for p in phases}
        sizes = {p: tuple(config.grid_size) for p in phases}
    else:
        sxy = round(float(rng.uniform(*config.inplane_spacing_mm)), 3)
        sz = slice_spacing(rng, *config.slice_spacing_mm)
        spacing = {p: (sxy, sxy, sz) for p in phases}
        odd_ok = [p for p in odd_phases if p in spacing]
        if rng.random() < config.other_slice_spacing_fraction and odd_ok:
            odd = str(rng.choice(odd_ok))
            spacing[odd] = (sxy, sxy, slice_spacing(rng, *config.slice_spacing_mm))
        fov = config.fov_mm
        sizes = {
            p: (round(fov[0] / sxy), round(fov[1] / sxy), max(1, round(fov[2] / s[2])))
            for p, s in spacing.items()
        }
    c = lesion.centre
    fov = np.array(config.field_of_view())
    if config.center_on == "body":
        want = np.array([0.0, 0.0, c[2] + rng.uniform(-0.2, 0.2) * fov[2]])
    else:
        want = c + rng.uniform(-0.15, 0.15, 3) * fov
    reach = max(lesion.outline.semi_axes) * (1 + lesion.morph.lobulation * 2) + MARGIN_MM
    grids = {}
    for p in phases:
        half = (np.array(sizes[p]) - 1) * np.array(spacing[p]) / 2
        lc = c + shifts[p]
        centre = want + np.array([0.0, 0.0, rng.uniform(-1, 1) * config.phase_z_jitter_mm])
        lo, hi = lc + reach - half, lc - reach + half
        centre = np.where(lo <= hi, np.clip(centre, lo, hi), lc)
        origin = tuple(round(float(v), 3) for v in centre - half)
        grids[p] = Grid(
            tuple(int(n) for n in sizes[p]), tuple(float(s) for s in spacing[p]), origin
        )
    return grids
