"""PreprocessConfig (YAML round trip, validation) and intensity mapping at known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from liverphase.errors import ConfigError
from liverphase.preprocess.config import DEFAULT_WINDOWS, PreprocessConfig
from liverphase.preprocess.intensity import (
    ct_channels,
    hu_warning,
    mri_channel,
    mri_stats,
    otsu_threshold,
    window,
)


def test_yaml_round_trip_keeps_every_field(tmp_path: Path) -> None:
    cfg = PreprocessConfig(
        size=(32, 64, 48),
        keep_aspect=True,
        register_spacing_mm=1.5,
        windows=((40.0, 400.0), (100.0, 50.0)),
        phases=("ART", "PV"),
        register=False,
        pad_value=-1000.0,
    )
    path = tmp_path / "pre.yaml"
    path.write_text(cfg.to_yaml())
    back = PreprocessConfig.from_yaml(path)
    assert back == cfg
    assert back.windows == ((40.0, 400.0), (100.0, 50.0)) and isinstance(back.size, tuple)
    assert back.n_channels == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"modality": "pet"}, "modality"),
        ({"size": [64, 128]}, "size"),
        ({"size": [64, 1, 8]}, "size"),
        ({"margin_mm": -1}, "margin_mm"),
        ({"roi_source": "liver"}, "roi_source"),
        ({"windows": [[40, 0]]}, "windows"),
        ({"channels": 2}, "channels"),
        ({"modality": "mri", "channels": 3}, "channels"),
        ({"jitter_shift": 1.5}, "jitter_shift"),
        ({"register_transform": "bspline"}, "register_transform"),
        ({"register_sampling": 0.0}, "register_sampling"),
        ({"mri_percentiles": [99, 1]}, "mri_percentiles"),
        ({"phases": ["PV", "PV"]}, "phases"),
        ({"margin": 10}, "unknown key"),
        ({"margin_mm": "ten"}, "margin_mm"),
    ],
)
def test_invalid_values_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PreprocessConfig.from_dict(data)


def test_channel_rules() -> None:
    assert PreprocessConfig().n_channels == 3
    assert PreprocessConfig().ct_windows == DEFAULT_WINDOWS
    raw = PreprocessConfig(channels=1)
    assert raw.n_channels == 1 and raw.ct_windows == ((40.0, 500.0),)
    assert PreprocessConfig(modality="mri").n_channels == 1
    assert PreprocessConfig().default_pad == -1024.0
    assert PreprocessConfig(modality="mri").default_pad is None


def test_window_maps_known_hu_exactly() -> None:
    hu = np.array([-1000.0, -160.0, -100.0, 40.0, 140.0, 240.0, 3000.0])
    np.testing.assert_allclose(window(hu, 40, 400), [0, 0, 0.15, 0.5, 0.75, 1, 1], atol=1e-7)
    # liver (60, 160): [-20, 140]; narrow (80, 100): [30, 130]
    np.testing.assert_allclose(window([-20.0, 60.0, 140.0], 60, 160), [0, 0.5, 1], atol=1e-7)
    np.testing.assert_allclose(window([30.0, 55.0, 130.0], 80, 100), [0, 0.25, 1], atol=1e-7)
    ch = ct_channels(np.full((2, 3, 4), 60.0), DEFAULT_WINDOWS)
    assert ch.shape == (3, 2, 3, 4) and ch.dtype == np.float32
    np.testing.assert_allclose(ch[:, 0, 0, 0], [0.55, 0.5, 0.3], atol=1e-6)


def test_mri_normalisation_percentile_and_zscore() -> None:
    rng = np.random.default_rng(0)
    arr = np.zeros((20, 40, 40), np.float32)
    arr[5:15, 10:30, 10:30] = rng.normal(300, 20, (10, 20, 20))  # body in dark background
    img = sitk.GetImageFromArray(arr)
    lo, scale = mri_stats(img, "percentile", (1, 99))
    out = mri_channel(arr, lo, scale, clip=True)
    assert out.shape == (1, 20, 40, 40) and out.min() == 0 and out.max() == 1
    assert 0 < otsu_threshold(arr.ravel()) < 250
    mean, std = mri_stats(img, "zscore", (1, 99))
    assert mean == pytest.approx(300, abs=3) and std == pytest.approx(20, abs=3)
    z = mri_channel(arr[5:15, 10:30, 10:30], mean, std, clip=False)
    assert abs(float(z.mean())) < 0.2 and float(z.std()) == pytest.approx(1, abs=0.2)


def test_hu_warning_flags_non_hu_data() -> None:
    assert hu_warning(np.full((4, 4, 4), 50.0), "PV") is None
    assert hu_warning(np.full((4, 4, 4), -1024.0), "PV") is None  # padding is in range
    msg = hu_warning(np.full((4, 4, 4), 5000.0), "ART")
    assert msg is not None and msg.startswith("ART") and "100.0%" in msg
