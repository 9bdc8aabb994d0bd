"""Issue 36, the rest: damaged cache entries rebuilt (12), worker pools that die with their parent
and stop on Ctrl-C (11), shared file modes (14), predict's output folder checked first and never
half-written (8), and words that name the real problem (13)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _predict_support import make_bundle
from liverphase.cli import app
from liverphase.errors import DatasetError, GeometryError
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.cache import CHECKSUMS, PreprocessCache
from liverphase.preprocess.config import PreprocessConfig
from liverphase.synth.ct import synth_ct_cohort
from test_hardening import inspect_problems, one_line_error

RUNNER = CliRunner()
SMALL = PreprocessConfig(size=(8, 16, 16), register=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean 4-case tiny CT cohort and a random-weight bundle, made once."""
    root = tmp_path_factory.mktemp("hardening2")
    synth_ct_cohort(root / "ds", cases=4, seed=3, preset="tiny")
    make_bundle(root / "bundle")
    return root


@pytest.fixture
def ds(work: Path, tmp_path: Path) -> Path:
    """A private copy of the cohort, for a test to damage."""
    return Path(shutil.copytree(work / "ds", tmp_path / "ds"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- item 12: a damaged cache entry is rebuilt, not reused ----------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [_truncate, _flip_last_bytes, Path.unlink],
    ids=["truncated", "bit-flipped", "mask-gone"],
)
def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(
    work: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    cache = tmp_path / "cache"
    first = preprocess_dataset(work / "ds", cache, SMALL, progress=False)
    entry = cache / first["keys"]["CT0001"]
    meta = json.loads((entry / "meta.json").read_text())
    assert set(meta[CHECKSUMS]) == {"image.npy", "mask.npy"}
    assert meta[CHECKSUMS]["image.npy"]["size"] == (entry / "image.npy").stat().st_size
    image = np.load(entry / "image.npy")
    target = entry / ("mask.npy" if damage is Path.unlink else "image.npy")
    damage(target)
    assert PreprocessCache(cache).problem(first["keys"]["CT0001"]) is not None
    again = preprocess_dataset(work / "ds", cache, SMALL, progress=False)
    assert again["built"] == 1 and again["reused"] == 3 and again["keys"] == first["keys"]
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warned) == 1 and "CT0001" in warned[0] and target.name in warned[0]
    entry_now = PreprocessCache(cache).load_case("CT0001")
    np.testing.assert_array_equal(entry_now.image, image)
    assert entry_now.mask is not None
    assert PreprocessCache(cache).problem(first["keys"]["CT0001"]) is None


def test_an_entry_written_before_checksums_is_checked_for_truncation(
    work: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = preprocess_dataset(work / "ds", cache, SMALL, progress=False)
    for key in first["keys"].values():  # as entries were written before this change
        meta_path = cache / key / "meta.json"
        meta = json.loads(meta_path.read_text())
        del meta[CHECKSUMS]
        meta_path.write_text(json.dumps(meta))
    _truncate(cache / first["keys"]["CT0002"] / "image.npy")
    again = preprocess_dataset(work / "ds", cache, SMALL, progress=False)
    assert again["built"] == 1 and again["reused"] == 3


# -- item 11: worker pools die with their parent and stop on Ctrl-C -------------------------------

# Imported by every Python started with this folder on PYTHONPATH, the spawned workers included:
# each saved array takes 2 s, so the run is still busy when the test signals it.
SLOW_SAVE = """
import time
import numpy as np
_save = np.save
def _slow_save(*args, **kwargs):
    time.sleep(2.0)
    return _save(*args, **kwargs)
np.save = _slow_save
"""


def _children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is `pid` (from /proc)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and not fields["State"].startswith("Z"):
            out.append(int(status.parent.name))
    return out


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its new parent to reap it has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _start_pooled_preprocess(ds: Path, tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    """`preprocess --workers 2` in its own session, slowed down; returns once both workers are
    writing entries, with the pids of all its children (workers and resource tracker)."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_SAVE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), *sys.path])}
    cache = tmp_path / "cache"
    args = ["preprocess", ds, "--out", cache, "--model", "resnet2d_avg", "--workers", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "liverphase.cli", *map(str, args)],
        env=env,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        writing = list(cache.glob(".*.tmp")) if cache.is_dir() else []
        if len(writing) >= 2:
            return proc, _children(proc.pid)
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the pooled preprocess did not start two workers within 60 s")


def _reap(proc: subprocess.Popen, pids: list[int]) -> None:
    """Cleanup: the processes this test started, by pid, if they outlived the assertions."""
    for pid in [proc.pid, *pids]:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_preprocess_is_killed(ds: Path, tmp_path: Path) -> None:
    proc, children = _start_pooled_preprocess(ds, tmp_path)
    try:
        assert len(children) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone(children, 5.0) == [], "children outlived their killed parent"
    finally:
        _reap(proc, children)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_pooled_preprocess_at_once(ds: Path, tmp_path: Path) -> None:
    # 4 cases x 2 saves of 2 s on 2 workers: finishing the queue would take 4 s or more
    proc, children = _start_pooled_preprocess(ds, tmp_path)
    try:
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole group
        proc.wait(timeout=30)
        assert time.monotonic() - start < 2.5, "Ctrl-C waited for the queued cases"
        assert _wait_gone(children, 2.0) == []
    finally:
        _reap(proc, children)


# -- item 14: every output file gets the umask's mode ---------------------------------------------


def test_bundle_and_state_files_have_the_same_mode_as_other_outputs(tmp_path: Path) -> None:
    from liverphase.train.state import save_state

    want = 0o666 & ~_umask()
    if want == 0o600:
        pytest.skip("a umask of 077 makes every file 0600 anyway")
    bundle = make_bundle(tmp_path / "bundle")
    save_state(tmp_path / "state", {"weights": torch.zeros(3), "epoch": 2})
    files = [bundle / "model.safetensors", bundle / "bundle.json"]
    files += [tmp_path / "state" / "state.safetensors", tmp_path / "state" / "state.json"]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {
        f.name: oct(want) for f in files
    }


# -- item 8: predict checks --out first and never leaves a half-written output ------------------


@pytest.fixture
def model_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Predicting the study (reading it, running the model) fails the test with exit 1."""
    from liverphase.inference.predictor import Predictor

    def ran(*args, **kwargs):
        raise AssertionError("predict ran the model before checking --out")

    monkeypatch.setattr(Predictor, "predict_study", ran)


def _predict_args(work: Path, out: Path) -> list[object]:
    return ["predict", "--bundle", work / "bundle", work / "ds", "--case", "CT0000", "--out", out]


def test_predict_refuses_an_out_below_a_file_before_running(
    work: Path, tmp_path: Path, model_must_not_run: None
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    line = one_line_error(_predict_args(work, blocker), str(blocker), "is a file, not a folder")
    assert "would be inside" not in line
    line = one_line_error(_predict_args(work, blocker / "sub" / "out"), str(blocker))
    assert f"the output folder {blocker / 'sub' / 'out'} would be inside it" in line


def test_predict_refuses_a_read_only_out_before_running(
    work: Path, tmp_path: Path, model_must_not_run: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # root ignores permission bits: play a read-only disk
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    one_line_error(_predict_args(work, locked), str(locked), "cannot be written")
    one_line_error(_predict_args(work, locked / "new" / "out"), str(locked), "cannot be written")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_refuses_a_chmod_read_only_out(
    work: Path, tmp_path: Path, model_must_not_run: None
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        one_line_error(_predict_args(work, locked / "out"), str(locked), "cannot be written")
    finally:
        locked.chmod(0o755)


def test_a_failed_predict_leaves_no_output_without_prediction_json(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from liverphase.inference import report_html

    def disk_full(path, *args, **kwargs):  # the CAMs are written by now; the report fails
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report_html, "write_report", disk_full)
    out = tmp_path / "out"
    one_line_error(_predict_args(work, out), "No space left on device")
    assert not out.exists()  # no CAM, no staging folder: nothing
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(_predict_args(work, out), "No space left on device")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # a folder the user had stays


def test_a_predict_moves_its_outputs_in_with_prediction_json(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)  # OUT may hold other things: they stay
    (out / "prediction.json").write_text("{}")  # an older run's: replaced
    result = RUNNER.invoke(app, [str(a) for a in _predict_args(work, out)])
    assert result.exit_code == 0, result.output
    prediction = json.loads((out / "prediction.json").read_text())
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["keep", "prediction.json", *prediction["files"].values()])
    assert any(n.startswith("cam_") for n in names)
    want = 0o666 & ~_umask()
    assert {stat.S_IMODE((out / n).stat().st_mode) for n in names if n != "keep"} == {want}


# -- item 13: words that name the real problem ----------------------------------------------------


def _move_mask(ds: Path, change) -> Path:
    mask = ds / "labelsTr" / "CT0000.nii.gz"
    nii = nib.load(str(mask))
    affine = nii.affine.copy()
    change(affine)
    nib.save(nib.Nifti1Image(np.asanyarray(nii.dataobj), affine), str(mask))
    return mask


def _shift_x(a: np.ndarray) -> None:
    a[0, 3] += 7.5


def _flip_x(a: np.ndarray) -> None:
    a[:3, 0] *= -1


@pytest.mark.parametrize(
    ("change", "expected"),
    [(_shift_x, "origin differs by 7.5 mm"), (_flip_x, "direction differs (axis x flipped")],
    ids=["origin", "direction"],
)
def test_a_mask_off_grid_with_equal_size_and_spacing_says_what_differs(
    ds: Path, change, expected: str
) -> None:
    mask = _move_mask(ds, change)
    with pytest.raises(GeometryError) as exc:
        open_dataset(ds).load_study("CT0000")
    assert expected in str(exc.value) and "agree" in str(exc.value)
    problems = inspect_problems(ds)
    assert len(problems) == 1 and str(mask) in problems[0] and expected in problems[0]


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        ('{"0": "NC", "1": "ART", "2": "PV", "3": "PV"}', "gives phase 'PV' to channels [2, 3]"),
        ('{"0": "NC", "1": "ART", "2": "PV", "2": "DL"}', "lists channel '2' more than once"),
        ('{"0": "NC", "1": "ART", "2": "PV", "02": "DL"}', "are the same channel 2"),
    ],
    ids=["same-phase", "same-key", "same-index"],
)
def test_a_duplicate_channel_names_entry_is_reported_as_such(
    ds: Path, channels: str, expected: str
) -> None:
    path = ds / "dataset.json"
    text = path.read_text()
    start = text.index('"channel_names"')
    end = text.index("}", start) + 1
    path.write_text(text[:start] + f'"channel_names": {channels}' + text[end:])
    with pytest.raises(DatasetError, match="channel_names") as exc:
        open_dataset(ds)
    assert expected in str(exc.value) and exc.value.path == str(path)
    problems = inspect_problems(ds)
    assert len(problems) == 1 and expected in problems[0] and "grid" not in problems[0]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("train: {epoch: 3}\n", "train: unknown key(s) ['epoch']"),
        ("train: {lr: fast}\n", "train:lr: expected a number"),
        ("train: {lr: -1}\n", "train: lr: must be > 0"),
        ("preprocess: {sise: [8, 8, 8]}\n", "preprocess: unknown key(s) ['sise']"),
        ("train: {model: std_net}\n", "'model' is set by --model"),
        ("train: 3\n", "section 'train' must be a mapping"),
    ],
)
def test_config_errors_name_the_yaml_file_not_the_profile(
    work: Path, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml_text)
    args = ["preprocess", work / "ds", "--out", tmp_path / "c", "--model", "resnet2d_avg"]
    line = one_line_error([*args, "--config", cfg], f"{cfg}: ", expected)
    assert "profile" not in line and "preprocessing:" not in line
    assert not (tmp_path / "c").exists()


def test_a_yaml_freeze_epochs_may_rely_on_the_init_flag(tmp_path: Path) -> None:
    from liverphase.train.options import experiment_kwargs

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("train: {freeze_epochs: 2}\n")
    assert experiment_kwargs("std_net", "cpu", cfg)["freeze_epochs"] == 2  # --init comes later


def test_predict_refuses_mask_with_bbox(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    mask = work / "ds" / "labelsTr" / "CT0000.nii.gz"
    args = [*_predict_args(work, out), "--mask", mask, "--bbox", "1 2 3 4 5 6"]
    one_line_error(args, "--mask / --bbox", "not both")
    assert not out.exists()


def test_inspect_reports_a_phase_file_beyond_channel_names(ds: Path) -> None:
    extra = ds / "imagesTr" / "CT0001_0004.nii.gz"
    shutil.copy(ds / "imagesTr" / "CT0001_0003.nii.gz", extra)
    problems = inspect_problems(ds)
    assert len(problems) == 1 and problems[0].startswith(f"problem: {extra}: ")
    assert "channel 0004" in problems[0] and "never read" in problems[0]


def test_inspect_reports_labels_not_in_class_names(ds: Path) -> None:
    # already refused when the dataset is opened (cases.csv named); inspect shows that one line
    path = ds / "cases.csv"
    path.write_text(path.read_text().replace(",ICC,", ",HCCX,", 1))
    problems = inspect_problems(ds)
    assert len(problems) == 1 and str(path) in problems[0]
    assert "['HCCX'] are not in dataset.json class_names" in problems[0]
