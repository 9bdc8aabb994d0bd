"""Grad-CAM per phase for every registered architecture, on the crop grid of the model input.

Our input is (B, P, C, D, H, W), so a map "per phase" needs to know where each phase's features
live inside the network. An adapter per model name says which submodule to hook and how its
activation is laid out (the models stay untouched; a new model can instead carry the attributes
`cam_target_layer` (submodule name) and `cam_layout`):

- "slices": a 2D encoder shared over slices and phases; activation (B·D·P, C, h, w) ordered batch,
  slice, phase, or (B·D, P, C, h, w) after MIFF's fusion (miff_spm, resnet2d_avg, stic). The channel
  weights are the gradient averaged over the whole phase volume (all slices and pixels), so each
  phase gets one coherent 3D map; maps are upsampled bilinearly per slice to (H, W).
- "volumes": a 3D encoder run on each phase alone; activation (B·P, C, d, h, w) (std_net's deepest
  encoder level). Weights per phase volume, maps upsampled trilinearly.
- "shared": phases stacked as input channels of one 3D CNN (resnet3d18, densenet3d121,
  early_fusion, unet_channels): there is no per-phase feature map, so every phase gets the SAME
  map (the report says so). For the three classifiers this uses MONAI's `GradCAM` on a wrapper taking
  (B, P·C, D, H, W); unet_channels is hooked directly because its class head reads the bottleneck
  through a side path that MONAI's module backward hook would not see.
- no adapter: gradient × input saliency per phase (|∂score/∂x · x| summed over channels).

Hooks collect every call of the target (encoders that process slices in chunks call it several
times) and take gradients with tensor hooks, which see every use of the activation. Gradient
checkpointing is switched off during the pass so that recomputation does not fire hooks twice.
Each phase's map is min-max normalised to [0, 1] on its own; `peak` keeps the raw maxima so phases
can still be compared (phase importance proper comes from occlusion.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LAYOUTS = ("slices", "volumes", "shared")


@dataclass(frozen=True)
class CamAdapter:
    """Which submodule to hook (a function of the model, as some names depend on options) and how."""

    layer: Callable[[nn.Module], str]
    layout: str
    engine: str = "hooks"  # or "monai": monai.visualize.GradCAM on a channels-stacked wrapper


def _miff_layer(model: nn.Module) -> str:
    fusion = model.encoder.fusion
    # with MIFF on, the fused map (not layer4's raw output) is what the slice vectors pool
    return f"encoder.fusion.{len(fusion) - 1}" if fusion is not None else "encoder.backbone.layer4"


def _tap_layer(model: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if type(m).__name__ == "_Tap")


ADAPTERS: dict[str, CamAdapter] = {
    "miff_spm": CamAdapter(_miff_layer, "slices"),
    "resnet2d_avg": CamAdapter(lambda m: "encoder.backbone.layer4", "slices"),
    "stic": CamAdapter(lambda m: "encoder.backbone.layer4", "slices"),
    "std_net": CamAdapter(lambda m: f"encoder.levels.{len(m.encoder.levels) - 1}", "volumes"),
    "resnet3d18": CamAdapter(lambda m: "net.layer4", "shared", "monai"),
    "densenet3d121": CamAdapter(lambda m: "net.class_layers.relu", "shared", "monai"),
    "early_fusion": CamAdapter(lambda m: "stages", "shared", "monai"),
    "unet_channels": CamAdapter(_tap_layer, "shared"),
}


def adapter_for(model: nn.Module, model_name: str | None) -> CamAdapter | None:
    """The model's own CAM attributes, else the table entry for its name, else None (saliency)."""
    layer = getattr(model, "cam_target_layer", None)
    if isinstance(layer, str):
        layout = getattr(model, "cam_layout", "shared")
        if layout not in LAYOUTS:
            raise ValueError(f"cam_layout must be one of {LAYOUTS}, got {layout!r}")
        return CamAdapter(lambda m: layer, layout)
    return ADAPTERS.get(model_name or "")


@dataclass
class CamResult:
    """Per-phase maps (P, D, H, W) in [0, 1] on the input grid, and how they were made."""

    maps: np.ndarray
    class_index: int
    method: str
    layer: str | None
    shared: bool
    peak: list[float] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)

    def info(self, phases: list[str]) -> dict[str, Any]:
        """JSON-ready description (phase names instead of indices)."""
        return {
            "method": self.method,
            "layer": self.layer,
            "shared_across_phases": self.shared,
            "class_index": self.class_index,
            "raw_peak": {p: round(v, 6) for p, v in zip(phases, self.peak, strict=True)},
            "empty": [phases[i] for i in self.empty],
        }


@contextlib.contextmanager
def _no_checkpointing(model: nn.Module) -> Iterator[None]:
    saved = [
        (m, m.checkpointing)
        for m in model.modules()
        if isinstance(getattr(m, "checkpointing", None), bool)
    ]
    for m, _ in saved:
        m.checkpointing = False
    try:
        yield
    finally:
        for m, value in saved:
            m.checkpointing = value


def _logits(model: nn.Module, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    return model(x, **kwargs).logits


class CamUnavailable(RuntimeError):
    """Grad-CAM is undefined for this model: its class score does not flow through the CAM layer."""


def _hooked_pass(
    model: nn.Module, layer: str, x: torch.Tensor, class_index: int, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation and gradient of the class score at `layer` (all calls concatenated)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"CAM target layer {layer!r} not found in {type(model).__name__}")
    acts: list[torch.Tensor] = []
    grads: dict[int, torch.Tensor] = {}

    def on_forward(_m: nn.Module, _i: Any, out: Any) -> None:
        t = out if isinstance(out, torch.Tensor) else out[0]
        k = len(acts)
        acts.append(t.detach())
        t.register_hook(lambda g, k=k: grads.__setitem__(k, g.detach()))

    handle = modules[layer].register_forward_hook(on_forward)
    try:
        with torch.enable_grad():
            score = _logits(model, x, kwargs)[:, class_index].sum()
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
    if not acts or len(grads) != len(acts):
        raise CamUnavailable(f"the class score has no gradient through {layer!r}")
    return torch.cat(acts), torch.cat([grads[k] for k in range(len(acts))])


def _slices_cam(act: torch.Tensor, grad: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    b, p, _, d, h, w = shape
    # (B·D·P, C, h, w) or, after MIFF, (B·D, P, C, h, w): both are ordered batch, slice, phase
    act = act.reshape(b, d, p, *act.shape[-3:]).permute(0, 2, 3, 1, 4, 5)  # (B, P, C, D, h, w)
    grad = grad.reshape(b, d, p, *grad.shape[-3:]).permute(0, 2, 3, 1, 4, 5)
    weights = grad.mean(dim=(3, 4, 5), keepdim=True)
    cam = F.relu((weights * act).sum(dim=2))  # (B, P, D, h, w)
    up = F.interpolate(
        cam.flatten(0, 2)[:, None], size=(h, w), mode="bilinear", align_corners=False
    )
    return up.reshape(b, p, d, h, w)


def _volumes_cam(act: torch.Tensor, grad: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    b, p, _, d, h, w = shape
    act = act.view(b, p, *act.shape[1:])
    grad = grad.view(b, p, *grad.shape[1:])
    cam = F.relu((grad.mean(dim=(3, 4, 5), keepdim=True) * act).sum(dim=2))  # (B, P, d', h', w')
    return F.interpolate(cam, size=(d, h, w), mode="trilinear", align_corners=False)


def _shared_cam(act: torch.Tensor, grad: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    b, p, _, d, h, w = shape
    cam = F.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * act).sum(dim=1, keepdim=True))
    up = F.interpolate(cam, size=(d, h, w), mode="trilinear", align_corners=False)
    return up.expand(b, p, d, h, w)


_LAYOUT_FN = {"slices": _slices_cam, "volumes": _volumes_cam, "shared": _shared_cam}


class _ChannelsStacked(nn.Module):
    """(B, P·C, D, H, W) → logits of a model taking (B, P, C, D, H, W): what MONAI's GradCAM needs."""

    def __init__(self, net: nn.Module, phases: int, kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.net, self.phases, self.kwargs = net, phases, kwargs

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Unstack the phases and return the logits."""
        b, pc, *spatial = v.shape
        return self.net(v.view(b, self.phases, pc // self.phases, *spatial), **self.kwargs).logits


class PhaseGradCAM:
    """Grad-CAM per phase for one model; build once per model (MONAI's hooks stay registered)."""

    def __init__(self, model: nn.Module, model_name: str | None = None) -> None:
        self.model = model
        self.adapter = adapter_for(model, model_name)
        self.layer = self.adapter.layer(model) if self.adapter else None
        self._monai: Any = None
        self._wrapper: _ChannelsStacked | None = None

    @property
    def method(self) -> str:
        """Human-readable name of the method used."""
        if self.adapter is None:
            return "gradient x input saliency (no Grad-CAM adapter for this model)"
        engine = "MONAI GradCAM" if self.adapter.engine == "monai" else "Grad-CAM"
        return f"{engine} ({self.adapter.layout} layout)"

    def __call__(
        self, x: torch.Tensor, class_index: int, forward_kwargs: dict[str, Any] | None = None
    ) -> CamResult:
        """Maps for the first sample of x (1, P, C, D, H, W) and class `class_index`."""
        kwargs = dict(forward_kwargs or {})
        # the input carries a gradient too, so hooks work even on a model with frozen weights
        x = x.detach().clone().requires_grad_(True)
        with _no_checkpointing(self.model):
            raw = self._raw(x, class_index, kwargs)[0]  # (P, D, H, W)
        maps, peak, empty = _normalise(raw)
        shared = self.adapter is not None and self.adapter.layout == "shared"
        return CamResult(maps, class_index, self.method, self.layer, shared, peak, empty)

    def _raw(self, x: torch.Tensor, class_index: int, kwargs: dict[str, Any]) -> torch.Tensor:
        if self.adapter is None:
            with torch.enable_grad():
                score = _logits(self.model, x, kwargs)[:, class_index].sum()
                self.model.zero_grad(set_to_none=True)
                score.backward()
            return (x.grad * x).abs().sum(dim=2).detach()
        if self.adapter.engine == "monai":
            return self._monai_cam(x, class_index, kwargs)
        act, grad = _hooked_pass(self.model, self.layer, x, class_index, kwargs)
        return _LAYOUT_FN[self.adapter.layout](act, grad, tuple(x.shape)).detach()

    def _monai_cam(self, x: torch.Tensor, class_index: int, kwargs: dict[str, Any]) -> torch.Tensor:
        from monai.visualize import GradCAM

        b, p, c, *spatial = x.shape
        if self._monai is None:
            self._wrapper = _ChannelsStacked(self.model, p, kwargs)
            # identity post-processing: we normalise per phase ourselves and keep the raw peak
            self._monai = GradCAM(
                self._wrapper, target_layers=f"net.{self.layer}", postprocessing=lambda t: t
            )
        assert self._wrapper is not None
        self._wrapper.kwargs = kwargs
        with torch.enable_grad():
            cam = self._monai(x.reshape(b, p * c, *spatial), class_idx=class_index)
        return cam.detach().expand(b, p, *spatial)


def _normalise(raw: torch.Tensor) -> tuple[np.ndarray, list[float], list[int]]:
    """Min-max per phase to [0, 1]; an all-flat phase map stays 0 and is listed as empty."""
    arr = raw.float().cpu().numpy()
    out = np.zeros_like(arr, dtype=np.float32)
    peak, empty = [], []
    for i, m in enumerate(arr):
        lo, hi = float(m.min()), float(m.max())
        peak.append(hi)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            empty.append(i)
            continue
        out[i] = (m - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0), peak, empty
