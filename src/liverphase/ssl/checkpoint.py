"""The pretraining checkpoint: network and optimiser tensors in safetensors, the rest in JSON.

Written atomically as a folder (state.safetensors + state.json) after every epoch; never unpickled.
It needs no random-number state: every random draw of pretraining (sample order, augmentation,
masks) is a pure function of (seed, epoch, study), so a resumed run repeats the uninterrupted one.
(`train/state.py` does the same for the supervised trainer; it sits above `ssl` in the layer order,
so this module is its small pretraining-only counterpart.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from liverphase.atomic import atomic_dir
from liverphase.errors import BundleError, ConfigError

TENSORS = "state.safetensors"
STATE = "state.json"
# settings a resumed run may change without changing its result
RESUME_FREE = ("num_workers",)


def _flat_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimizer state dict as JSON (param groups, non-tensor values) + tensors by dotted key."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        plain[str(idx)] = {}
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                plain[str(idx)][name] = value
    return {"param_groups": state["param_groups"], "values": plain}, tensors


def _unflat_optimizer(skeleton: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in skeleton["values"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": skeleton["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: dict[str, Any],
) -> None:
    """Write the network, the optimiser and the loop state `loop` (JSON-able) atomically."""
    opt_plain, tensors = _flat_optimizer(optimizer.state_dict())
    tensors.update(
        {f"net.{k}": v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    )
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / STATE).write_text(json.dumps({**loop, "optimizer": opt_plain}) + "\n")


def load_checkpoint(
    folder: str | Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore network and optimiser from `folder` and return the loop state; None without one."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        loop = json.loads((folder / STATE).read_text())
        tensors = load_file(str(folder / TENSORS))
    except Exception as exc:  # JSON and safetensors raise their own error types
        raise BundleError(f"pretraining checkpoint unreadable ({exc})", folder) from None
    opt_skeleton = loop.pop("optimizer")
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    optimizer.load_state_dict(_unflat_optimizer(opt_skeleton, tensors))
    return loop


def check_same_settings(saved: dict[str, Any], now: dict[str, Any], where: str | Path) -> None:
    """ConfigError naming the settings that differ from the checkpoint's (resuming with them would
    not continue the same run)."""
    now = json.loads(json.dumps(now))
    changed = sorted(
        k for k in set(now) | set(saved) if k not in RESUME_FREE and saved.get(k) != now.get(k)
    )
    if changed:
        raise ConfigError(f"cannot resume with different settings (changed: {changed})", where)


def nan_to_none(record: dict[str, Any]) -> dict[str, Any]:
    """A log record with NaN as None (strict JSON)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
