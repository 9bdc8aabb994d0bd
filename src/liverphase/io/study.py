"""The in-memory study: phases as SimpleITK images, an optional lesion mask, label and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.errors import DatasetError


@dataclass
class Study:
    """One imaging study of one patient: several phases (or MRI sequences) of the same region.

    `phases` keeps acquisition order. Images keep their own grids: phases may differ in size,
    spacing and position; preprocessing registers them to `reference_phase`. `bbox` is
    (z0, y0, x0, z1, y1, x1) in reference-phase voxel indices (numpy order, end exclusive);
    `phase_boxes` holds such a box per phase in that phase's own voxels (LLD-MMRI annotates every
    sequence): preprocessing then crops each phase around its own box instead of registering it.
    """

    case_id: str
    phases: dict[str, sitk.Image]
    patient_id: str | None = None
    mask: sitk.Image | None = None
    label: str | None = None
    bbox: tuple[int, int, int, int, int, int] | None = None
    reference_phase: str = "PV"
    phase_boxes: dict[str, tuple[int, int, int, int, int, int]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, list[Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.patient_id is None:
            self.patient_id = self.case_id
        if not self.phases:
            raise DatasetError(f"study {self.case_id!r} has no phase")
        if self.reference_phase not in self.phases:
            # Fall back to the middle phase rather than failing: a study may lack PV.
            self.reference_phase = list(self.phases)[len(self.phases) // 2]

    @property
    def phase_names(self) -> list[str]:
        """Phase names in acquisition order."""
        return list(self.phases)

    @property
    def reference(self) -> sitk.Image:
        """The reference phase image: the grid of the mask and the bbox."""
        return self.phases[self.reference_phase]

    def source_files(self) -> list[Path]:
        """Every file this study was read from (for content hashing)."""
        out: list[Path] = []
        for key in sorted(self.sources):
            out.extend(self.sources[key])
        return out


def geometry_of(image: sitk.Image) -> dict[str, Any]:
    """Size (x, y, z), spacing, origin and direction of an image as plain Python values."""
    return {
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within `tol`)."""
    if a.GetSize() != b.GetSize():
        return False
    pairs = zip(
        (*a.GetSpacing(), *a.GetOrigin(), *a.GetDirection()),
        (*b.GetSpacing(), *b.GetOrigin(), *b.GetDirection()),
        strict=True,
    )
    return all(abs(x - y) <= tol * max(1.0, abs(x), abs(y)) for x, y in pairs)


def grid_difference(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> str:
    """What differs between the grids of `a` and `b` ("a vs b" values; "" when `same_grid`):
    size, spacing, origin (by how many mm) or direction (flipped axes, or the largest turn), and
    when size and spacing agree it says so, since those two are what a reader checks first."""

    def differ(xs: tuple[float, ...], ys: tuple[float, ...]) -> bool:
        return any(abs(x - y) > tol * max(1.0, abs(x), abs(y)) for x, y in zip(xs, ys, strict=True))

    def r(v: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(round(float(x), 3) for x in v)

    parts = []
    if a.GetSize() != b.GetSize():
        parts.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if differ(a.GetSpacing(), b.GetSpacing()):
        parts.append(f"spacing {r(a.GetSpacing())} vs {r(b.GetSpacing())}")
    shape_differs = bool(parts)
    if differ(a.GetOrigin(), b.GetOrigin()):
        shift = float(np.linalg.norm(np.subtract(a.GetOrigin(), b.GetOrigin())))
        parts.append(f"origin differs by {shift:.3g} mm: {r(a.GetOrigin())} vs {r(b.GetOrigin())}")
    if differ(a.GetDirection(), b.GetDirection()):
        da, db = (np.reshape(img.GetDirection(), (3, 3)) for img in (a, b))
        cos = np.clip(np.sum(da * db, axis=0), -1.0, 1.0)  # per index axis (x, y, z)
        flipped = [axis for axis, c in zip("xyz", cos, strict=True) if c < -0.5]
        how = (
            f"axis {', '.join(flipped)} flipped"
            if flipped
            else f"axes turned by up to {float(np.degrees(np.arccos(cos.min()))):.2g} degrees"
        )
        codes = [
            sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection())
            for img in (a, b)
        ]
        parts.append(f"direction differs ({how}; orientation {codes[0]} vs {codes[1]})")
    if parts and not shape_differs:
        parts.append(f"size {a.GetSize()} and spacing {r(a.GetSpacing())} agree")
    return "; ".join(parts)
