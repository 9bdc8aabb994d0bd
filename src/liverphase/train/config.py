"""Training configuration and the two recipes: the paper's (`paper`) and a reduced one for CPUs (`cpu`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from liverphase.config import ConfigBase
from liverphase.data.augment import AugmentConfig
from liverphase.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("step", "cosine", "none")
CLASS_WEIGHTS = ("none", "balanced")
SELECT_METRICS = ("auc", "dice", "loss")
LOSSES = ("ce", "coral")
AMP_MODES = ("auto", "off")


@dataclass
class TrainConfig(ConfigBase):
    """Optimiser, schedule, loss, augmentation and model-selection settings of one training run.

    The defaults are the `cpu` profile. `model_options` go to `create_model` verbatim and into the
    bundle, so everything the model's constructor needs (e.g. miff_spm's `mtl_lambda`) belongs there;
    `mtl_lambda` here weights the loss. `head_lr_scale` runs the class head (parameters `head.*`) at
    that multiple of `lr`, for a linear read-out that trains from scratch beside a slower network.
    """

    model: str = "miff_spm"
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    mtl_lambda: float = 0.5
    class_weights: str = "none"
    augment: bool = True
    augment_params: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.2
    early_stopping_patience: int = 0
    select_metric: str = "loss"
    # in-plane flips averaged at test time (0=D, 1=H, 2=W); () predicts from the plain input
    tta_flip_axes: tuple[int, ...] = (1, 2)
    seed: int = 0
    num_workers: int = 0
    amp: str = "auto"
    grad_clip: float = 0.0
    seg_weight: float = 1.0
    cls_weight: float = 1.0
    head_lr_scale: float = 1.0
    # the class term: cross-entropy, or CORAL's ordinal loss for ordered classes (stages), read
    # from the same logits (train.losses.coral_loss_from_logits)
    loss: str = "ce"
    # the share of each class's training patients whose labels are used (a label-efficiency curve;
    # `data.splits.label_subset`): the rest of the training fold is left out, the test fold is whole
    label_fraction: float = 1.0
    # an encoder bundle (`liverphase pretrain` OUT/bundle) the model's encoder starts from, the
    # rest fresh; its parameters stay frozen for the first `freeze_epochs` epochs
    init: str | None = None
    freeze_epochs: int = 0

    def validate(self) -> None:
        """Check choices and ranges; raise ConfigError naming the field."""
        for name, allowed in (
            ("optimizer", OPTIMIZERS),
            ("scheduler", SCHEDULERS),
            ("class_weights", CLASS_WEIGHTS),
            ("select_metric", SELECT_METRICS),
            ("amp", AMP_MODES),
            ("loss", LOSSES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"must be one of {list(allowed)}, got {getattr(self, name)!r}", name
                )
        for name in ("epochs", "batch_size", "step_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", name)
        for name in ("lr", "gamma", "head_lr_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", name)
        for name in (
            "momentum",
            "weight_decay",
            "mtl_lambda",
            "early_stopping_patience",
            "num_workers",
            "grad_clip",
            "seg_weight",
            "cls_weight",
            "freeze_epochs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", name)
        if any(a not in (0, 1, 2) for a in self.tta_flip_axes):
            raise ConfigError(f"axes must be 0, 1 or 2, got {self.tta_flip_axes}", "tta_flip_axes")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ConfigError(f"must be in (0, 1], got {self.label_fraction}", "label_fraction")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"must be in [0, 1), got {self.val_fraction}", "val_fraction")
        if not self.model:
            raise ConfigError("must name a registered model", "model")
        if self.freeze_epochs and not self.init:
            raise ConfigError("needs init (the encoder bundle it freezes)", "freeze_epochs")


# The paper's recipe (SGD, lr 1e-3, momentum 0.9, ×0.1 every 10 epochs, 50 epochs, batch 2) for
# GPUs, and a reduced recipe sized for a 2-core CPU: a quarter of the voxels (see PROFILE_INPUT),
# AdamW + cosine, which converges in fewer epochs than step-decayed SGD, and larger batches.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "scheduler": "step",
        "step_size": 10,
        "gamma": 0.1,
        "epochs": 50,
        "batch_size": 2,
        "tta_flip_axes": [],
    },
    "cpu": {
        "optimizer": "adamw",
        # 1e-3 left miff_spm at chance (train loss stuck at ln 2) on an 80-case synthetic cohort;
        # 3e-4 trains.
        "lr": 3e-4,
        "weight_decay": 1e-4,
        "scheduler": "cosine",
        "epochs": 20,
        "batch_size": 4,
        # one loader process overlaps augmentation with the step: `liverphase bench` measured the
        # data wait at 5.1% of a step in-process and 2.4% with one worker, compute time unchanged
        # (results are identical: augmentation seeds do not depend on the worker)
        "num_workers": 1,
    },
}

# The model input grid (D, H, W) each profile is meant for; the preprocessing config owns it.
PROFILE_INPUT: dict[str, tuple[int, int, int]] = {"paper": (64, 128, 128), "cpu": (16, 64, 64)}


def profile_config(name: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a named profile, with explicit overrides (None values are ignored)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}", "profile")
    values = dict(PROFILES[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("augment_params"), AugmentConfig):
        values["augment_params"] = values["augment_params"].to_dict()
    return TrainConfig.from_dict(values, source=f"profile {name}")
