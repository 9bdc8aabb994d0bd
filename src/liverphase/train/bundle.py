"""Checkpoint bundle: `model.safetensors` + `bundle.json`; loading never unpickles."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import liverphase
from liverphase.atomic import (
    WEIGHTS_SHA256,
    atomic_dir,
    atomic_write_json,
    check_weights_sha256,
    file_sha256,
)
from liverphase.errors import BundleError
from liverphase.models.registry import MultiPhaseModel, create_model

WEIGHTS = "model.safetensors"
META = "bundle.json"
FORMAT = "liverphase-bundle-1"
REQUIRED = ("liverphase_version", "model", "model_options", "class_names", "phases", "in_channels")
# Contract fields a bundle always has (null when the caller gives none).
OPTIONAL = ("preprocessing", "training", "split", "metrics", "seed")


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as cloned contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def bundle_meta(model: MultiPhaseModel, meta: dict[str, Any]) -> dict[str, Any]:
    """The full bundle.json content for `model` and the caller's `meta` (which must name the model)."""
    if "model" not in meta or "class_names" not in meta:
        raise ValueError("bundle meta needs 'model' (registered name) and 'class_names'")
    if len(meta["class_names"]) != model.num_classes:
        raise ValueError(
            f"{len(meta['class_names'])} class names for a model with {model.num_classes} classes"
        )
    out = {
        "format": FORMAT,
        "liverphase_version": liverphase.__version__,
        "model_options": {},
        "phases": list(model.phases),
        "in_channels": int(model.in_channels),
        **dict.fromkeys(OPTIONAL),
        **meta,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out["class_names"] = [str(c) for c in out["class_names"]]
    return out


def save_bundle(
    folder: str | Path,
    model: MultiPhaseModel,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the bundle folder atomically as a whole; `tensors` overrides the model's current weights."""
    folder = Path(folder)
    full = bundle_meta(model, meta)
    weights = tensors if tensors is not None else state_tensors(model)
    with atomic_dir(folder) as tmp:
        # One metadata entry only: safetensors writes a map's entries in no fixed order, and
        # byte-identical files for identical weights are what resume tests compare.
        save_file(weights, str(tmp / WEIGHTS), metadata={"model": full["model"]})
        # of the file as written (a caller's meta may carry an older bundle's checksum)
        full[WEIGHTS_SHA256] = file_sha256(tmp / WEIGHTS)
        atomic_write_json(tmp / META, full)
    return folder


def read_bundle_meta(folder: str | Path) -> dict[str, Any]:
    """Read and check bundle.json alone (no weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError("bundle folder not found", folder)
    path = folder / META
    if not path.is_file():
        raise BundleError("missing (not a liverphase bundle?)", path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"invalid JSON: {exc}", path) from None
    if not isinstance(meta, dict):
        raise BundleError("expected a JSON object at the top level", path)
    if meta.get("kind") == "encoder":
        raise BundleError(
            "is a pretrained encoder (from `pretrain`), not a trained model: fine-tune it with "
            "train/cv --init, then predict with that run's bundle",
            path,
        )
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise BundleError(f"missing key(s) {missing}", path)
    problems = {
        "model": isinstance(meta["model"], str),
        "model_options": isinstance(meta["model_options"], dict),
        "class_names": isinstance(meta["class_names"], list) and len(meta["class_names"]) >= 2,
        "phases": isinstance(meta["phases"], list)
        and all(isinstance(p, str) for p in meta["phases"]),
        "in_channels": isinstance(meta["in_channels"], int) and meta["in_channels"] >= 1,
    }
    bad = [k for k, ok in problems.items() if not ok]
    if bad:
        raise BundleError(f"invalid value(s) for {bad}", path)
    return meta


def load_bundle(
    folder: str | Path, device: str | torch.device = "cpu"
) -> tuple[MultiPhaseModel, dict]:
    """Rebuild the model from bundle.json and load model.safetensors into it, in eval mode."""
    folder = Path(folder)
    meta = read_bundle_meta(folder)
    model = _build(meta, folder / META)
    weights_path = folder / WEIGHTS
    if not weights_path.is_file():
        raise BundleError("missing", weights_path)
    try:
        with safe_open(str(weights_path), framework="pt") as fh:
            file_meta = fh.metadata() or {}
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BundleError(
            f"unreadable or truncated safetensors file: {exc}", weights_path
        ) from None
    if file_meta.get("model", meta["model"]) != meta["model"]:
        raise BundleError(
            f"holds weights of model {file_meta['model']!r} but bundle.json names {meta['model']!r}",
            weights_path,
        )
    _check_tensors(model, shapes, weights_path)
    # after the structural checks, which name a wrong or truncated file more precisely
    check_weights_sha256(meta, weights_path)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except Exception as exc:
        raise BundleError(
            f"unreadable or truncated safetensors file: {exc}", weights_path
        ) from None
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def _build(meta: dict[str, Any], path: Path) -> MultiPhaseModel:
    """create_model from the bundle's name and options."""
    # The trained weights come from model.safetensors: the original pretrained file is not needed
    # (and may not exist where the bundle is used).
    options = {**meta["model_options"], "in_channels": meta["in_channels"]}
    options.pop("pretrained", None)
    try:
        return create_model(
            meta["model"], num_classes=len(meta["class_names"]), phases=meta["phases"], **options
        )
    except KeyError as exc:
        raise BundleError(str(exc.args[0]) if exc.args else str(exc), path) from None
    except (TypeError, ValueError) as exc:
        raise BundleError(
            f"cannot build model {meta['model']!r} with options {options}: {exc}", path
        ) from None


def _check_tensors(model: torch.nn.Module, shapes: dict[str, tuple], path: Path) -> None:
    """Name the first problem between the file's tensors and the model's state dict."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    common = len(expected) - len(missing)
    if missing and common < len(expected) / 2:
        raise BundleError(
            f"weights of another model: only {common} of the {len(expected)} tensors the model "
            f"needs are present (e.g. missing {missing[0]!r}, found {(unexpected or ['-'])[0]!r})",
            path,
        )
    if missing:
        raise BundleError(f"missing tensor(s) {missing[:5]} ({len(missing)} in all)", path)
    if unexpected:
        raise BundleError(f"unexpected tensor(s) {unexpected[:5]} ({len(unexpected)} in all)", path)
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise BundleError(
                f"tensor {k!r} has shape {shapes[k]} in the file but the model expects {shape}",
                path,
            )
