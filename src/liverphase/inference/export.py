"""ONNX export of a bundle's model, checked against PyTorch with onnxruntime.

The graph takes `x` (batch, P, C, D, H, W) on the bundle's input grid (preprocessing `size`, its
channels and the model's phases) and returns `logits` (plus `seg_logits` for segmenting models).
The batch axis is dynamic when the exporter manages it (checked at batch 2); otherwise the graph is
exported for batch 1 and `dynamic_batch` in the result says so. A fixed random example (seed 0) is
run through both runtimes; a max abs difference of `tolerance` or more raises BundleError, so a
graph that computes something else never ships.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liverphase.atomic import atomic_path
from liverphase.errors import BundleError
from liverphase.train.bundle import load_bundle

TOLERANCE = 1e-4


class _Exported(nn.Module):
    """The model with a tuple of tensors as output (ONNX has no dataclass outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x → (logits,) or (logits, seg_logits)."""
        out = self.model(x)
        return (out.logits,) if out.seg_logits is None else (out.logits, out.seg_logits)


def example_input(meta: dict[str, Any], batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A fixed random input (values in [0, 1]) on the bundle's grid."""
    from liverphase.inference.predictor import bundle_config

    config = bundle_config(meta, Path("."))
    shape = (batch, len(meta["phases"]), int(meta["in_channels"]), *config.size)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _export(
    wrapper: nn.Module, x: torch.Tensor, path: Path, opset: int, names: list[str], dynamic: bool
) -> None:
    kwargs: dict[str, Any] = {
        "input_names": ["x"],
        "output_names": names,
        "opset_version": opset,
        "dynamo": False,
    }
    if dynamic:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (x,), str(path), **kwargs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout/stderr at the file-descriptor level: the TorchScript exporter dumps the whole
    graph there (from C++) when a dynamic batch axis fails, and we then simply retry without it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _run(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})


def _max_diff(wrapper: nn.Module, path: Path, x: torch.Tensor) -> float:
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(x)]
    got = _run(path, x)
    return max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))


def export_onnx(
    bundle_dir: str | Path, onnx_path: str | Path, opset: int = 17, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """Export the bundle's model to `onnx_path` and verify it; returns max_abs_diff and details."""
    bundle_dir, onnx_path = Path(bundle_dir), Path(onnx_path)
    model, meta = load_bundle(bundle_dir, "cpu")
    wrapper = _Exported(model).eval()
    x1 = example_input(meta, 1)
    with torch.no_grad():
        names = ["logits"] if len(wrapper(x1)) == 1 else ["logits", "seg_logits"]
    with atomic_path(onnx_path) as tmp:
        dynamic = True
        try:
            with _quiet():
                _export(wrapper, x1, tmp, opset, names, dynamic=True)
            diff = max(
                _max_diff(wrapper, tmp, x1), _max_diff(wrapper, tmp, example_input(meta, 2, 1))
            )
        except Exception:  # noqa: BLE001 - some graphs only trace at a fixed batch
            dynamic = False
            _export(wrapper, x1, tmp, opset, names, dynamic=False)
            diff = _max_diff(wrapper, tmp, x1)
        if not diff < tolerance:
            raise BundleError(
                f"ONNX export does not match PyTorch (max abs diff {diff:.3g} >= {tolerance:g})",
                onnx_path,
            )
    return {
        "onnx": str(onnx_path),
        "max_abs_diff": diff,
        "opset": opset,
        "dynamic_batch": dynamic,
        "outputs": names,
        "input_shape": list(x1.shape),
    }
