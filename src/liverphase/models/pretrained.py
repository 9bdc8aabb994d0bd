"""Load a user-named weights file onto a model: safetensors, or a torch state dict without pickle.

This is the one place in `models/` that reads a file: the dependency rules keep file I/O out of models,
and loading the weights file a user names (the `pretrained` option) is the stated exception.

Formats: `*.safetensors` (safetensors.torch.load_file), anything else through
`torch.load(path, weights_only=True, map_location="cpu")` — never a full unpickle. A checkpoint that
nests its weights under "state_dict", "model_state_dict", "model" or "module" (MedicalNet, timm,
Lightning) is unwrapped; "module." (DataParallel/DDP) and "model." (Lightning) key prefixes are removed.

Key mapping: our 2D ResNet18 uses torchvision's names (conv1, bn1, layerN.M.conv1/bn1/conv2/bn2,
layerN.0.downsample.0/1), timm's resnet18 uses the same names, and MONAI's 3D ResNet (what
`resnet3d18` wraps) uses MedicalNet's. The file's keys therefore map onto the model by a single prefix
change, found by vote: either a prefix is added to every file key (torchvision `layer1.0.conv1.weight`
→ `encoder.backbone.layer1.0.conv1.weight`) or removed from it (a whole saved model loaded onto a
part). Keys of the file with no counterpart (torchvision's `fc.*`, 1000 ImageNet classes) are skipped
and reported; model tensors the file lacks keep their initialisation.

First convolution: when the model's first convolution differs from the file's only in input channels,
the kernels are adapted so a channel-constant input gives the same response (the sum over input
channels is kept): orig→k·orig tiles the kernels and scales them by orig/new (1→3: each channel gets
W/3); any other count, including 3→1, gives every new channel Σ_c W_c / new (3→1: the summed kernel,
i.e. the channel mean times 3). Any other shape mismatch raises ValueError naming the layer and both
shapes; the caller turns it into a BundleError.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_KEY_PREFIXES = ("module.", "model.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only torch checkpoint, prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a damaged file, or one that needs a full unpickle
        raise ValueError(
            f"{path}: not a safetensors file or weights-only torch state dict ({exc})"
        ) from exc
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors")
    return tensors


def _strip(key: str) -> str:
    while key.startswith(_KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution kernel (out, orig, *k) to `in_channels`, keeping Σ over channels."""
    orig = weight.shape[1]
    if in_channels == orig:
        return weight
    if in_channels % orig == 0:
        reps = [1, in_channels // orig] + [1] * (weight.ndim - 2)
        return weight.repeat(*reps) * (orig / in_channels)
    summed = weight.sum(dim=1, keepdim=True) / in_channels
    return summed.expand(-1, in_channels, *weight.shape[2:]).clone()


def _best_prefixes(source: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[str, str]:
    """(prefix removed from file keys, prefix added) under which most file keys exist in the model."""
    by_rest: dict[str, list[str]] = {}
    for tk in target:
        parts = tk.split(".")
        for i in range(len(parts)):
            by_rest.setdefault(".".join(parts[i:]), []).append(".".join(parts[:i] + [""]))
    votes: Counter[tuple[str, str]] = Counter()
    for sk in source:
        for tp in by_rest.get(sk, []):
            votes[("", tp)] += 1
        parts = sk.split(".")
        for i in range(1, len(parts)):
            if ".".join(parts[i:]) in target:
                votes[(".".join(parts[:i]) + ".", "")] += 1
    if not votes:
        return "", ""
    return max(votes, key=lambda pair: (votes[pair], -len(pair[0]) - len(pair[1])))


def _first_conv(target: Mapping[str, torch.Tensor]) -> str | None:
    return next((k for k, v in target.items() if k.endswith("weight") and v.ndim >= 3), None)


def load_state_dict_mapped(
    module: nn.Module, source: Mapping[str, torch.Tensor], origin: str = "weights"
) -> dict[str, list[str]]:
    """Copy `source` onto `module` by the key mapping above; returns loaded/adapted/unused/missing."""
    target = module.state_dict()
    sp, tp = _best_prefixes(source, target)
    first_conv = _first_conv(target)
    new_state = dict(target)
    report: dict[str, list[str]] = {"loaded": [], "adapted": [], "unused": []}
    for sk, value in source.items():
        tk = tp + sk[len(sp) :] if sk.startswith(sp) else None
        if tk not in target:
            report["unused"].append(sk)
            continue
        want = target[tk].shape
        if value.shape != want:
            same_but_inputs = value.ndim == len(want) and value.shape[0] == want[0]
            same_but_inputs = same_but_inputs and value.shape[2:] == want[2:]
            if tk != first_conv or not same_but_inputs:
                raise ValueError(
                    f"{origin}: layer {tk!r} has shape {tuple(value.shape)} in the weights file "
                    f"but {tuple(want)} in the model"
                )
            value = adapt_input_conv(value, want[1])
            report["adapted"].append(tk)
        new_state[tk] = value.to(target[tk].dtype)
        report["loaded"].append(tk)
    if not report["loaded"]:
        sample = ", ".join(list(source)[:3])
        raise ValueError(f"{origin}: no tensor matches a layer of the model (file keys: {sample}…)")
    module.load_state_dict(new_state)
    loaded = set(report["loaded"])
    report["missing"] = [k for k in target if k not in loaded]
    return report


def load_pretrained(module: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a weights file onto `module` (see the module docstring); returns what was loaded."""
    return load_state_dict_mapped(module, read_state_dict(path), origin=str(path))
