"""The preprocessing cache: flip invariance, no-op reruns, rebuild triggers, killed runs, workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from liverphase.errors import DatasetError
from liverphase.io.nifti import NnUNetDataset, open_dataset, write_image
from liverphase.io.nnunet_writer import NnUNetWriter
from liverphase.preprocess import cache as cache_mod
from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.cache import PreprocessCache, file_digest
from liverphase.preprocess.config import PreprocessConfig
from test_preprocess_phantom import phantom_study

CFG = PreprocessConfig(size=(16, 32, 32))
FAST = CFG.replace(register=False)
PHANTOM = {"shape": (24, 56, 64), "spacing": (2.5, 2.5, 4.0)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three cases; `c0flip` is `c0` stored with its x and z axes flipped."""
    root = tmp_path_factory.mktemp("pp") / "ds"
    writer = NnUNetWriter(
        root, ["NC", "ART", "PV", "DL"], reference_phase="PV", class_names=["HCC"]
    )
    c0 = phantom_study("c0", shifts={"ART": (5.0, 2.5, -4.0)}, seed=1, **PHANTOM)
    writer.add(c0)
    writer.add(phantom_study("c1", shifts={"NC": (-3.0, 2.0, 4.0)}, seed=2, **PHANTOM))
    c0.case_id = "c0flip"
    writer.add(c0, flip_axes=(0, 2))
    writer.close()
    return root


@pytest.fixture(scope="module")
def built(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("cache") / "c"
    return cache, preprocess_dataset(dataset, cache, CFG, progress=False)


def test_flipped_copy_gives_same_cached_tensor(built: tuple[Path, dict]) -> None:
    root, stats = built
    assert stats["built"] == 3 and stats["reused"] == 0 and stats["failed"] == {}
    cache = PreprocessCache(root)
    a, b = cache.load_case("c0"), cache.load_case("c0flip")
    assert a.key != b.key
    assert isinstance(a.image, np.memmap) and a.image.shape == (4, 3, 16, 32, 32)
    assert a.image.dtype == np.float32 and a.mask.dtype == np.uint8
    assert float(np.abs(a.image - b.image).max()) < 1e-4
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.meta["registration"]["ART"]["accepted"] and a.meta["inputs"][0] == "c0_0000.nii.gz"
    # the stored config names the phases and channels the defaults stood for
    assert a.meta["config"] == CFG.resolved(("NC", "ART", "PV", "DL")).to_dict()
    assert a.meta["config"]["phases"] == ["NC", "ART", "PV", "DL"] and a.meta["key"] == a.key


def test_second_run_is_a_no_op(built: tuple[Path, dict], dataset: Path, monkeypatch) -> None:
    root, stats = built

    def fail(*args, **kwargs):
        raise AssertionError("a study was loaded or preprocessed")

    monkeypatch.setattr(NnUNetDataset, "load_study", fail)
    monkeypatch.setattr(cache_mod, "preprocess_study", fail)
    monkeypatch.setattr(cache_mod, "file_digest", fail)  # file hashes come from the memo
    again = preprocess_dataset(dataset, root, CFG, progress=False)
    assert again["built"] == 0 and again["reused"] == 3
    assert again["keys"] == stats["keys"]
    index = json.loads((root / "index.json").read_text())
    assert index == stats["keys"]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    # spelling the defaults out (as `cv` does) is the same config: the same entries are reused
    explicit = CFG.replace(phases=("NC", "ART", "PV", "DL"), channels=3)
    spelled = preprocess_dataset(dataset, root, explicit, progress=False)
    assert spelled["built"] == 0 and spelled["keys"] == stats["keys"]


def test_changes_trigger_rebuilds(dataset: Path, tmp_path: Path) -> None:
    ds_copy = tmp_path / "ds"
    shutil.copytree(dataset, ds_copy)
    cache = tmp_path / "cache"
    first = preprocess_dataset(ds_copy, cache, FAST, progress=False)
    # another config: everything rebuilt under new keys, old entries kept
    other = preprocess_dataset(ds_copy, cache, FAST.replace(margin_mm=5.0), progress=False)
    assert other["built"] == 3 and set(other["keys"].values()).isdisjoint(first["keys"].values())
    # one phase rewritten with other content: only that case is rebuilt
    ds = open_dataset(ds_copy)
    img = ds.load_study("c1").phases["DL"]
    write_image(img + 5, ds.image_paths("c1")["DL"])
    again = preprocess_dataset(ds_copy, cache, FAST, progress=False)
    assert again["built"] == 1 and again["reused"] == 2
    assert again["keys"]["c1"] != first["keys"]["c1"]
    assert again["keys"]["c0"] == first["keys"]["c0"]


def test_get_or_build_loads_the_study_once(dataset: Path, tmp_path: Path) -> None:
    ds = open_dataset(dataset)
    cache = PreprocessCache(tmp_path / "cache")
    calls = []

    def loader():
        calls.append(1)
        return ds.load_study("c1")

    files = ds.case_files("c1")
    first = cache.get_or_build("c1", files, loader, FAST)
    second = cache.get_or_build("c1", files, loader, FAST)
    assert first.built and not second.built and len(calls) == 1
    np.testing.assert_array_equal(first.image, second.image)
    assert cache.read_index() == {"c1": first.key}
    assert len(file_digest(files[0])) == 64


def test_failures_are_reported_and_others_still_cached(dataset: Path, tmp_path: Path) -> None:
    ds_copy = tmp_path / "ds"
    shutil.copytree(dataset, ds_copy)
    (ds_copy / "imagesTr" / "c1_0001.nii.gz").unlink()
    stats = preprocess_dataset(ds_copy, tmp_path / "cache", FAST, progress=False, strict=False)
    assert list(stats["failed"]) == ["c1"] and "c1_0001.nii.gz" in stats["failed"]["c1"]
    assert stats["built"] == 2
    with pytest.raises(DatasetError, match="1 case"):
        preprocess_dataset(ds_copy, tmp_path / "cache", FAST, progress=False)


def test_clean_temp_removes_only_dead_writers(tmp_path: Path) -> None:
    cache = PreprocessCache(tmp_path)
    dead, live = tmp_path / ".abc.x1.tmp", tmp_path / ".abd.x2.tmp"
    for d, pid in ((dead, 2**22 + 12345), (live, os.getpid())):
        d.mkdir()
        (d / ".owner").write_text(f"{cache_mod.socket.gethostname()} {pid}\n")
    fresh = tmp_path / ".abe.x3.tmp"
    fresh.mkdir()  # no owner yet: a writer that just started
    assert cache.clean_temp() == 1
    assert not dead.exists() and live.exists() and fresh.exists()


KILL_SCRIPT = """
import sys, time
import numpy as np
from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.config import PreprocessConfig
save = np.save
def slow_save(*args, **kwargs):  # make each entry slow to write, so the kill lands mid-way
    time.sleep(0.4)
    return save(*args, **kwargs)
np.save = slow_save
preprocess_dataset(sys.argv[1], sys.argv[2], PreprocessConfig.from_yaml(sys.argv[3]), progress=False)
"""


def _entries(root: Path) -> list[Path]:
    return (
        [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if root.is_dir()
        else []
    )


def test_killed_run_then_rerun_gives_complete_valid_cache(dataset: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(FAST.to_yaml())
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(dataset), str(cache), str(cfg_path)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 120
        while not _entries(cache) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # into the next entry's writes
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = _entries(cache)
    assert 1 <= len(done) < 3, "the kill should land mid-way"
    assert all((d / "meta.json").is_file() and (d / "image.npy").is_file() for d in done)
    rerun = preprocess_dataset(dataset, cache, FAST, progress=False)
    assert rerun["built"] == 3 - len(done) and rerun["reused"] == len(done)
    assert [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()] == []
    clean = preprocess_dataset(dataset, tmp_path / "clean", FAST, progress=False)
    assert clean["keys"] == rerun["keys"]
    a, b = PreprocessCache(cache), PreprocessCache(tmp_path / "clean")
    for cid, key in rerun["keys"].items():
        x, y = a.load(key), b.load(key)
        assert x.case_id == cid and x.image.shape == (4, 3, 16, 32, 32)
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)


def test_two_workers_match_serial_run(
    dataset: Path, built: tuple[Path, dict], tmp_path: Path
) -> None:
    root, stats = built
    pooled = preprocess_dataset(dataset, tmp_path / "pool", CFG, workers=2, progress=False)
    assert pooled["built"] == 3 and pooled["keys"] == stats["keys"]
    for key in stats["keys"].values():
        x, y = PreprocessCache(root).load(key), PreprocessCache(tmp_path / "pool").load(key)
        np.testing.assert_array_equal(x.image, y.image)  # registration is bit-reproducible
