"""Pretrained weights: torchvision/MedicalNet key styles, first-conv adaptation, errors, safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.networks.nets import resnet18
from safetensors.torch import save_file

from liverphase.models import create_model
from liverphase.models.encoders import ResNet2d
from liverphase.models.pretrained import adapt_input_conv, load_pretrained

PHASES = ["NC", "ART", "PV", "DL"]


def torchvision_style(in_channels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A resnet18 state dict with torchvision's keys (fc with 1000 classes), random values."""
    torch.manual_seed(seed)
    state = ResNet2d(in_channels=in_channels).state_dict()
    state = {k: v + torch.rand_like(v.float()).to(v.dtype) for k, v in state.items()}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


def test_torchvision_keys_map_and_one_channel_conv_becomes_three(tmp_path: Path):
    src = torchvision_style(in_channels=1)
    path = tmp_path / "resnet18_ddp.pth"
    torch.save({f"module.{k}": v for k, v in src.items()}, path)  # DataParallel-style prefix
    model = create_model("miff_spm", num_classes=2, phases=PHASES, in_channels=3, pretrained=path)
    enc = model.encoder.backbone
    assert torch.equal(enc.layer3[1].conv2.weight, src["layer3.1.conv2.weight"])
    assert torch.equal(
        enc.layer2[0].downsample[1].running_var, src["layer2.0.downsample.1.running_var"]
    )
    conv = enc.conv1.weight
    assert conv.shape == (64, 3, 7, 7)
    # Each new channel carries a third of the kernel, so the summed kernel is the original one.
    assert torch.allclose(conv.sum(dim=1, keepdim=True), src["conv1.weight"], atol=1e-6)
    assert torch.allclose(conv[:, 2:3], src["conv1.weight"] / 3, atol=1e-7)

    report = load_pretrained(model, path)
    assert report["adapted"] == ["encoder.backbone.conv1.weight"]
    assert sorted(report["unused"]) == ["fc.bias", "fc.weight"]
    assert len(report["loaded"]) == len(src) - 2
    assert (
        "head.weight" in report["missing"]
        and "encoder.fusion.0.cbam.0.spatial.conv.weight" in (report["missing"])
    )


def test_three_channel_conv_onto_one_channel_sums_the_kernels(tmp_path: Path):
    src = torchvision_style(in_channels=3)
    path = tmp_path / "timm_resnet18.pth"
    torch.save({"state_dict": src}, path)  # nested, as timm/Lightning checkpoints are
    model = create_model("resnet2d_avg", num_classes=2, phases=PHASES[:2], in_channels=1)
    load_pretrained(model, path)
    got = model.encoder.backbone.conv1.weight
    assert torch.allclose(got, src["conv1.weight"].sum(dim=1, keepdim=True), atol=1e-6)


def test_adapt_input_conv_keeps_the_response_to_a_channel_constant_input():
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3)
    image = torch.randn(1, 1, 9, 9)
    ref = torch.nn.functional.conv2d(image.expand(-1, 3, -1, -1), w)
    for new in (1, 2, 4, 6, 12):
        adapted = adapt_input_conv(w, new)
        assert adapted.shape == (8, new, 3, 3)
        out = torch.nn.functional.conv2d(image.expand(-1, new, -1, -1), adapted)
        assert torch.allclose(out, ref, atol=1e-5), new


def test_medicalnet_weights_onto_the_3d_resnet(tmp_path: Path):
    torch.manual_seed(0)
    med = resnet18(spatial_dims=3, n_input_channels=1, shortcut_type="A", feed_forward=False)
    src = med.state_dict()
    path = tmp_path / "resnet_18_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()}}, path)
    model = create_model("resnet3d18", num_classes=2, phases=PHASES[:2], in_channels=1)
    report = load_pretrained(model, path)
    assert report["adapted"] == ["net.conv1.weight"]
    assert torch.allclose(model.net.conv1.weight, src["conv1.weight"].repeat(1, 2, 1, 1, 1) / 2)
    assert torch.equal(model.net.layer4[1].conv2.weight, src["layer4.1.conv2.weight"])
    # MedicalNet's resnet18 has type-A shortcuts: our projection shortcuts keep their init.
    assert "net.layer2.0.downsample.0.weight" in report["missing"]


def test_a_layer_of_another_shape_is_a_clear_error(tmp_path: Path):
    src = torchvision_style(in_channels=3)
    src["layer2.0.conv1.weight"] = torch.randn(128, 32, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(src, path)
    with pytest.raises(
        ValueError, match=r"layer2\.0\.conv1\.weight.*\(128, 32, 3, 3\).*\(128, 64, 3, 3\)"
    ):
        create_model("resnet2d_avg", num_classes=2, phases=PHASES, pretrained=path)
    # 3D MedicalNet kernels do not fit the 2D encoder's first convolution.
    torch.save({"conv1.weight": torch.randn(64, 1, 7, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"encoder\.backbone\.conv1\.weight.*\(64, 1, 7, 7, 7\)"):
        create_model("resnet2d_avg", num_classes=2, phases=PHASES, pretrained=path)


def test_unreadable_files_are_clear_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="not found"):
        load_pretrained(ResNet2d(), tmp_path / "missing.pth")
    pickled = tmp_path / "object.pth"
    torch.save({"state_dict": Path("x")}, pickled)  # needs a full unpickle: refused
    with pytest.raises(ValueError, match="weights-only"):
        load_pretrained(ResNet2d(), pickled)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"decoder.up.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(ResNet2d(), unrelated)


def test_safetensors_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    model = create_model("miff_spm", num_classes=3, phases=PHASES[:3], in_channels=1)
    x = torch.randn(1, 3, 1, 4, 32, 32)
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial BatchNorm statistics
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    torch.manual_seed(1)
    again = create_model("miff_spm", num_classes=3, phases=PHASES[:3], in_channels=1)
    report = load_pretrained(again, path)
    assert report["unused"] == [] and report["missing"] == [] and report["adapted"] == []
    model.eval()
    again.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
