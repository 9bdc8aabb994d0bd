"""Shared fixtures: tiny synthetic images and datasets written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

os.environ.setdefault("OMP_NUM_THREADS", "2")

from liverphase.io.nnunet_writer import NnUNetWriter  # noqa: E402
from liverphase.io.study import Study  # noqa: E402


def make_image(
    arr: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None
) -> sitk.Image:
    """An image from a (z, y, x) array with the given geometry."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


def blob_study(case_id: str, label: str = "HCC", seed: int = 0, shape=(12, 24, 20)) -> Study:
    """A 2-phase study: a bright sphere in a body-like ellipse, and its mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    body = ((y - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + (
        (x - shape[2] / 2) / (shape[2] * 0.45)
    ) ** 2 < 1
    lesion = (z - 6) ** 2 / 9 + (y - 12) ** 2 / 16 + (x - 10) ** 2 / 16 < 1
    phases = {}
    for k, name in enumerate(("ART", "PV")):
        arr = np.where(body, 60 + 20 * k, -1000).astype(np.float32)
        arr[lesion] = 120 - 50 * k
        arr += rng.normal(0, 5, arr.shape).astype(np.float32)
        phases[name] = make_image(arr.astype(np.int16), origin=(-10.0, -12.0, 5.0))
    mask = make_image(lesion.astype(np.uint8), origin=(-10.0, -12.0, 5.0))
    return Study(case_id, phases, patient_id=f"P{case_id}", mask=mask, label=label)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """A 4-case, 2-phase nnU-Net dataset with masks; case c1 stored with flipped axes."""
    root = tmp_path / "ds"
    writer = NnUNetWriter(root, ["ART", "PV"], reference_phase="PV", class_names=["HCC", "ICC"])
    for i in range(4):
        study = blob_study(f"c{i}", label="HCC" if i % 2 == 0 else "ICC", seed=i)
        writer.add(study, flip_axes=(0, 2) if i == 1 else ())
    writer.close()
    return root
