"""Model registry (timm-style): `@register_model` on a builder, `create_model(name, ...)` to build."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What every liverphase model returns."""

    logits: torch.Tensor  # (B, K)
    features: torch.Tensor  # (B, F)
    phase_logits: torch.Tensor | None = None  # (B, P, K)
    seg_logits: torch.Tensor | None = None  # (B, S, D, H, W)
    # per-slice class logits of a slice-wise model (B, D, K): the logits each slice alone gives, for
    # per-slice accuracy beside per-scan (the seed studies of cirrhosis staging score slices)
    slice_logits: torch.Tensor | None = None


class MultiPhaseModel(nn.Module):
    """Base class: remembers the phases, classes and options it was built with."""

    #: True when the model predicts a lesion mask (seg_logits).
    segments: bool = False
    #: Fewest phases the architecture can fuse (cross-phase models need 2).
    min_phases: int = 1
    #: Parameters the optimiser runs at `head_lr_scale` × the learning rate (the class read-out).
    head_prefix: str = "head."
    #: True when the model reads its input's last channel as the lesion ROI (preprocess roi_channel).
    reads_roi: bool = False

    def __init__(self, num_classes: int, phases: Sequence[str], in_channels: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not self.min_phases <= len(phases) <= 8:
            raise ValueError(
                f"{type(self).__name__} takes {self.min_phases} to 8 phases, got {len(phases)}"
            )
        self.num_classes = int(num_classes)
        self.phases = list(phases)
        self.in_channels = int(in_channels)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when x is not (B, P, C, D, H, W) for this model."""
        if x.ndim != 6:
            raise ValueError(f"expected x of shape (B, P, C, D, H, W), got {tuple(x.shape)}")
        if x.shape[1] != len(self.phases) or x.shape[2] != self.in_channels:
            raise ValueError(
                f"model built for {len(self.phases)} phases x {self.in_channels} channels, "
                f"got x of shape {tuple(x.shape)}"
            )


_REGISTRY: dict[str, Callable[..., MultiPhaseModel]] = {}
_INFO: dict[str, dict[str, Any]] = {}
# Modules that register models when imported; a new architecture adds its file here once.
_MODEL_MODULES = ("miff_spm", "baselines", "std_net", "cirrhosis_msa")


def register_model(
    name: str, *, segments: bool = False, description: str = ""
) -> Callable[[Callable[..., MultiPhaseModel]], Callable[..., MultiPhaseModel]]:
    """Register a builder under `name` (decorator)."""

    def wrap(fn: Callable[..., MultiPhaseModel]) -> Callable[..., MultiPhaseModel]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = fn
        _INFO[name] = {
            "segments": segments,
            "min_phases": getattr(fn, "min_phases", 1),
            "description": description or (fn.__doc__ or "").strip(),
        }
        return fn

    return wrap


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(f"liverphase.models.{mod}")
        except ModuleNotFoundError as exc:  # a planned module not written yet
            if exc.name != f"liverphase.models.{mod}":
                raise


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def model_info(name: str) -> dict[str, Any]:
    """Registry facts about a model: whether it segments, a one-line description."""
    _load_all()
    if name not in _INFO:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return dict(_INFO[name])


def model_defaults(name: str) -> dict[str, Any]:
    """The options a registered model takes, with the default each gets when not given."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.name not in ("num_classes", "phases")
    }


def create_model(
    name: str,
    num_classes: int = 2,
    phases: Sequence[str] = ("NC", "ART", "PV", "DL"),
    **options: Any,
) -> MultiPhaseModel:
    """Build a registered model by name with its options."""
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes=num_classes, phases=list(phases), **options)


def accepts_phase_mask(model: nn.Module) -> bool:
    """Whether the model's forward takes `phase_mask` (it can predict with a phase missing)."""
    return "phase_mask" in inspect.signature(model.forward).parameters
