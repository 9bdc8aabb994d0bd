"""Resumable training state without pickle: tensors in safetensors (dotted keys), the rest in JSON.

`pack` turns a nested structure (state dicts, optimizer state with int keys, RNG tuples, numpy
arrays) into a JSON skeleton plus a flat {dotted key: tensor} map; `unpack` inverts it exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from liverphase.atomic import atomic_dir
from liverphase.errors import BundleError, ConfigError
from liverphase.train.config import TrainConfig

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
# training settings a resumed run may change without changing its result
RESUME_FREE = ("num_workers",)
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")
# numpy dtypes safetensors/torch cannot hold directly are widened, and narrowed back on load.
_WIDEN = {"uint32": torch.int64, "uint64": torch.int64}


def pack(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split `tree` into a JSON-able skeleton and a flat map of (cloned, contiguous) CPU tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def key_for(path: str) -> str:
        key, n = path or "root", 1
        while key in tensors:  # a dotted path could repeat ("a.b" vs a→b); keep keys unique
            key, n = f"{path}#{n}", n + 1
        return key

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            key = key_for(path)
            tensors[key] = obj.detach().cpu().clone().contiguous()
            return {"__tensor__": key}
        if isinstance(obj, np.ndarray):
            key = key_for(path)
            dtype = _WIDEN.get(str(obj.dtype))
            tensors[key] = (
                torch.from_numpy(np.array(obj)).to(dtype)
                if dtype
                else torch.from_numpy(np.array(obj))
            )
            return {"__ndarray__": key, "dtype": str(obj.dtype)}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            plain = all(isinstance(k, str) and k not in _MARKERS for k in obj)
            items = {k: walk(v, _join(path, k)) for k, v in obj.items()}
            if plain:
                return items
            return {"__dict__": [[k, items[k]] for k in obj]}
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"cannot store {type(obj).__name__} at {path!r} in a training state")

    return walk(tree, ""), tensors


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the structure `pack` split."""
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__tuple__" in skeleton:
            return tuple(unpack(v, tensors) for v in skeleton["__tuple__"])
        if "__dict__" in skeleton:
            return {_key(k): unpack(v, tensors) for k, v in skeleton["__dict__"]}
        return {k: unpack(v, tensors) for k, v in skeleton.items()}
    return skeleton


def save_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `folder` (state.safetensors + state.json), replacing it atomically."""
    skeleton, tensors = pack(state)
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(skeleton) + "\n")


def load_state(folder: str | Path) -> dict[str, Any] | None:
    """Read a state written by `save_state`; None when the folder does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return None
    try:
        skeleton = json.loads((folder / STATE_JSON).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"training state unreadable: {exc}", folder / STATE_JSON) from None
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BundleError(f"training state unreadable: {exc}", folder / STATE_TENSORS) from None
    try:
        return unpack(skeleton, tensors)
    except KeyError as exc:
        raise BundleError(f"tensor {exc} missing", folder / STATE_TENSORS) from None


def check_resumable(saved: dict[str, Any], now: dict[str, Any], where: str | Path) -> None:
    """A ConfigError naming the settings that differ from the checkpoint's (resuming would not
    reproduce the uninterrupted run)."""
    now = json.loads(json.dumps(now))
    # read the saved config through TrainConfig, so a setting added since the checkpoint was
    # written counts as its default (the behaviour that run had), not as a change
    try:
        saved = json.loads(json.dumps(TrainConfig.from_dict(saved).to_dict()))
    except ConfigError:
        pass  # a setting this version no longer knows: compared as recorded
    changed = sorted(k for k in now if k not in RESUME_FREE and saved.get(k) != now[k])
    if changed:
        raise ConfigError(
            f"cannot resume with a different training config (changed: {changed})", where
        )


def restore_modules(loaded: dict[str, Any], **modules: Any) -> None:
    """load_state_dict of each named module (model, optimizer, ...) from the checkpoint's entry of
    the same name; None modules (no scheduler, no AMP scaler) and None entries are skipped."""
    for name, module in modules.items():
        if module is not None and loaded.get(name) is not None:
            module.load_state_dict(loaded[name])


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (and CUDA), numpy and Python's random."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the RNG states `capture_rng` returned."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _key(k: Any) -> Any:
    # JSON turns tuple keys into lists; a list key can only have been a tuple.
    return tuple(k) if isinstance(k, list) else k
