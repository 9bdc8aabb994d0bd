"""The in-memory study: phases as SimpleITK images, an optional lesion mask, label and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from liverphase.errors import DatasetError


@dataclass
class Study:
    """One imaging study of one patient: several phases (or MRI sequences) of the same region.

    `phases` keeps acquisition order. Images keep their own grids: phases may differ in size,
    spacing and position; preprocessing registers them to `reference_phase`. `bbox` is
    (z0, y0, x0, z1, y1, x1) in reference-phase voxel indices (numpy order, end exclusive).
    """

    case_id: str
    phases: dict[str, sitk.Image]
    patient_id: str | None = None
    mask: sitk.Image | None = None
    label: str | None = None
    bbox: tuple[int, int, int, int, int, int] | None = None
    reference_phase: str = "PV"
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
