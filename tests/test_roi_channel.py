"""The lesion ROI as an input channel (`preprocess.roi_channel`) and miff_spm's region reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _predict_support import make_bundle, make_cohort
from liverphase.data.augment import AugmentConfig, Augmenter
from liverphase.data.dataset import CachedStudyDataset, write_toy_items
from liverphase.errors import ConfigError, DatasetError, LiverphaseError
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom
from liverphase.models.heads import region_enhancement
from liverphase.models.registry import create_model
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.roi import with_roi_channel
from liverphase.train.config import TrainConfig
from liverphase.train.recipe import build_optimizer

PHASES = ["NC", "ART", "PV", "DL"]


def test_config_counts_the_roi_channel_and_keeps_the_cache_key() -> None:
    plain, roi = PreprocessConfig(), PreprocessConfig(roi_channel=True)
    assert (plain.n_windows, plain.n_channels) == (3, 3)
    assert (roi.n_windows, roi.n_channels) == (3, 4)
    assert PreprocessConfig(channels=1, roi_channel=True).n_channels == 2
    # the cached arrays do not change, so neither does the key; resolved() records the windows
    assert roi.key_dict() == plain.key_dict()
    assert roi.resolved(PHASES).channels == 3
    with pytest.raises(ConfigError, match="roi_channel"):
        PreprocessConfig(roi_channel=True, roi_source="image").validate()


def test_with_roi_channel_repeats_the_mask_after_the_intensities() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 2, 4, 5, 6)).astype(np.float32)
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 0:2, 4:6] = 7  # any non-zero label is lesion
    out = with_roi_channel(image, mask)
    assert out.shape == (3, 3, 4, 5, 6) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :2], image)
    for p in range(3):
        np.testing.assert_array_equal(out[p, 2], (mask > 0).astype(np.float32))
    with pytest.raises(ValueError, match="does not match"):
        with_roi_channel(image, mask[:, :4])


def test_dataset_roi_channel_follows_the_augmented_mask(tmp_path) -> None:
    items = write_toy_items(tmp_path, 2, shape=(2, 1, 6, 12, 12), seed=1)
    mask = np.zeros((6, 12, 12), np.uint8)
    mask[2:4, 1:4, 7:11] = 1  # off-centre: a flip or rotation moves it
    for it in items:
        np.save(it["mask"], mask)
    aug = Augmenter(AugmentConfig(flip_prob=1.0, rotate_prob=1.0, intensity_prob=1.0))
    ds = CachedStudyDataset(items, {"HCC": 0, "ICC": 1}, aug, seed=0, roi_channel=True)
    plain = CachedStudyDataset(items, {"HCC": 0, "ICC": 1}, aug, seed=0)
    for i in range(2):
        got, ref = ds[i], plain[i]
        assert got["image"].shape == (2, 2, 6, 12, 12)
        # intensities are drawn exactly as without the channel, and the ROI is the augmented mask
        torch.testing.assert_close(got["image"][:, :1], ref["image"])
        for p in range(2):
            torch.testing.assert_close(got["image"][p, 1], got["mask"][0].float())
        assert not torch.equal(got["mask"][0], torch.from_numpy(mask))  # it did move
        assert set(got["image"][:, 1].unique().tolist()) == {0.0, 1.0}
    items[1]["mask"] = None
    with pytest.raises(DatasetError, match="roi_channel"):
        CachedStudyDataset(items, {"HCC": 0, "ICC": 1}, roi_channel=True)


def _roi_input(shift: int = 0) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(2, 4, 4, 4, 32, 32)
    x[:, :, -1] = 0
    x[:, :, -1, 1:3, 8 + shift : 20 + shift, 8:20] = 1
    return x


def test_miff_spm_region_head_adds_the_roi_reading_to_eq2() -> None:
    torch.manual_seed(0)
    net = create_model("miff_spm", 2, PHASES, in_channels=4, region_kinetics=True).eval()
    x = _roi_input()
    with torch.no_grad():
        full = net(x).logits
        expected = net.region_head(region_enhancement(x[:, :, :3], x[:, :1, 3:4].amax(1)))
        net.region_head.weight.zero_(), net.region_head.bias.zero_()
        without = net(x).logits
    torch.testing.assert_close(full - without, expected)
    assert net.region_head.in_features == 3 * 4 * 3  # core, rim, around × phases × windows
    with pytest.raises(ValueError, match="in_channels >= 2"):
        create_model("miff_spm", 2, PHASES, in_channels=1, region_kinetics=True)


def test_miff_spm_region_head_reads_where_the_roi_lies_and_trains_fast() -> None:
    torch.manual_seed(0)
    net = create_model("miff_spm", 2, PHASES, in_channels=4, region_kinetics=True).eval()
    x = _roi_input()
    x[:, 1, 0, 1:3, 8:20, 8:20] += 2.0  # an arterially bright lesion under the ROI
    with torch.no_grad():
        feats_on = region_enhancement(x[:, :, :3], x[:, :1, 3:4].amax(1))
        feats_off = region_enhancement(x[:, :, :3], _roi_input(10)[:, :1, 3:4].amax(1))
        moved = x.clone()
        moved[:, :, -1] = _roi_input(10)[:, :, -1]
        assert not torch.allclose(net(x).logits, net(moved).logits)
    # ART core − around of window 0 (feature order: phase, region, window)
    assert float(feats_on[0, 1 * 9]) > float(feats_off[0, 1 * 9]) + 1.0
    opt = build_optimizer(TrainConfig(model="miff_spm", lr=1e-3, head_lr_scale=100.0), net)
    rest, head = opt.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in net.region_head.parameters()}
    assert head["lr"] == pytest.approx(0.1) and rest["lr"] == pytest.approx(1e-3)


@pytest.fixture(scope="module")
def roi_bundle(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("roi")
    make_cohort(root)
    options = {"region_kinetics": True}
    bundle = make_bundle(root / "bundle", "miff_spm", options, roi_channel=True)
    return root, Predictor(bundle)


def test_predict_with_an_roi_bundle_needs_the_mask(roi_bundle) -> None:
    root, pred = roi_bundle
    assert pred.model.in_channels == 4
    study = read_dicom(root / "ds" / "dicom" / "CT0000")
    mask = root / "ds" / "dicom" / "CT0000_mask.nii.gz"
    out = pred.predict_study(study, root / "out", mask=mask, cam=False, report=False)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(LiverphaseError, match="give a lesion mask"):
        pred.predict_study(
            study, root / "out_box", bbox=[20, 20, 8, 30, 30, 12], bbox_units="voxel"
        )


def test_cv_experiment_of_region_kinetics_adds_the_roi_channel(tmp_path) -> None:
    from liverphase.evaluate.cv import make_experiment
    from liverphase.io.nifti import open_dataset

    ds = open_dataset(make_cohort(tmp_path))
    exp = make_experiment(ds, "miff_spm", model_options={"region_kinetics": True})
    assert exp.preprocess.roi_channel and exp.preprocess.n_channels == 4
    assert exp.model_options["in_channels"] == 4 == exp.train.model_options["in_channels"]
    assert exp.model_factory()().region_head is not None
    # the region head trains at 100x unless the config names its own rate
    assert exp.train.head_lr_scale == 100.0
    named = make_experiment(
        ds, "miff_spm", model_options={"region_kinetics": True}, head_lr_scale=3.0
    )
    assert named.train.head_lr_scale == 3.0
    plain = make_experiment(ds, "miff_spm")
    assert not plain.preprocess.roi_channel and plain.model_options["in_channels"] == 3
    assert plain.train.head_lr_scale == 1.0
    # a segmenting model's region reading goes through its own mask: no ROI channel
    seg = make_experiment(ds, "std_net", model_options={"region_kinetics": True})
    assert not seg.preprocess.roi_channel and seg.train.head_lr_scale == 1.0


def test_a_model_reading_the_roi_refuses_data_without_it(tmp_path) -> None:
    from liverphase.train.recipe import check_model_config

    net = create_model("miff_spm", 2, PHASES, in_channels=4, region_kinetics=True)
    cfg = TrainConfig(model="miff_spm", mtl_lambda=0.5)
    with pytest.raises(ConfigError, match="roi_channel"):
        check_model_config(net, cfg, roi_channel=False)
    check_model_config(net, cfg, roi_channel=True)
    # a plain model may take the ROI as an extra input channel without reading it as one
    check_model_config(create_model("miff_spm", 2, PHASES, in_channels=4), cfg, roi_channel=True)


def test_a_bundle_reading_the_roi_without_the_channel_is_refused(tmp_path) -> None:
    from liverphase.errors import BundleError

    bundle = make_bundle(tmp_path / "bundle", "miff_spm", {"region_kinetics": True})
    with pytest.raises(BundleError, match="roi_channel"):
        Predictor(bundle)
