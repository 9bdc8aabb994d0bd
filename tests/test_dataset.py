"""CachedStudyDataset and Augmenter: tensors, errors, reproducible per-(seed, epoch, index) draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from liverphase.data.augment import AugmentConfig, Augmenter, shift_volume
from liverphase.data.dataset import CachedStudyDataset, write_toy_items
from liverphase.errors import ConfigError, DatasetError, InputFileError

CLASSES = {"HCC": 0, "ICC": 1}
# Every random transform off: tests switch on the one they examine.
OFF = {
    "flip_prob": 0.0,
    "rotate_prob": 0.0,
    "intensity_prob": 0.0,
    "noise_prob": 0.0,
    "phase_shift_prob": 0.0,
}


def only(**changes) -> AugmentConfig:
    """An AugmentConfig with everything off except `changes`."""
    return AugmentConfig.from_dict({**OFF, **changes})


@pytest.fixture
def items(tmp_path):
    return write_toy_items(tmp_path / "cache", 6, shape=(3, 2, 6, 10, 12), seed=3)


def test_item_tensors_and_labels(items):
    items[1]["mask"] = None
    ds = CachedStudyDataset(items, CLASSES)
    a, b = ds[0], ds[1]
    assert a["image"].dtype == torch.float32 and a["image"].shape == (3, 2, 6, 10, 12)
    assert a["mask"].dtype == torch.uint8 and a["mask"].shape == (1, 6, 10, 12)
    assert a["has_mask"] is True and a["mask"].sum() > 0
    np.testing.assert_array_equal(a["image"].numpy(), np.load(items[0]["image"]))
    assert b["has_mask"] is False and b["mask"].sum() == 0
    assert a["label"].dtype == torch.int64 and (int(a["label"]), int(b["label"])) == (0, 1)
    assert (a["case_id"], b["index"]) == ("toy000", 1)
    np.testing.assert_array_equal(ds.labels(), [0, 1, 0, 1, 0, 1])
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 2, 6, 10, 12) and batch["has_mask"].tolist() == [
        True,
        False,
    ]


def test_item_errors_name_the_file(items, tmp_path):
    with pytest.raises(DatasetError, match="'XYZ' is not one of"):
        CachedStudyDataset([{**items[0], "label": "XYZ"}], CLASSES)
    gone = tmp_path / "gone.npy"
    with pytest.raises(InputFileError) as err:
        CachedStudyDataset([{**items[0], "image": str(gone)}], CLASSES)[0]
    assert err.value.path == str(gone)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((4, 4), np.float32))
    with pytest.raises(DatasetError, match="5 dimensions") as err:
        CachedStudyDataset([{**items[0], "image": str(flat)}], CLASSES)[0]
    assert err.value.path == str(flat)
    bad_mask = tmp_path / "mask.npy"
    np.save(bad_mask, np.zeros((6, 10, 11), np.uint8))
    with pytest.raises(DatasetError, match="does not match"):
        CachedStudyDataset([{**items[0], "mask": str(bad_mask)}], CLASSES)[0]


def test_augmentation_is_a_function_of_seed_epoch_index(items):
    def fresh():
        return CachedStudyDataset(items, CLASSES, Augmenter(AugmentConfig()), seed=7)

    ds = fresh()
    ds.set_epoch(2)
    first = [ds[i]["image"] for i in range(len(ds))]
    # Another instance (as after a resume) at the same epoch draws the same, in any access order.
    again = fresh()
    again.set_epoch(2)
    for i in reversed(range(len(ds))):
        assert torch.equal(again[i]["image"], first[i])
    ds.set_epoch(3)
    assert not torch.equal(ds[0]["image"], first[0])
    other_seed = CachedStudyDataset(items, CLASSES, Augmenter(AugmentConfig()), seed=8)
    other_seed.set_epoch(2)
    assert not torch.equal(other_seed[0]["image"], first[0])
    # Independent of the number of loader workers.
    ds.set_epoch(2)
    serial = [b["image"] for b in DataLoader(ds, batch_size=2)]
    parallel = [b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)]
    for s, p in zip(serial, parallel, strict=True):
        assert torch.equal(s, p)
    assert torch.equal(torch.cat(serial), torch.stack(first))


def test_flip_applies_to_every_phase_and_the_mask():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 2, 4, 5, 6)).astype(np.float32)
    mask = (rng.random((4, 5, 6)) > 0.5).astype(np.uint8)
    out, out_mask = Augmenter(only(flip_prob=1.0, flip_axes=(2,)))(image, mask, seed=1)
    np.testing.assert_array_equal(out, image[..., ::-1])
    np.testing.assert_array_equal(out_mask, mask[..., ::-1])
    assert out_mask.dtype == np.uint8


def test_rotation_and_intensity_drawn_once_per_study():
    rng = np.random.default_rng(1)
    phase = rng.random((1, 6, 16, 16)).astype(np.float32)
    image = np.stack([phase] * 4)  # four identical phases
    cfg = only(rotate_prob=1.0, rotate_degrees=30.0, intensity_prob=1.0)
    out, _ = Augmenter(cfg)(image, None, seed=5)
    assert not np.allclose(out[0], image[0], atol=1e-3)  # something happened
    for k in range(1, 4):
        np.testing.assert_array_equal(out[k], out[0])
    # The mask turns with the image: an off-centre bar rotated as image and as mask agrees.
    bar = np.zeros((6, 16, 16), np.float32)
    bar[:, 3:6, 2:14] = 1.0
    out2, out_mask = Augmenter(only(rotate_prob=1.0, rotate_degrees=30.0))(
        np.stack([bar[None]] * 2), bar.astype(np.uint8), seed=5
    )
    assert not np.array_equal(out_mask, bar.astype(np.uint8))
    assert np.mean((out2[0, 0] > 0.5) == out_mask.astype(bool)) > 0.97


def test_phase_shift_moves_phases_independently_not_the_mask():
    rng = np.random.default_rng(2)
    phase = rng.random((1, 6, 9, 9)).astype(np.float32)
    image = np.stack([phase] * 4)
    mask = (phase[0] > 0.5).astype(np.uint8)
    aug = Augmenter(only(phase_shift_prob=1.0, phase_shift_voxels=2))
    out, out_mask = aug(image, mask, seed=11)
    np.testing.assert_array_equal(out_mask, mask)
    shifts = []
    for k in range(4):  # each phase is the original shifted by some whole-voxel offset
        found = [
            (dz, dy, dx)
            for dz in range(-2, 3)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(out[k], shift_volume(phase, (dz, dy, dx)))
        ]
        assert len(found) == 1
        shifts.append(found[0])
    assert len(set(shifts)) > 1
    ref = Augmenter(only(phase_shift_prob=1.0, phase_shift_voxels=2), reference_index=2)
    out_ref, _ = ref(image, mask, seed=11)
    np.testing.assert_array_equal(out_ref[2], phase)
    np.testing.assert_array_equal(out_ref[0], out[0])


def test_same_seed_same_output_all_transforms_on():
    rng = np.random.default_rng(3)
    image = rng.random((2, 3, 6, 12, 12)).astype(np.float32)
    mask = (rng.random((6, 12, 12)) > 0.7).astype(np.uint8)
    cfg = AugmentConfig.from_dict({k: 1.0 for k in OFF})
    aug = Augmenter(cfg)
    a, am = aug(image, mask, seed=42)
    b, bm = Augmenter(cfg)(image, mask, seed=42)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(am, bm)
    c, _ = aug(image, mask, seed=43)
    assert not np.array_equal(a, c)
    assert a.shape == image.shape and a.dtype == np.float32


def test_shift_volume_known_answer():
    vol = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    np.testing.assert_array_equal(shift_volume(vol, (0, 0, 2))[0, 0], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(shift_volume(vol, (0, 0, -1))[0, 0], [1, 2, 3, 4, 4])


def test_augment_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="flip_prob"):
        AugmentConfig.from_dict({"flip_prob": 1.5})
    with pytest.raises(ConfigError, match="flip_axes"):
        AugmentConfig.from_dict({"flip_axes": [3]})


def test_phase_dropout_drops_one_phase_marks_it_and_leaves_the_other_draws(items):
    plain = CachedStudyDataset(items, CLASSES, Augmenter(AugmentConfig()), seed=4)
    dropped = CachedStudyDataset(
        items, CLASSES, Augmenter(AugmentConfig(phase_dropout_prob=1.0)), seed=4
    )
    assert "phase_mask" not in plain[0]
    seen = set()
    for epoch in range(4):
        plain.set_epoch(epoch)
        dropped.set_epoch(epoch)
        for i in range(len(items)):
            a, b = plain[i], dropped[i]
            present = b["phase_mask"].numpy()
            assert present.dtype == bool and present.sum() == 2  # 3 phases, one absent
            gone = int(np.flatnonzero(~present)[0])
            seen.add(gone)
            assert not b["image"][gone].any()
            # the kept phases and the mask are exactly the draw without phase dropout
            assert torch.equal(b["image"][present], a["image"][present])
            assert torch.equal(b["mask"], a["mask"])
    assert seen == {0, 1, 2}
    half = Augmenter(AugmentConfig(phase_dropout_prob=0.5))
    kept = [half.phase_presence(3, s).all() for s in range(400)]
    assert 0.4 < np.mean(kept) < 0.6
    assert Augmenter(AugmentConfig()).phase_presence(3, 0) is None
    assert Augmenter(AugmentConfig(phase_dropout_prob=1.0)).phase_presence(1, 0).all()
    with pytest.raises(ConfigError, match="phase_dropout_prob"):
        AugmentConfig(phase_dropout_prob=1.5).validate()
