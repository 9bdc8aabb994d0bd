"""The lesion locator: a small MONAI 3D U-Net on the whole scan at a coarse spacing, trained on
patches with and without the lesion, that says where the lesion is when nobody marked it.

The models' own segmenters learnt from crops that always hold a lesion and mark lesion anywhere in
a scan (benchmarks/results/locate_probe); the locator sees whole scans, so it learns "no lesion
here" too. Its strongest component frames the crop the classifier reads, as a user's mask would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from safetensors.torch import load_file, save_file

from liverphase.atomic import (
    WEIGHTS_SHA256,
    atomic_dir,
    atomic_write_json,
    check_weights_sha256,
    file_sha256,
)
from liverphase.errors import BundleError, ConfigError
from liverphase.preprocess.coarse import (
    coarse_target,
    coarse_volume,
    lesion_found,
    probability_on,
    strongest_component,
)
from liverphase.train.locator_config import LocatorConfig

FOLDER = "locator"
WEIGHTS = "locator.safetensors"
META = "locator.json"
FORMAT = "liverphase-locator-1"


@dataclass
class CoarseCase:
    """One training study on the coarse grid: `image` (P, D, H, W), `target` (D, H, W) uint8."""

    case_id: str
    patient_id: str
    label: str
    image: np.ndarray
    target: np.ndarray
    spacing_zyx: tuple[float, float, float]


def build_locator(n_phases: int, config: LocatorConfig) -> UNet:
    """The locator network: MONAI's residual U-Net, one lesion logit per voxel."""
    return UNet(
        spatial_dims=3,
        in_channels=n_phases,
        out_channels=1,
        channels=tuple(config.channels),
        strides=(2,) * (len(config.channels) - 1),
        num_res_units=1,
    )


def coarse_case(
    study: Any, phases: Sequence[str], config: LocatorConfig, modality: str = "ct"
) -> CoarseCase:
    """A study (with its lesion mask) as a training case of the locator."""
    reference = study.phases[study.reference_phase]
    volume = coarse_volume(
        study.phases, reference, phases, config.spacing_mm, modality, config.ct_window
    )
    return CoarseCase(
        study.case_id,
        str(study.patient_id),
        str(study.label),
        volume.image,
        coarse_target(study.mask, volume.grid),
        (config.spacing_mm,) * 3,
    )


def _pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pad = [(0, 0)] * (array.ndim - 3) + [
        (0, max(s - a, 0)) for a, s in zip(array.shape[-3:], shape, strict=True)
    ]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def _patch(case: CoarseCase, canvas: Sequence[int], rng: np.random.Generator, positive: bool):  # noqa: ANN202
    """A canvas-sized patch of (image, target): centred on a lesion voxel, or anywhere."""
    image, target = _pad_to(case.image, canvas), _pad_to(case.target, canvas)
    size = np.asarray(target.shape)
    hi = size - np.asarray(canvas)
    if positive and target.any():
        voxels = np.argwhere(target)
        centre = voxels[rng.integers(len(voxels))]
        start = np.clip(centre - np.asarray(canvas) // 2, 0, hi)
    else:
        start = np.array([rng.integers(h + 1) for h in hi])
    sl = tuple(slice(int(a), int(a) + int(c)) for a, c in zip(start, canvas, strict=True))
    x, y = image[(slice(None), *sl)], target[sl]
    for axis in range(3):  # random flips: the locator must not learn which side the lesion is on
        if rng.random() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def infer_probability(net: torch.nn.Module, image: np.ndarray, canvas: Sequence[int]) -> np.ndarray:
    """The lesion probability (D, H, W) of a whole coarse volume (P, D, H, W), window by window."""
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    with torch.no_grad():
        logits = sliding_window_inference(
            x, tuple(canvas), sw_batch_size=1, predictor=net, overlap=0.25, mode="gaussian"
        )
    return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def evaluate_locator(
    net: torch.nn.Module, cases: Sequence[CoarseCase], config: LocatorConfig
) -> dict[str, float]:
    """Detection rate and mean coarse Dice of the strongest component over `cases`."""
    net.eval()
    found, dice = [], []
    for case in cases:
        prob = infer_probability(net, case.image, config.canvas)
        mask, _ = strongest_component(prob, config.threshold)
        hit = lesion_found(mask, case.target, case.spacing_zyx)
        found.append(hit["detected"])
        dice.append(hit["dice"])
    return {"detection": float(np.mean(found)), "dice": float(np.mean(dice))}


def train_locator(
    train: Sequence[CoarseCase],
    val: Sequence[CoarseCase],
    n_phases: int,
    config: LocatorConfig,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
) -> tuple[UNet, dict[str, Any]]:
    """Train on `train`, keep the epoch best on `val` (detection rate, then Dice); (net, history)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = build_locator(n_phases, config).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    # cosine decay: the coarse lesion signal is faint, and a constant rate keeps the best epoch
    # hopping between neighbouring minima
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    best, best_state, history = (-1.0, -1.0), None, []
    for epoch in range(config.epochs):
        tick, net = time.perf_counter(), net.train()
        order = np.concatenate([rng.permutation(len(train)) for _ in range(config.passes)])
        losses = []
        for start in range(0, len(order), config.batch_size):
            pairs = [
                _patch(train[i], config.canvas, rng, rng.random() < config.positive_fraction)
                for i in order[start : start + config.batch_size]
            ]
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.float32))
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y.to(device))
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        schedule.step()
        scores = evaluate_locator(net, val, config)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), **scores}
        row["seconds"] = round(time.perf_counter() - tick, 2)
        history.append(row)
        if log:
            log(f"locator epoch {epoch + 1}/{config.epochs}: {row}")
        if (scores["detection"], scores["dice"]) > best:
            best = (scores["detection"], scores["dice"])
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), {"history": history, "best": {"detection": best[0], "dice": best[1]}}


def save_locator(folder: str | Path, net: UNet, meta: dict[str, Any]) -> Path:
    """Write `folder` (locator.safetensors + locator.json) atomically as a whole."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        atomic_write_json(
            tmp / META, {**meta, "format": FORMAT, WEIGHTS_SHA256: file_sha256(tmp / WEIGHTS)}
        )
    return folder


def read_locator_meta(folder: str | Path) -> dict[str, Any]:
    """locator.json, checked for the fields a locator needs."""
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"unreadable locator metadata: {exc}", path) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"not a liverphase locator (format {FORMAT!r} expected)", path)
    for key in ("config", "phases", "modality"):
        if key not in meta:
            raise BundleError(f"missing key {key!r}", path)
    return meta


@dataclass
class Located:
    """Where the locator puts the lesion: `mask` on the reference grid, its peak probability."""

    mask: sitk.Image
    peak: float
    threshold: float
    seconds: float

    def info(self) -> dict[str, Any]:
        """What prediction.json records of the search."""
        return {
            "peak_probability": round(self.peak, 4),
            "threshold": round(self.threshold, 4),
            "seconds": round(self.seconds, 3),
        }


class Locator:
    """A saved locator, loaded once, that finds the lesion in whole studies."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        self.folder = Path(folder)
        self.meta = read_locator_meta(self.folder)
        try:
            self.config = LocatorConfig.from_dict(self.meta["config"], str(self.folder / META))
        except ConfigError as exc:
            raise BundleError(
                f"invalid locator config: {exc.problem}", self.folder / META
            ) from None
        self.phases = list(self.meta["phases"])
        self.modality = str(self.meta["modality"])
        weights = self.folder / WEIGHTS
        if not weights.is_file():
            raise BundleError("missing", weights)
        check_weights_sha256(self.meta, weights)
        self.net = build_locator(len(self.phases), self.config)
        try:
            self.net.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
        except Exception as exc:  # safetensors' own error types, or a shape mismatch
            raise BundleError(f"cannot load the locator's weights: {exc}", weights) from None
        self.net = self.net.to(torch.device(device)).eval()

    def find(self, phases: Mapping[str, sitk.Image], reference: sitk.Image) -> Located:
        """The lesion's strongest component on `reference`'s grid (always a candidate)."""
        tick = time.perf_counter()
        volume = coarse_volume(
            phases,
            reference,
            self.phases,
            self.config.spacing_mm,
            self.modality,
            self.config.ct_window,
        )
        prob = infer_probability(self.net, volume.image, self.config.canvas)
        component, used = strongest_component(prob, self.config.threshold)
        fine = probability_on(np.where(component, prob, 0.0), volume.grid, reference)
        mask = fine > used
        if not mask.any():  # a component thinner than a reference voxel: its nearest voxels
            near = sitk.GetImageFromArray(component.astype(np.uint8))
            near.CopyInformation(volume.grid)
            mask = sitk.GetArrayFromImage(
                sitk.Resample(near, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            ).astype(bool)
        if not mask.any():  # still nothing (the component sits outside the reference's voxels)
            mask[tuple(np.asarray(mask.shape) // 2)] = True
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(reference)
        return Located(image, float(prob.max()), used, time.perf_counter() - tick)
