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
    #: Parameter-name prefix of the per-phase encoder `ssl_encoder` returns ("" = the model has none).
    encoder_prefix: str = ""

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

    def ssl_encoder(self) -> EncoderView:
        """The per-phase encoder as pretraining and `--init` see it: single-phase volumes
        (N, C, D, H, W) → deepest feature map (N, F, d, h, w); its parameters are the model's own."""
        raise NotImplementedError(
            f"{type(self).__name__} has no per-phase encoder to pretrain or initialise "
            "(models with one: std_net)"
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error when x is not (B, P, C, D, H, W) for this model."""
        if x.ndim != 6:
            raise ValueError(f"expected x of shape (B, P, C, D, H, W), got {tuple(x.shape)}")
        if x.shape[1] != len(self.phases) or x.shape[2] != self.in_channels:
            raise ValueError(
                f"model built for {len(self.phases)} phases x {self.in_channels} channels, "
                f"got x of shape {tuple(x.shape)}"
            )


class EncoderView(nn.Module):
    """A model's per-phase encoder seen as one map (N, C, D, H, W) → deepest features (N, F, d, h, w).

    It shares the encoder's modules and parameters under the encoder's own names, so its state dict
    is the model's `encoder_prefix`-prefixed entries with the prefix removed (what an encoder bundle
    holds). `select` picks the deepest map from the encoder's output (e.g. the last of its levels);
    `stride` is the encoder's total downsampling per axis, `out_channels` F.
    """

    def __init__(
        self,
        encoder: nn.Module,
        out_channels: int,
        stride: int,
        select: Callable[[Any], torch.Tensor] = lambda out: out,
    ) -> None:
        super().__init__()
        for name, child in encoder.named_children():
            self.add_module(name, child)
        for name, param in encoder.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in encoder.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        # the wrapped module itself is not registered: its children already are, under their names
        object.__setattr__(self, "_encoder", encoder)
        self._select = select
        self.out_channels = int(out_channels)
        self.stride = int(stride)

    @property
    def inner(self) -> nn.Module:
        """The wrapped encoder module itself."""
        return self._encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) → (N, F, D / stride, H / stride, W / stride)."""
        return self._select(self._encoder(x))

    def train(self, mode: bool = True) -> EncoderView:
        """Set the mode of the shared modules and of the wrapped encoder."""
        self._encoder.train(mode)
        return super().train(mode)


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
