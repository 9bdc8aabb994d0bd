"""The parts of a training recipe the loop composes: seeds, model factory, optimiser, schedule, metrics."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from liverphase.errors import ConfigError
from liverphase.models.registry import (
    ModelOutput,
    MultiPhaseModel,
    accepts_phase_mask,
    create_model,
)
from liverphase.models.tta import lesion_probability
from liverphase.train.config import TrainConfig


def model_factory_from_config(
    config: TrainConfig, num_classes: int, phases: Sequence[str], in_channels: int
) -> Callable[[], MultiPhaseModel]:
    """A factory building `config.model` with `config.model_options` (what the bundle records)."""
    options = {**config.model_options, "in_channels": in_channels}
    return lambda: create_model(config.model, num_classes=num_classes, phases=phases, **options)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (e.g. (seed, epoch))."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def val_metrics(labels: np.ndarray, probs: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Mean per-sample loss, accuracy and AUC (binary, or macro one-vs-rest); NaN when undefined."""
    if len(labels) == 0:
        return {"loss": math.nan, "auc": math.nan, "acc": math.nan}
    k = probs.shape[1]
    auc = math.nan
    if len(np.unique(labels)) == k:  # AUC needs every class among the validation cases
        score = probs[:, 1] if k == 2 else probs / probs.sum(axis=1, keepdims=True)
        auc = float(roc_auc_score(labels, score, multi_class="ovr", average="macro"))
    return {
        "loss": float(np.mean(losses)),
        "auc": auc,
        "acc": float(np.mean(probs.argmax(axis=1) == labels)),
    }


def epoch_record(
    epoch: int, train_loss: float, val: dict[str, float], lr: float, seconds: float, n_seen: int
) -> dict[str, Any]:
    """One epoch's log row; val_dice only for models that segment (their validation has a Dice)."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val.get("loss", math.nan),
        "val_auc": val.get("auc", math.nan),
        "val_acc": val.get("acc", math.nan),
        **({"val_dice": val["dice"]} if "dice" in val else {}),
        "lr": lr,
        "seconds": seconds,
        "samples_per_s": n_seen / max(seconds, 1e-9),
    }


def bundle_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The selected epoch's figures for bundle.json, NaN (no validation) as null: strict JSON."""
    keys = ("epoch", "train_loss", "val_loss", "val_auc", "val_acc", "val_dice")
    return {
        k: None if isinstance(record[k], float) and math.isnan(record[k]) else record[k]
        for k in keys
        if k in record
    }


def mask_dice(
    seg_logits: torch.Tensor | None, mask: torch.Tensor, has_mask: torch.Tensor
) -> list[float] | None:
    """Per-sample lesion Dice of argmax(seg_logits) (N, 2, ...) against mask (N, 1, ...) on the
    model's own grid: 1.0 when both are empty, NaN where the case has no mask; None without
    segmentation."""
    if seg_logits is None:
        return None
    pred = lesion_probability(seg_logits).flatten(1) > 0.5
    truth = mask.flatten(1).to(pred.device) > 0
    inter = (pred & truth).sum(1).double()
    total = (pred.sum(1) + truth.sum(1)).double()
    dice = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))
    dice = torch.where(has_mask.to(dice.device).bool(), dice, torch.full_like(dice, math.nan))
    return dice.tolist()


def slice_output(out: ModelOutput, i: int) -> ModelOutput:
    """Sample i of a batched ModelOutput (batch dimension kept)."""
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return ModelOutput(**{k: v[i : i + 1] if v is not None else None for k, v in fields.items()})


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters (the class head's at its own lr)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params: list[Any] = [p for _, p in named]
    if cfg.head_lr_scale != 1.0:
        # a linear read-out of a few fixed features (std_net's region-only head) needs a far higher
        # rate than the network: at lr 3e-4 it is underfitted after twenty epochs
        # (benchmarks/crop_signal.py --head-lrs)
        prefix = str(getattr(model, "head_prefix", "head."))
        head = [p for n, p in named if n.startswith(prefix)]
        if not head:
            raise ConfigError(f"{cfg.model} has no {prefix}* parameters to scale", "head_lr_scale")
        rest = [p for n, p in named if not n.startswith(prefix)]
        params = [{"params": rest}, {"params": head, "lr": cfg.lr * cfg.head_lr_scale}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    """Per-epoch learning-rate schedule: step decay, cosine to zero, or None (constant)."""
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def default_device() -> torch.device:
    """This process's CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def class_weights(
    mode: str, labels: np.ndarray, num_classes: int, device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """None for "none"; for "balanced" n / (K · count_k) per class (absent classes count as 1)."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32, device=device)


def selection_score(record: dict[str, Any], select_metric: str, has_val: bool) -> list[float]:
    """Model-selection key, larger is better: (AUC, −loss) or (Dice, −loss) when chosen and defined
    (Dice only for models that segment), else −loss; without validation cases the epoch number (the
    last epoch is kept)."""
    if not has_val:
        return [float(record["epoch"])]
    chosen = {"auc": "val_auc", "dice": "val_dice"}.get(select_metric)
    if chosen and math.isfinite(record.get(chosen, math.nan)):
        return [record[chosen], -record["val_loss"]]
    return [-record["val_loss"]]


def check_model_config(
    model: torch.nn.Module,
    cfg: TrainConfig,
    roi_channel: bool = False,
    spatial_size: Sequence[int] | None = None,
) -> None:
    """The λ a model mixes its logits with must be the one the config names (it lives in both),
    phase dropout needs a model that takes a phase mask, a model that reads an ROI channel
    needs data that gives one (else it would read its last intensity channel as the lesion mask),
    and a model that halves its grid n times needs a crop it divides (else the first step fails)."""
    multiple = int(getattr(model, "grid_multiple", 1))
    if spatial_size is not None and any(int(n) % multiple for n in spatial_size):
        raise ConfigError(
            f"model {cfg.model!r} needs a crop size divisible by {multiple} on every axis, got "
            f"{list(spatial_size)}; change the preprocess size or the model's scales",
            "size",
        )
    if getattr(model, "reads_roi", False) and not roi_channel:
        raise ConfigError(
            f"model {cfg.model!r} reads the lesion ROI as its last input channel but the data "
            "gives none (preprocess roi_channel)",
            "roi_channel",
        )
    built = getattr(model, "mtl_lambda", None)
    if built is not None and not math.isclose(float(built), cfg.mtl_lambda):
        raise ConfigError(
            f"model {cfg.model!r} was built with mtl_lambda={built} but the config says "
            f"{cfg.mtl_lambda}; set both (model_options.mtl_lambda and mtl_lambda)",
            "mtl_lambda",
        )
    dropout = cfg.augment and cfg.augment_params.phase_dropout_prob > 0
    if dropout and not accepts_phase_mask(model):
        raise ConfigError(
            f"model {cfg.model!r} has no phase mask, so it cannot train with phases dropped; "
            "set phase_dropout_prob to 0 or use std_net / unet_channels",
            "augment_params.phase_dropout_prob",
        )
