"""Prediction outputs: label maps and [0, 1] maps on a study's grid as NIfTI, and PHI-safe JSON.

PHI here means the identifier values of a DICOM study's headers (`io.phi.IDENTIFYING`, kept by
`io.dicom` only in `Study.metadata["phi"]`). `phi_strings` (from `io.phi`) lists the forms they may
take in text, `scrub` replaces them in any JSON-like object, and `find_phi` checks written files (the
last guard before a predict run reports success).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from liverphase.atomic import atomic_write_json
from liverphase.errors import GeometryError
from liverphase.io.nifti import write_image
from liverphase.io.phi import phi_strings as phi_strings  # re-exported: one PHI definition

REDACTED = "[removed]"
_BASE64_IMAGE = re.compile(rb"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+")


def image_on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A (D, H, W) numpy array as an image with `reference`'s size, spacing, origin and direction."""
    array = np.asarray(array)
    expected = tuple(reference.GetSize())[::-1]
    if array.shape != expected:
        raise GeometryError(f"array of shape {array.shape} is not on the reference grid {expected}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def write_label_map(image: sitk.Image, path: str | Path) -> Path:
    """Write a label map (e.g. the lesion mask) as uint8 NIfTI, atomically."""
    write_image(sitk.Cast(image, sitk.sitkUInt8), path)
    return Path(path)


def write_unit_map(image: sitk.Image, path: str | Path) -> Path:
    """Write a float map clipped to [0, 1] (a CAM, a probability) as float32 NIfTI, atomically."""
    clipped = sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, 0.0, 1.0)
    write_image(clipped, path)
    return Path(path)


def scrub(obj: Any, strings: Iterable[str]) -> Any:
    """A copy of a JSON-like object with every occurrence of `strings` replaced (case-insensitive)."""
    patterns = [re.compile(re.escape(s), re.IGNORECASE) for s in strings if s]
    if not patterns:
        return obj

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for pat in patterns:
                value = pat.sub(REDACTED, value)
            return value
        if isinstance(value, Mapping):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return clean(obj)


def strict_json(obj: Any) -> Any:
    """NaN and infinities as None (strict JSON), numpy scalars as Python numbers."""
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any, phi: Iterable[str] = ()) -> Path:
    """Write `obj` as strict JSON atomically, with the given PHI strings scrubbed."""
    atomic_write_json(path, scrub(strict_json(obj), list(phi)))
    return Path(path)


def find_phi(where: str | Path | Iterable[Path], strings: Iterable[str]) -> list[tuple[Path, str]]:
    """(file, string) for every PHI string in a folder's files or in the given files (.gz unpacked)."""
    needles = [s.lower().encode("utf-8") for s in strings if s]
    found: list[tuple[Path, str]] = []
    if not needles:
        return found
    if isinstance(where, str | Path):
        files = sorted(p for p in Path(where).rglob("*") if p.is_file())
    else:
        files = [Path(p) for p in where]
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except OSError:
                pass
        if path.suffix in (".html", ".htm"):  # inline PNGs: pixels, and base64 matches by chance
            data = _BASE64_IMAGE.sub(b"", data)
        low = data.lower()
        found += [(path, n.decode()) for n in needles if n in low]
    return found
