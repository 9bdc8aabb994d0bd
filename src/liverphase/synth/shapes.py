"""Sampling domains (a voxel grid or a list of points) and analytic shapes evaluated on them.

Everything is in physical LPS millimetres. A shape is evaluated only inside its bounding box, and
on an axis-aligned grid the coordinate arrays stay broadcast (x varies along the last axis only,
etc.), so a z-invariant shape such as the body outline costs one slice, not a volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

Vec3 = tuple[float, float, float]
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size and spacing in (x, y, z) order, origin and direction like SimpleITK."""

    size: tuple[int, int, int]
    spacing: Vec3
    origin: Vec3
    direction: tuple[float, ...] = _IDENTITY

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape in numpy (z, y, x) order."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def matrix(self) -> np.ndarray:
        """Index → physical linear map (direction × spacing), 3×3."""
        return np.array(self.direction, dtype=np.float64).reshape(3, 3) * np.array(self.spacing)

    def to_image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding `array` (z, y, x) on this grid."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        """The grid of an existing image."""
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def physical(self, ijk: np.ndarray) -> np.ndarray:
        """Physical points (N, 3) of continuous indices (N, 3) in (x, y, z) order."""
        return np.asarray(self.origin) + np.asarray(ijk, dtype=np.float64) @ self.matrix.T

    def centre(self) -> np.ndarray:
        """Physical centre of the grid."""
        return self.physical(np.array([[(n - 1) / 2 for n in self.size]]))[0]


@dataclass
class Domain:
    """Where labels are evaluated: a grid (3D label array) or points (1D), moved by `shift`.

    `shift` is the displacement of the anatomy in this acquisition: the body point seen at
    physical position p is p - shift.
    """

    grid: Grid | None = None
    points: np.ndarray | None = None
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def empty(self, dtype: type = np.uint8) -> np.ndarray:
        """A zero label array for this domain."""
        if self.grid is not None:
            return np.zeros(self.grid.shape, dtype=dtype)
        return np.zeros(len(self.points), dtype=dtype)  # type: ignore[arg-type]

    def sub(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[object, tuple] | None:
        """Index into the label array and body coordinates (X, Y, Z) of the part inside a box."""
        lo_b = np.asarray(lo, dtype=np.float64) + self.shift
        hi_b = np.asarray(hi, dtype=np.float64) + self.shift
        if self.points is not None:
            pts = self.points
            idx = np.nonzero(np.all((pts >= lo_b) & (pts <= hi_b), axis=1))[0]
            if idx.size == 0:
                return None
            p = pts[idx] - self.shift
            return idx, (p[:, 0], p[:, 1], p[:, 2])
        grid = self.grid
        assert grid is not None
        corners = np.array(
            [
                [a, b, c]
                for a in (lo_b[0], hi_b[0])
                for b in (lo_b[1], hi_b[1])
                for c in (lo_b[2], hi_b[2])
            ]
        )
        cont = (corners - np.asarray(grid.origin)) @ np.linalg.inv(grid.matrix).T
        i0 = np.maximum(np.floor(cont.min(axis=0)).astype(int), 0)
        i1 = np.minimum(np.ceil(cont.max(axis=0)).astype(int) + 1, np.asarray(grid.size))
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0])), _box_coords(
            grid, i0, i1, self.shift
        )


def _box_coords(grid: Grid, i0: np.ndarray, i1: np.ndarray, shift: np.ndarray) -> tuple:
    # Only non-zero direction terms are added, so an axis-aligned grid keeps 1D broadcasts.
    axes = [
        np.arange(i0[0], i1[0], dtype=np.float64).reshape(1, 1, -1),
        np.arange(i0[1], i1[1], dtype=np.float64).reshape(1, -1, 1),
        np.arange(i0[2], i1[2], dtype=np.float64).reshape(-1, 1, 1),
    ]
    m = grid.matrix
    out = []
    for row in range(3):
        acc: np.ndarray | float = grid.origin[row] - shift[row]
        for col in range(3):
            if abs(m[row, col]) > 1e-12:
                acc = acc + m[row, col] * axes[col]
        out.append(np.asarray(acc, dtype=np.float32))
    return tuple(out)


@dataclass(frozen=True)
class Waves:
    """A smooth random field: a sum of plane waves a·sin(k·p + φ) (physical mm)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)
    amp: np.ndarray  # (n,)

    @classmethod
    def random(
        cls, rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float], amplitude: float
    ) -> Waves:
        """`n` waves of random direction with wavelengths in a range; total rms ≈ `amplitude`."""
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, size=n)
        amp = np.full(n, amplitude * np.sqrt(2.0 / n))
        return cls(d * (2 * np.pi / lam)[:, None], rng.uniform(0, 2 * np.pi, n), amp)

    @property
    def max_abs(self) -> float:
        """Upper bound of |field|."""
        return float(np.abs(self.amp).sum())

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field value at (broadcastable) coordinates."""
        out: np.ndarray | float = 0.0
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp, strict=True):
            out = out + np.float32(a) * np.sin(
                np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(ph)
            )
        return np.asarray(out, dtype=np.float32)


def rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """A random rotation: angles about x, y, z uniform in ±max_deg."""
    ax, ay, az = np.deg2rad([rng.uniform(-m, m) for m in max_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Ellipsoid:
    """A (possibly lobulated) ellipsoid; semi_axes inf on an axis make an elliptic cylinder.

    Inside means ρ < 1 + lobes(p), ρ the normalised ellipsoidal radius: the low-frequency wave
    field displaces the surface along its normal, giving a lobulated outline.
    """

    centre: Vec3
    semi_axes: Vec3
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    lobes: Waves | None = None

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi) in mm, grown by `pad`."""
        grow = 1.0 + (self.lobes.max_abs if self.lobes else 0.0)
        a = np.where(np.isinf(self.semi_axes), 1e7, np.asarray(self.semi_axes) * grow)
        half = np.abs(self.rot) @ a + pad
        c = np.asarray(self.centre)
        return c - half, c + half

    def rho(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised radius (1 on the un-lobulated surface)."""
        d = (
            x - np.float32(self.centre[0]),
            y - np.float32(self.centre[1]),
            z - np.float32(self.centre[2]),
        )
        total: np.ndarray | float = 0.0
        for axis in range(3):
            a = self.semi_axes[axis]
            if np.isinf(a):
                continue
            u: np.ndarray | float = 0.0
            for j in range(3):
                if abs(self.rot[j, axis]) > 1e-12:
                    u = u + np.float32(self.rot[j, axis]) * d[j]
            total = total + (np.asarray(u) / np.float32(a)) ** 2
        return np.sqrt(np.asarray(total, dtype=np.float32))

    def depth(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Normalised depth s = ρ / (1 + lobes): s < 1 inside, 0 at the centre."""
        r = self.rho(x, y, z)
        if self.lobes is None:
            return r
        return r / (1.0 + self.lobes(x, y, z))

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of points inside."""
        r = self.rho(x, y, z)
        if self.lobes is None:
            return r < 1.0
        # The wave field is only needed in the shell where it can change the answer.
        m = self.lobes.max_abs
        inside = r < 1.0 - m
        shell = (r >= 1.0 - m) & (r < 1.0 + m)
        if shell.any():
            xs, ys, zs = (np.broadcast_to(c, r.shape)[shell] for c in (x, y, z))
            inside[shell] = r[shell] < 1.0 + self.lobes(xs, ys, zs)
        return inside


@dataclass(frozen=True)
class Tube:
    """A straight vessel or duct: points within `radius` of the segment a→b."""

    a: Vec3
    b: Vec3
    radius: float

    def bounds(self, pad: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi) in mm."""
        a, b = np.asarray(self.a), np.asarray(self.b)
        r = self.radius + pad
        return np.minimum(a, b) - r, np.maximum(a, b) + r

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Boolean mask of points inside the tube."""
        a = np.asarray(self.a, dtype=np.float32)
        ab = np.asarray(self.b, dtype=np.float32) - a
        dx, dy, dz = x - a[0], y - a[1], z - a[2]
        t = np.clip((dx * ab[0] + dy * ab[1] + dz * ab[2]) / np.float32(ab @ ab), 0.0, 1.0)
        d2 = (dx - t * ab[0]) ** 2 + (dy - t * ab[1]) ** 2 + (dz - t * ab[2]) ** 2
        return d2 < np.float32(self.radius**2)


def member(labels: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """`np.isin(labels, values)` for uint8 labels, by a 256-entry look-up table (much faster)."""
    table = np.zeros(256, dtype=bool)
    table[np.asarray(values, dtype=np.intp)] = True
    return table[labels]


def paint(
    labels: np.ndarray,
    domain: Domain,
    shape: Ellipsoid | Tube,
    value: int,
    within: Sequence[int] | None = None,
) -> None:
    """Set `labels` to `value` inside `shape` (only where the label is in `within`, if given)."""
    found = domain.sub(*shape.bounds())
    if found is None:
        return
    idx, (x, y, z) = found
    region = labels[idx]
    mask = shape.inside(x, y, z)
    if within is not None:
        mask = mask & member(region, within)
    np.copyto(region, np.asarray(value, dtype=labels.dtype), where=mask)
    if not isinstance(idx, tuple):  # points: fancy indexing copied the values
        labels[idx] = region


def fibonacci_sphere(n: int) -> np.ndarray:
    """`n` roughly uniform unit vectors (N, 3)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
