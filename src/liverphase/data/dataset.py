"""Torch dataset over cached preprocessed studies, with reproducible per-(seed, epoch, index) augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from liverphase.data.augment import Augmenter
from liverphase.data.forward import model_input
from liverphase.errors import DatasetError, InputFileError

ITEM_KEYS = ("case_id", "patient_id", "label", "image", "mask")


class CachedStudyDataset(Dataset):
    """Items {case_id, patient_id, label, image: .npy path, mask: .npy path | None} → tensors.

    Augmentation draws from a seed that is a pure function of (seed, epoch, index), so a sample
    is the same whether the run was resumed and however many workers load it. Call `set_epoch`
    before iterating each epoch (with non-persistent workers, each epoch's workers copy it).
    `roi_channel` appends the (augmented) lesion mask to every phase as a last channel
    (`with_roi_channel`), for models whose preprocessing asks for it.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        class_index: dict[str, int],
        augment: Augmenter | None = None,
        seed: int = 0,
        roi_channel: bool = False,
    ) -> None:
        self.items = [dict(it) for it in items]
        self.roi_channel = bool(roi_channel)
        self.class_index = dict(class_index)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        for it in self.items:
            missing = [k for k in ("case_id", "label", "image") if k not in it]
            if missing:
                raise DatasetError(f"dataset item lacks {missing}: {it}")
            if roi_channel and not it.get("mask"):
                raise DatasetError(
                    f"case {it['case_id']}: the model reads the lesion mask (roi_channel) "
                    "but the case has none"
                )
            if str(it["label"]) not in self.class_index:
                raise DatasetError(
                    f"case {it['case_id']}: label {it['label']!r} is not one of "
                    f"{sorted(self.class_index)}"
                )

    def __len__(self) -> int:
        """Number of items."""
        return len(self.items)

    def spatial_size(self) -> tuple[int, ...] | None:
        """(D, H, W) of the first item's crop, read from its header only (None when empty)."""
        if not self.items:
            return None
        return tuple(np.load(self.items[0]["image"], mmap_mode="r", allow_pickle=False).shape[-3:])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of this epoch."""
        self.epoch = int(epoch)

    def sample_seed(self, index: int) -> int:
        """The augmentation seed of item `index` in the current epoch."""
        seq = np.random.SeedSequence([self.seed, self.epoch, int(index)])
        return int(seq.generate_state(1)[0])

    def labels(self) -> np.ndarray:
        """Class index of every item (int64), in item order."""
        return np.array([self.class_index[str(it["label"])] for it in self.items], np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One study as tensors: image (P,C,D,H,W) float32, mask (1,D,H,W) uint8, label, ids."""
        item = self.items[index]
        image = _load(item["image"], ndim=5, what="image")
        mask = _load(item["mask"], ndim=3, what="mask") if item.get("mask") else None
        if mask is not None and mask.shape != image.shape[2:]:
            raise DatasetError(
                f"mask shape {mask.shape} does not match image grid {image.shape[2:]}",
                item["mask"],
            )
        # phases the study has (a dataset allowing missing phases lists them), then phase dropout
        present = np.asarray(item["present"], bool) if item.get("present") is not None else None
        if present is not None and present.shape != (image.shape[0],):
            raise DatasetError(
                f"case {item['case_id']}: {present.size} phase flags for {image.shape[0]} phases",
                item["image"],
            )
        if self.augment is not None:
            seed = self.sample_seed(index)
            image, mask = self.augment(image, mask, seed)
            dropped = self.augment.phase_presence(image.shape[0], seed)
            if dropped is not None:
                both = dropped if present is None else present & dropped
                present = both if both.any() else present  # never drop a study's only phase
        image = model_input(image, mask, present, self.roi_channel)  # mask checked in __init__
        has_mask = mask is not None
        mask_arr = (
            mask.astype(np.uint8, copy=False) if has_mask else np.zeros(image.shape[2:], np.uint8)
        )
        extra = {} if present is None else {"phase_mask": torch.from_numpy(present)}
        return {
            **extra,
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(np.array(mask_arr[None], np.uint8)),
            "has_mask": has_mask,
            "label": torch.tensor(self.class_index[str(item["label"])], dtype=torch.int64),
            "case_id": str(item["case_id"]),
            "index": int(index),
        }


def model_kwargs(
    batch: dict[str, Any], device: torch.device, phase_mask: bool = True
) -> dict[str, torch.Tensor]:
    """The keyword arguments a batch carries for the model: the phase mask (phases the study lacks
    and phase dropout), unless the model takes none (`phase_mask=False`: absent phases are zeros)."""
    if not phase_mask or "phase_mask" not in batch:
        return {}
    return {"phase_mask": batch["phase_mask"].to(device)}


def _load(path: str | Path, ndim: int, what: str) -> np.ndarray:
    """Memory-map a cached array and check its rank; errors name the file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputFileError(f"cached {what} not found (re-run preprocess)", path) from None
    except (ValueError, OSError) as exc:
        raise InputFileError(f"cannot read cached {what}: {exc}", path) from None
    if arr.ndim != ndim:
        raise DatasetError(
            f"cached {what} should have {ndim} dimensions, has shape {arr.shape}", path
        )
    return arr


def write_toy_items(
    folder: str | Path,
    n: int,
    shape: Sequence[int] = (2, 1, 8, 16, 16),
    classes: Sequence[str] = ("HCC", "ICC"),
    signal: float = 1.0,
    seed: int = 0,
    with_masks: bool = True,
) -> list[dict[str, Any]]:
    """Write `n` tiny cached studies whose class shows as a brighter centre blob in phase k mod P.

    For tests and smoke runs (e.g. the DDP entry point): labels alternate so every class appears,
    and a model can learn the task in a few epochs when `signal` is large against unit noise.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    p, c, d, h, w = shape
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    blob = ((zz - d / 2) / (d / 4)) ** 2 + ((yy - h / 2) / (h / 4)) ** 2 + (
        (xx - w / 2) / (w / 4)
    ) ** 2 < 1
    items = []
    for i in range(n):
        k = i % len(classes)
        image = rng.normal(0.0, 0.5, size=shape).astype(np.float32)
        image[k % p, :, blob] += signal
        case = f"toy{i:03d}"
        np.save(folder / f"{case}_image.npy", image)
        mask_path = None
        if with_masks:
            mask_path = str(folder / f"{case}_mask.npy")
            np.save(mask_path, blob.astype(np.uint8))
        items.append(
            {
                "case_id": case,
                "patient_id": f"P{i:03d}",
                "label": classes[k],
                "image": str(folder / f"{case}_image.npy"),
                "mask": mask_path,
            }
        )
    return items
