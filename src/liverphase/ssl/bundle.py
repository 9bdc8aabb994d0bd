"""Encoder bundles: what pretraining writes and `train`/`cv --init` reads; loading never unpickles.

An encoder bundle is a folder like a model bundle (DESIGN "Checkpoint bundle") holding the per-phase
encoder only: `model.safetensors` with the encoder's tensors under the encoder's own names (the
model's parameter names without its `encoder_prefix`), and `bundle.json` with `"kind": "encoder"`,
the model name and options it was pretrained in, phases, preprocessing, method, epochs and seed.
Any model whose `ssl_encoder()` has exactly those names and shapes can start from it: the rest of
that model (decoder, fusion, head) keeps its fresh initialisation.
"""

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
from liverphase.errors import BundleError, ConfigError
from liverphase.models.registry import EncoderView, MultiPhaseModel

WEIGHTS = "model.safetensors"
META = "bundle.json"
FORMAT = "liverphase-bundle-1"
KIND = "encoder"


def model_encoder(model: MultiPhaseModel, why: str) -> EncoderView:
    """The model's per-phase encoder, or a ConfigError saying which model has none and `why` it
    was asked for."""
    try:
        return model.ssl_encoder()
    except NotImplementedError as exc:
        raise ConfigError(f"{why}: {exc}", "--model") from None


def encoder_tensors(model: MultiPhaseModel) -> dict[str, torch.Tensor]:
    """The encoder's state dict as contiguous CPU copies, under the encoder's own names."""
    view = model_encoder(model, "cannot save an encoder")
    return {k: v.detach().cpu().clone().contiguous() for k, v in view.state_dict().items()}


def save_encoder_bundle(folder: str | Path, model: MultiPhaseModel, meta: dict[str, Any]) -> Path:
    """Write the encoder bundle of `model` atomically; `meta` must name the model (registry name)."""
    if "model" not in meta:
        raise ValueError("encoder bundle meta needs 'model' (the registered name)")
    folder = Path(folder)
    view = model_encoder(model, "cannot save an encoder")
    tensors = encoder_tensors(model)
    full = {
        "format": FORMAT,
        "kind": KIND,
        "liverphase_version": liverphase.__version__,
        "model_options": {},
        "phases": list(model.phases),
        "in_channels": int(model.in_channels),
        "encoder_prefix": model.encoder_prefix,
        "encoder_channels": view.out_channels,
        "encoder_stride": view.stride,
        "tensors": len(tensors),
        **meta,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_dir(folder) as tmp:
        # one metadata entry: safetensors writes a map's entries in no fixed order, and resume is
        # checked by byte-identical files
        save_file(tensors, str(tmp / WEIGHTS), metadata={"kind": KIND})
        full[WEIGHTS_SHA256] = file_sha256(tmp / WEIGHTS)
        atomic_write_json(tmp / META, full)
    return folder


def read_encoder_meta(folder: str | Path) -> dict[str, Any]:
    """bundle.json of an encoder bundle; BundleError for a missing folder, bad JSON or another kind."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError("encoder bundle folder not found", folder)
    path = folder / META
    if not path.is_file():
        raise BundleError("bundle.json missing (not a liverphase bundle?)", folder)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"bundle.json is not valid JSON ({exc})", folder) from None
    if not isinstance(meta, dict):
        raise BundleError("bundle.json: expected a JSON object", folder)
    kind = meta.get("kind")
    if kind != KIND:
        what = "a trained model's bundle" if kind is None else f"a bundle of kind {kind!r}"
        raise BundleError(
            f"{what}, not an encoder bundle (--init takes the OUT/bundle `liverphase pretrain` writes)",
            folder,
        )
    return meta


def _file_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    path = folder / WEIGHTS
    if not path.is_file():
        raise BundleError(f"{WEIGHTS} missing", folder)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BundleError(f"{WEIGHTS} unreadable or truncated ({exc})", folder) from None


def check_encoder_bundle(folder: str | Path, model: MultiPhaseModel) -> dict[str, Any]:
    """Check, without loading the weights, that the bundle's encoder fits `model` by names and shapes;
    return its bundle.json. Every problem is one BundleError/ConfigError naming the bundle."""
    folder = Path(folder)
    meta = read_encoder_meta(folder)
    view = model_encoder(model, f"cannot initialise from {folder}")
    shapes = _file_shapes(folder)
    expected = {k: tuple(v.shape) for k, v in view.state_dict().items()}
    source = f"pretrained as {meta.get('model')!r} with options {meta.get('model_options')}"
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise BundleError(
            f"its encoder does not fit model {type(model).__name__}'s encoder ({detail}; {source})",
            folder,
        )
    for k, shape in expected.items():
        if shapes[k] != shape:
            raise BundleError(
                f"its encoder does not fit: tensor {k!r} is {list(shapes[k])} in the bundle but "
                f"{list(shape)} in the model ({source})",
                folder,
            )
    return meta


def load_encoder(model: MultiPhaseModel, folder: str | Path) -> dict[str, Any]:
    """Copy the bundle's encoder tensors into `model`'s encoder (everything else untouched);
    return the bundle's bundle.json."""
    folder = Path(folder)
    meta = check_encoder_bundle(folder, model)
    check_weights_sha256(meta, folder / WEIGHTS)
    try:
        tensors = load_file(str(folder / WEIGHTS), device="cpu")
    except Exception as exc:
        raise BundleError(f"{WEIGHTS} unreadable or truncated ({exc})", folder) from None
    model.ssl_encoder().load_state_dict(tensors, strict=True)
    return meta


def init_record(folder: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned run records about the encoder it started from (bundle.json "init")."""
    keys = ("model", "model_options", "method", "epochs", "seed", "phases", "created")
    return {"bundle": str(Path(folder).resolve()), **{k: meta.get(k) for k in keys}}


def set_encoder_frozen(model: MultiPhaseModel, frozen: bool) -> None:
    """Freeze (requires_grad False: no gradient, so the optimiser skips them) or unfreeze the
    encoder's parameters."""
    for p in model_encoder(model, "cannot freeze the encoder").parameters():
        p.requires_grad_(not frozen)
