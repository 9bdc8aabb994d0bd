"""One prediction path (issue #35): the trainer's test predictions, `evaluate` and `predict` all go
through `data.forward.predict_batch` and give one study the same class and lesion probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import liverphase.evaluate.external as external
import liverphase.inference.predictor as predictor_module
import liverphase.train.trainer as trainer_module
from _predict_support import PHASES, SIZE, make_cohort
from liverphase.data import forward
from liverphase.data.dataset import CachedStudyDataset, write_toy_items
from liverphase.inference.run import read_dicom
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import create_model
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train import TrainConfig, Trainer, load_bundle
from liverphase.train.bundle import save_bundle

CLASSES = ["HCC", "ICC"]
CALLERS = {"trainer": trainer_module, "evaluate": external, "predict": predictor_module}
# (model, options, roi_channel, test-time flips of its recipe)
BUNDLES = {
    "segmenting": ("std_net", {"base_channels": 4, "scales": 3}, False, (1, 2)),
    "roi_classifier": ("miff_spm", {"region_kinetics": True}, True, (2,)),
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    make_cohort(root)
    for name, (model, options, roi, flips) in BUNDLES.items():
        torch.manual_seed(0)
        config = PreprocessConfig(size=SIZE, phases=tuple(PHASES), roi_channel=roi)
        net = create_model(model, 2, PHASES, in_channels=config.n_channels, **options)
        meta = {
            "model": model,
            "model_options": options,
            "class_names": CLASSES,
            "reference_phase": "PV",
            "preprocessing": config.to_dict(),
            "training": {"tta_flip_axes": list(flips)},
        }
        save_bundle(root / name, net, meta)
    return root


@pytest.fixture()
def calls(monkeypatch) -> dict[str, list]:
    """predict_batch wrapped in each caller's namespace: who called it, with what, and its result."""
    seen: dict[str, list] = {name: [] for name in CALLERS}
    for name, module in CALLERS.items():

        def counted(model, batch, *args, _name=name, **kwargs):
            result = forward.predict_batch(model, batch, *args, **kwargs)
            seen[_name].append((batch, result))
            return result

        monkeypatch.setattr(module, "predict_batch", counted)
    return seen


def _predict_and_cache(work: Path, bundle: str, study, mask, monkeypatch) -> tuple[dict, dict]:
    """Predict `study` with the Predictor, and write the arrays its model read (the preprocessed
    crop in bundle phase order, the lesion mask on the crop grid, the phases present) as a cached
    item, as `cv` and `evaluate` read studies."""
    arrays: dict = {}

    def study_batch(image, roi=None, present=None):
        arrays.update(image=image, roi=roi, present=present)
        return forward.study_batch(image, roi, present)

    monkeypatch.setattr(predictor_module, "study_batch", study_batch)
    out = predictor_module.Predictor(work / bundle).predict_study(
        study, work / f"out_{bundle}_{study.case_id}", mask=mask, cam=False, report=False
    )
    folder = work / f"cache_{bundle}_{study.case_id}"
    folder.mkdir(exist_ok=True)
    np.save(folder / "image.npy", arrays["image"])
    item = {"case_id": study.case_id, "patient_id": "P0", "label": "ICC"}
    item["image"] = str(folder / "image.npy")
    item["mask"] = None
    if arrays["roi"] is not None:
        np.save(folder / "mask.npy", np.asarray(arrays["roi"], np.uint8))
        item["mask"] = str(folder / "mask.npy")
    if not all(arrays["present"]):
        item["present"] = list(arrays["present"])
    return out, item


def _three_paths(work: Path, bundle: str, study, mask, calls, monkeypatch) -> dict[str, tuple]:
    """(class probabilities (K,), lesion probability or None) of one study by each caller."""
    prediction, item = _predict_and_cache(work, bundle, study, mask, monkeypatch)
    model, meta = load_bundle(work / bundle)
    flips = tuple(meta["training"]["tta_flip_axes"])
    roi = bool(meta["preprocessing"]["roi_channel"])
    found = calls["predict"][-1][1]
    # the probabilities prediction.json reports (6 decimals) are the shared path's
    reported = [prediction["probabilities"][c] for c in CLASSES]
    np.testing.assert_allclose(reported, found.probs[0], rtol=0, atol=1e-6)
    # the Predictor's model input is exactly what the cache's dataset gives for the same arrays
    given = CachedStudyDataset([item], {c: i for i, c in enumerate(CLASSES)}, roi_channel=roi)[0]
    assert torch.equal(calls["predict"][-1][0]["image"], given["image"][None])

    config = TrainConfig.from_dict({"model": meta["model"], "tta_flip_axes": list(flips)})
    trainer = Trainer(
        config, lambda: model, [], [], work / "trainer", CLASSES, device="cpu",
        progress=False, tensorboard=False, roi_channel=roi,
    )  # fmt: skip
    trainer.model = model  # the bundle's weights, as fit() leaves its best epoch's
    t_probs, t_lesion = trainer.predict([item], return_lesion_prob=True)
    e_probs, e_lesion = external.predict_items(
        model, [item], CLASSES, flip_axes=flips, roi_channel=roi
    )
    return {
        "trainer": (t_probs[0], t_lesion[0]),
        "evaluate": (e_probs[0], None if e_lesion is None else e_lesion[0]),
        "predict": (found.probs[0], None if found.lesion is None else found.lesion[0]),
    }


def _assert_same(paths: dict[str, tuple], segments: bool) -> None:
    ref_probs, ref_lesion = paths["predict"]
    assert ref_probs.shape == (len(CLASSES),) and ref_probs.sum() == pytest.approx(1, abs=1e-5)
    for name, (probs, lesion) in paths.items():
        np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-6, err_msg=name)
        if segments:
            assert lesion is not None and lesion.shape == ref_lesion.shape == SIZE
            np.testing.assert_allclose(lesion, ref_lesion, rtol=0, atol=1e-6, err_msg=name)
        else:
            assert lesion is None


@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_trainer_evaluate_and_predict_agree_on_a_cached_study(
    work, bundle, calls, monkeypatch
) -> None:
    study = read_dicom(work / "ds" / "dicom" / "CT0000")
    mask = work / "ds" / "dicom" / "CT0000_mask.nii.gz"
    paths = _three_paths(work, bundle, study, mask, calls, monkeypatch)
    _assert_same(paths, segments=bundle == "segmenting")
    # each caller went through the one shared function (a copy of its own would count nothing)
    assert {name: len(seen) for name, seen in calls.items()} == {n: 1 for n in CALLERS}


def test_a_study_lacking_a_phase_is_masked_alike_on_every_path(work, calls, monkeypatch) -> None:
    """The phases a cached item lacks reach the model through its phase mask in `evaluate` too
    (before issue #35 evaluate zeroed them but left them unmasked, unlike cv and predict)."""
    study = open_dataset(work / "ds").load_study("CT0001")
    del study.phases["DL"]
    paths = _three_paths(work, "segmenting", study, None, calls, monkeypatch)
    _assert_same(paths, segments=True)
    for name in ("trainer", "evaluate", "predict"):
        (batch, _), *_ = calls[name]
        assert batch["phase_mask"].tolist() == [[True, True, True, False]], name


def test_slice_probabilities_of_the_trainer_are_the_shared_paths(tmp_path, calls) -> None:
    """A slice-wise model (cirrhosis_msa): per-slice class probabilities (D, K) averaged over the
    flips, through the one path, with a sequence a study lacks masked."""
    items = write_toy_items(tmp_path, 3, shape=(2, 1, 8, 32, 32), with_masks=False)
    for item, present in zip(items, ([True, True], [True, False], [True, True]), strict=True):
        item["present"] = present  # as cached_items marks every item of such a dataset
    torch.manual_seed(0)
    phases = ["T1W", "T2W"]
    model = create_model("cirrhosis_msa", 2, phases, in_channels=1, width=8, blocks=1).eval()
    config = TrainConfig.from_dict(
        {"model": "cirrhosis_msa", "batch_size": 2, "tta_flip_axes": [0, 2]}
    )
    trainer = Trainer(
        config, lambda: model, [], [], tmp_path / "t", CLASSES, device="cpu",
        progress=False, tensorboard=False,
    )  # fmt: skip
    trainer.model = model
    probs, slices = trainer.predict(items, return_slice_prob=True)
    assert len(calls["trainer"]) == 2  # batches of 2
    dataset = CachedStudyDataset(items, {c: i for i, c in enumerate(CLASSES)})
    for i in range(len(items)):
        batch = {k: v[None] for k, v in dataset[i].items() if torch.is_tensor(v)}
        one = forward.predict_batch(model, batch, (0, 2))
        np.testing.assert_allclose(probs[i], one.probs[0], rtol=0, atol=1e-6)
        assert slices[i].shape == (8, 2) and one.slices is not None
        np.testing.assert_allclose(slices[i], one.slices[0], rtol=0, atol=1e-6)
        if i == 1:  # the missing sequence is masked, not read as zeros
            plain = forward.predict_batch(model, {"image": batch["image"]}, (0, 2))
            assert np.abs(plain.probs[0] - one.probs[0]).max() > 1e-4
