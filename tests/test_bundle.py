"""Checkpoint bundles: round trip, no pickle, and a BundleError naming the file for each damage."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from _trainer_support import register, unregister
from liverphase.errors import BundleError
from liverphase.models.registry import create_model
from liverphase.train.bundle import META, WEIGHTS, load_bundle, read_bundle_meta, save_bundle

PHASES = ["NC", "ART", "PV"]


@pytest.fixture(scope="module", autouse=True)
def tiny_models():
    """The tiny test models, registered for this module only."""
    register()
    yield
    unregister()


def tiny(name: str = "tiny_test_model", **options):
    torch.manual_seed(0)
    return create_model(name, num_classes=3, phases=PHASES, in_channels=2, **options)


@pytest.fixture
def bundle(tmp_path):
    model = tiny(width=5)
    meta = {
        "model": "tiny_test_model",
        "model_options": {"width": 5},
        "class_names": ["HCC", "ICC", "META"],
        "preprocessing": {"size": [4, 8, 8]},
        "split": {"train": ["a"], "test": ["b"]},
        "metrics": {"val_auc": 0.9},
        "seed": 3,
    }
    return save_bundle(tmp_path / "bundle", model, meta), model


def test_round_trip_gives_identical_predictions(bundle):
    folder, model = bundle
    assert sorted(p.name for p in folder.iterdir()) == [META, WEIGHTS]  # nothing pickled
    loaded, meta = load_bundle(folder)
    x = torch.randn(2, 3, 2, 4, 8, 8)
    model.eval()
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert not loaded.training
    assert meta["phases"] == PHASES and meta["in_channels"] == 2
    assert meta["class_names"] == ["HCC", "ICC", "META"]
    assert meta["model_options"] == {"width": 5} and meta["seed"] == 3
    assert meta["preprocessing"] == {"size": [4, 8, 8]} and meta["metrics"] == {"val_auc": 0.9}
    assert meta["liverphase_version"] and meta["created"]
    assert read_bundle_meta(folder) == meta


def test_save_replaces_an_existing_bundle_whole(bundle, tmp_path):
    folder, _ = bundle
    other = tiny(width=5)
    torch.nn.init.zeros_(other.head.weight)
    save_bundle(folder, other, {**read_bundle_meta(folder), "seed": 9})
    loaded, meta = load_bundle(folder)
    assert meta["seed"] == 9 and torch.count_nonzero(loaded.head.weight) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temporary folders left


def edit_meta(folder, **changes):
    meta = json.loads((folder / META).read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del meta[key]
    (folder / META).write_text(json.dumps(meta))


def edit_weights(folder, fn):
    tensors = load_file(str(folder / WEIGHTS))
    save_file(fn(tensors), str(folder / WEIGHTS), metadata={"model": "tiny_test_model"})


def expect(folder, file, *patterns):
    with pytest.raises(BundleError) as err:
        load_bundle(folder)
    assert err.value.path == str(file)
    for pattern in patterns:
        assert pattern in str(err.value), str(err.value)
    return str(err.value)


def test_missing_folder_and_files(bundle, tmp_path):
    folder, _ = bundle
    expect(tmp_path / "nowhere", tmp_path / "nowhere", "not found")
    (folder / WEIGHTS).unlink()
    expect(folder, folder / WEIGHTS, "missing")
    (folder / META).unlink()
    expect(folder, folder / META, "missing")


def test_bad_json_and_missing_keys(bundle):
    folder, _ = bundle
    text = (folder / META).read_text()
    (folder / META).write_text(text[: len(text) // 2])
    expect(folder, folder / META, "invalid JSON")
    (folder / META).write_text(text)
    edit_meta(folder, phases=None, model_options=None)
    expect(folder, folder / META, "missing key(s)", "model_options", "phases")
    (folder / META).write_text(text)
    edit_meta(folder, in_channels="two")
    expect(folder, folder / META, "in_channels")


def test_unknown_model_and_bad_options(bundle):
    folder, _ = bundle
    edit_meta(folder, model="no_such_model")
    assert "unknown model 'no_such_model'" in expect(folder, folder / META)
    edit_meta(folder, model="tiny_test_model", model_options={"nonsense": 1})
    expect(folder, folder / META, "cannot build model", "nonsense")


def test_truncated_or_garbage_weights(bundle):
    folder, _ = bundle
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) - 100])
    expect(folder, folder / WEIGHTS, "unreadable or truncated")
    (folder / WEIGHTS).write_bytes(b"\x80\x04not a safetensors file at all")
    expect(folder, folder / WEIGHTS, "unreadable or truncated")


def test_missing_unexpected_and_misshapen_tensors(bundle):
    folder, _ = bundle
    original = (folder / WEIGHTS).read_bytes()
    edit_weights(folder, lambda t: {k: v for k, v in t.items() if k != "head.bias"})
    expect(folder, folder / WEIGHTS, "missing tensor(s) ['head.bias']")
    (folder / WEIGHTS).write_bytes(original)
    edit_weights(folder, lambda t: {**t, "extra.weight": torch.zeros(2)})
    expect(folder, folder / WEIGHTS, "unexpected tensor(s) ['extra.weight']")
    (folder / WEIGHTS).write_bytes(original)
    edit_weights(folder, lambda t: {**t, "head.weight": torch.zeros(3, 4)})
    expect(folder, folder / WEIGHTS, "'head.weight'", "(3, 4)", "(3, 5)")


def test_weights_of_another_model(bundle, tmp_path):
    folder, _ = bundle
    other = save_bundle(
        tmp_path / "other",
        tiny("tiny_other_test_model"),
        {"model": "tiny_other_test_model", "class_names": ["a", "b", "c"]},
    )
    (folder / WEIGHTS).write_bytes((other / WEIGHTS).read_bytes())
    expect(folder, folder / WEIGHTS, "weights of model 'tiny_other_test_model'", "tiny_test_model")
    # Without the name in the file's metadata, the tensor names give it away.
    save_file(load_file(str(other / WEIGHTS)), str(folder / WEIGHTS))
    expect(folder, folder / WEIGHTS, "weights of another model", "'proj.bias'")


def test_save_checks_meta(tmp_path):
    with pytest.raises(ValueError, match="3 classes"):
        save_bundle(tmp_path / "b", tiny(), {"model": "tiny_test_model", "class_names": ["a", "b"]})
    with pytest.raises(ValueError, match="'model'"):
        save_bundle(tmp_path / "b", tiny(), {"class_names": ["a", "b", "c"]})


def test_an_encoder_bundle_is_refused_with_what_to_do(tmp_path):
    import json

    from liverphase.errors import BundleError
    from liverphase.train.bundle import read_bundle_meta

    (tmp_path / "bundle.json").write_text(json.dumps({"kind": "encoder", "model": "std_net"}))
    with pytest.raises(BundleError, match="pretrained encoder.*--init"):
        read_bundle_meta(tmp_path)
