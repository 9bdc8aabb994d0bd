"""Pretraining loop, encoder bundles and fine-tuning from them (`--init`, `--freeze-epochs`), and the
CLI: the MAE loss falls, runs are deterministic and resume to the same bytes, unlabeled studies
count, and a bundle that does not fit is one clear error."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.data.dataset import write_toy_items
from liverphase.errors import BundleError, ConfigError
from liverphase.models import create_model
from liverphase.ssl.bundle import load_encoder, save_encoder_bundle, set_encoder_frozen
from liverphase.ssl.pretrain import PretrainConfig, pretrain
from liverphase.train import TrainConfig, Trainer
from liverphase.train.bundle import save_bundle

PHASES = ["PRE", "ART", "PV"]
OPTIONS = {"in_channels": 1, "base_channels": 4, "scales": 3}
SMALL = {"projector_hidden": 32, "projector_out": 32, "probe_folds": 2}


def std_net(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("std_net", 2, PHASES, **{**OPTIONS, **options})


def structured_items(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """Studies with shared anatomy across phases (a few smooth blobs), each phase its own gain and
    offset plus a little noise: a hidden patch of one phase is predictable from the others."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(np.arange(8), np.arange(16), np.arange(16), indexing="ij")
    items = []
    for i in range(n):
        base = np.zeros((8, 16, 16))
        for _ in range(4):
            c, r = rng.uniform([0, 0, 0], [8, 16, 16]), rng.uniform(2, 5)
            base += rng.uniform(0.5, 1.5) * np.exp(
                -((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * r * r)
            )
        gains, offsets = rng.uniform(0.5, 2.0, 3), rng.uniform(-0.5, 0.5, 3)
        image = np.stack([g * base + o for g, o in zip(gains, offsets, strict=True)])[:, None]
        image += rng.normal(0, 0.02, image.shape)
        path = folder / f"s{i:02d}.npy"
        np.save(path, image.astype(np.float32))
        label = ("A", "B")[i % 2] if i < n - 2 else None  # the last two are unlabeled
        items.append(
            {"case_id": f"s{i:02d}", "patient_id": f"P{i}", "label": label, "image": str(path)}
        )
    return items


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return structured_items(tmp_path_factory.mktemp("ssl") / "items", 10)


def run(items, out, method, **settings):
    cfg = PretrainConfig.from_dict({"method": method, **SMALL, **settings})
    meta = {"model": "std_net", "model_options": OPTIONS, "phases": PHASES}
    return pretrain(items, out, lambda: std_net(), cfg, meta, progress=False)


def test_mae_loss_falls_on_a_toy_set(items: list[dict], tmp_path: Path) -> None:
    result = run(items, tmp_path, "mae", epochs=12, batch_size=4, lr=3e-3, probe_every=0)
    losses = [r["loss"] for r in result["history"]]  # 3 steps an epoch: 36 steps
    assert np.mean(losses[-2:]) < 0.6 * losses[0], losses


@pytest.mark.parametrize("method", ["mae", "barlow", "vicreg"])
def test_pretrain_writes_log_bundle_and_reads_unlabeled_studies(
    items: list[dict], tmp_path: Path, method: str
) -> None:
    result = run(items, tmp_path, method, epochs=2, batch_size=4)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("loss", "probe_auc", "lr", "seconds", "samples_per_s", "max_rss_mb"):
        assert math.isfinite(float(rows[-1][col])), col
    if method == "vicreg":
        assert {"invariance", "variance", "covariance"} <= set(rows[0])
    seen = result["history"][0]["samples_per_s"] * result["history"][0]["seconds"]
    # all 10 studies (2 unlabeled) are read; two-view methods drop the incomplete batch of 2
    assert round(seen) == (10 if method == "mae" else 8)
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["kind"] == "encoder" and meta["method"] == method and meta["epochs"] == 2
    assert meta["studies"] == 10 and meta["labeled"] == 8 and meta["encoder_prefix"] == "encoder."
    tensors = load_file(tmp_path / "bundle" / "model.safetensors")
    assert set(tensors) == set(std_net().ssl_encoder().state_dict())  # the encoder only


@pytest.mark.parametrize("method", ["mae", "vicreg"])
def test_pretraining_is_deterministic_and_resumes_to_the_same_bytes(
    items: list[dict], tmp_path: Path, method: str
) -> None:
    settings = {"epochs": 3, "batch_size": 4, "mask_ratio": 0.5}
    run(items, tmp_path / "a", method, **settings)

    class Killed(Exception):
        pass

    def kill(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Killed

    cfg = PretrainConfig.from_dict({"method": method, **SMALL, **settings})
    meta = {"model": "std_net", "model_options": OPTIONS, "phases": PHASES}
    with pytest.raises(Killed):
        pretrain(items, tmp_path / "b", std_net, cfg, meta, progress=False, callbacks=[kill])
    resumed = pretrain(items, tmp_path / "b", std_net, cfg, meta, progress=False, resume=True)
    assert len(resumed["history"]) == 3
    a = (tmp_path / "a" / "bundle" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "bundle" / "model.safetensors").read_bytes()
    log_a = list(csv.DictReader((tmp_path / "a" / "log.csv").open()))
    log_b = list(csv.DictReader((tmp_path / "b" / "log.csv").open()))
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    other = PretrainConfig.from_dict({"method": method, **SMALL, **settings, "mask_ratio": 0.7})
    with pytest.raises(ConfigError, match="mask_ratio"):
        pretrain(items, tmp_path / "b", std_net, other, meta, progress=False, resume=True)


def test_pretrain_refuses_what_it_cannot_do(items: list[dict], tmp_path: Path) -> None:
    meta = {"model": "resnet3d18"}
    resnet = lambda: create_model("resnet3d18", 2, PHASES, in_channels=1)  # noqa: E731
    with pytest.raises(ConfigError, match="no per-phase encoder"):
        pretrain(items, tmp_path, resnet, PretrainConfig(), meta, progress=False)
    with pytest.raises(ConfigError, match="patch_size"):
        run(items, tmp_path, "mae", patch_size=[2, 4, 4])  # not a multiple of the stride 4
    with pytest.raises(ConfigError, match="batch_size"):
        PretrainConfig(method="vicreg", batch_size=1).validate()


# ----------------------------------------------------------------------------- --init
@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("enc") / "bundle"
    source = std_net(seed=7)  # weights no fresh model has
    save_encoder_bundle(
        folder, source, {"model": "std_net", "model_options": OPTIONS, "method": "mae"}
    )
    return folder


def test_init_loads_exactly_the_encoder(encoder_bundle: Path) -> None:
    saved = load_file(encoder_bundle / "model.safetensors")
    model, fresh = std_net(seed=0), std_net(seed=0)
    meta = load_encoder(model, encoder_bundle)
    assert meta["method"] == "mae"
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(tensor, saved[name[len("encoder.") :]]), name
            assert not torch.equal(tensor, fresh.state_dict()[name]), name
        else:  # decoder, fusion and head stay the fresh model's with the same seed
            assert torch.equal(tensor, fresh.state_dict()[name]), name


def test_init_refuses_a_bundle_that_does_not_fit(encoder_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not fit") as wider:
        load_encoder(std_net(base_channels=8), encoder_bundle)
    assert str(encoder_bundle) in str(wider.value) and "\n" not in str(wider.value)
    with pytest.raises(BundleError, match="missing"):
        load_encoder(std_net(scales=4), encoder_bundle)
    with pytest.raises(ConfigError, match="no per-phase encoder"):
        load_encoder(create_model("resnet3d18", 2, PHASES, in_channels=1), encoder_bundle)
    trained = tmp_path / "trained"
    save_bundle(trained, std_net(), {"model": "std_net", "class_names": ["A", "B"]})
    with pytest.raises(BundleError, match="not an encoder bundle"):
        load_encoder(std_net(), trained)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "bundle.json").write_text((encoder_bundle / "bundle.json").read_text())
    data = (encoder_bundle / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        load_encoder(std_net(), truncated)
    with pytest.raises(BundleError, match="not found"):
        load_encoder(std_net(), tmp_path / "nowhere")


def test_freeze_keeps_the_encoder_for_k_epochs_then_trains_it(
    encoder_bundle: Path, tmp_path: Path
) -> None:
    train = write_toy_items(tmp_path / "train", 8, shape=(3, 1, 8, 16, 16), classes=("A", "B"))
    val = write_toy_items(tmp_path / "val", 4, shape=(3, 1, 8, 16, 16), classes=("A", "B"), seed=1)
    cfg = TrainConfig.from_dict(
        {"model": "std_net", "model_options": OPTIONS, "epochs": 2, "batch_size": 4,
         "init": str(encoder_bundle), "freeze_epochs": 1, "augment": False, "tta_flip_axes": []}
    )  # fmt: skip
    saved = load_file(encoder_bundle / "model.safetensors")
    snapshots: list[dict] = []
    trainer = Trainer(
        cfg,
        lambda: create_model("std_net", 2, PHASES, **OPTIONS),
        train,
        val,
        tmp_path / "run",
        ["A", "B"],
        progress=False,
        tensorboard=False,
        callbacks=[
            lambda e, r: snapshots.append(
                {k: v.clone() for k, v in trainer.model.state_dict().items()}
            )
        ],
    )
    trainer.fit()
    first, second = snapshots
    enc = [k for k in first if k.startswith("encoder.")]
    assert all(torch.equal(first[k], saved[k[len("encoder.") :]]) for k in enc)
    head = [k for k in first if k.startswith("head.") and first[k].is_floating_point()]
    fresh = std_net(seed=0).state_dict()
    assert any(not torch.equal(first[k], fresh[k]) for k in head)  # the head trained meanwhile
    assert any(not torch.equal(second[k], first[k]) for k in enc)  # unfrozen in epoch 2
    assert all(p.requires_grad for p in trainer.model.parameters())
    meta = json.loads((tmp_path / "run" / "bundle" / "bundle.json").read_text())
    assert (
        meta["training"]["init"] == str(encoder_bundle) and meta["training"]["freeze_epochs"] == 1
    )
    assert (
        meta["init"]["bundle"] == str(encoder_bundle.resolve()) and meta["init"]["method"] == "mae"
    )


def test_set_encoder_frozen_toggles_only_the_encoder() -> None:
    model = std_net()
    set_encoder_frozen(model, True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    set_encoder_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_epochs_needs_init() -> None:
    with pytest.raises(ConfigError, match="freeze_epochs"):
        TrainConfig.from_dict({"freeze_epochs": 2})


# ----------------------------------------------------------------------------- CLI
RUNNER = CliRunner()


def _invoke(args: list[str]) -> tuple[int, str]:
    result = RUNNER.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_cli_pretrain_then_cv_from_the_encoder(tmp_path: Path) -> None:
    from liverphase.synth.ct import synth_ct_cohort

    data = synth_ct_cohort(tmp_path / "ds", cases=12, seed=3, preset="tiny")
    config = tmp_path / "small.yaml"
    config.write_text("preprocess:\n  size: [8, 16, 16]\n  register: false\n")
    small = ["--config", config, "-o", "scales=3", "-o", "base_channels=4", "--in-channels", 1]
    cache = tmp_path / "cache"
    code, out = _invoke(
        ["pretrain", data, "--out", tmp_path / "pre", "--method", "vicreg", "--epochs", 1,
         "--batch-size", 4, "-s", "projector_hidden=32", "-s", "projector_out=32",
         "--cache", cache, *small]
    )  # fmt: skip
    assert code == 0, out
    bundle = tmp_path / "pre" / "bundle"
    assert "probe AUC" in out and json.loads((bundle / "bundle.json").read_text())["studies"] == 12
    code, out = _invoke(
        ["cv", data, "--model", "std_net", "--folds", 2, "--epochs", 2, "--out", tmp_path / "cv",
         "--init", bundle, "--freeze-epochs", 1, "--cache", cache, *small]
    )  # fmt: skip
    assert code == 0, out
    run_json = json.loads((tmp_path / "cv" / "run.json").read_text())
    assert run_json["training"]["init"] == str(bundle.resolve())
    assert run_json["training"]["freeze_epochs"] == 1
    fold = json.loads((tmp_path / "cv" / "fold_0" / "bundle" / "bundle.json").read_text())
    assert fold["init"]["method"] == "vicreg"
    code, out = _invoke(
        ["train", data, "--model", "std_net", "--out", tmp_path / "t", "--init", bundle,
         "--config", config, "-o", "scales=3", "-o", "base_channels=8", "--in-channels", 1]
    )  # fmt: skip
    assert code == 2 and "does not fit" in out and str(bundle) in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "t" / "cache").exists()


def test_cli_user_errors_are_one_line(encoder_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "missing"
    code, out = _invoke(["pretrain", data, "--out", tmp_path / "o", "--method", "simclr"])
    assert code == 2 and "method" in out and len(out.strip().splitlines()) == 1
    code, out = _invoke(["cv", data, "--out", tmp_path / "o", "--freeze-epochs", 2])
    assert code == 2 and len(out.strip().splitlines()) == 1
