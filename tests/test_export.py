"""ONNX export of a bundle, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from _predict_support import SEG_OPTIONS, make_bundle
from liverphase.errors import BundleError
from liverphase.inference.export import example_input, export_onnx
from liverphase.train.bundle import load_bundle


def test_resnet2d_avg_exports_with_a_dynamic_batch(tmp_path):
    bundle = make_bundle(tmp_path / "b", "resnet2d_avg")
    result = export_onnx(bundle, tmp_path / "m.onnx")
    assert result["max_abs_diff"] < 1e-4
    assert result["dynamic_batch"] and result["outputs"] == ["logits"]
    assert result["input_shape"] == [1, 4, 3, 16, 32, 32]
    # an input the check did not use: batch 3, other values
    model, meta = load_bundle(bundle)
    x = example_input(meta, batch=3, seed=7)
    with torch.no_grad():
        expected = model(x).logits.numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x.numpy()})[0]
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("reading", [None, "radial"])
def test_segmenting_model_exports_both_outputs(tmp_path, reading):
    # the radial region reading fits a moment ellipsoid per case: its inverse must export too
    extra = {"region_kinetics": True, "region_reading": reading} if reading else {}
    bundle = make_bundle(tmp_path / "b", "std_net", {**SEG_OPTIONS, **extra})
    result = export_onnx(bundle, tmp_path / "s.onnx")
    assert result["outputs"] == ["logits", "seg_logits"] and result["max_abs_diff"] < 1e-4


def test_a_mismatch_raises_and_leaves_no_file(tmp_path):
    bundle = make_bundle(tmp_path / "b", "resnet2d_avg")
    with pytest.raises(BundleError, match="does not match PyTorch"):
        export_onnx(bundle, tmp_path / "m.onnx", tolerance=0.0)
    assert not (tmp_path / "m.onnx").exists()


def test_damaged_bundle_is_a_bundle_error(tmp_path):
    bundle = make_bundle(tmp_path / "b", "resnet2d_avg")
    (bundle / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="model.safetensors"):
        export_onnx(bundle, tmp_path / "m.onnx")
