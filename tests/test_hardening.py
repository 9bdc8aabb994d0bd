"""Issue 36: each bad input is one clear line (exit 2), never a traceback; nothing is written
outside --out; a modified bundle is refused. Built on the project's own tiny `synth` output."""

from __future__ import annotations

import csv
import errno
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cli_support import one_line_error
from _predict_support import make_bundle
from liverphase.cli import app
from liverphase.data.splits import patient_folds
from liverphase.errors import BundleError, DatasetError, InputFileError, os_error_message
from liverphase.io.nifti import open_dataset, read_image
from liverphase.synth.ct import synth_ct_cohort
from liverphase.train.bundle import WEIGHTS_SHA256, load_bundle

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean 4-case tiny CT cohort (3 patients) and a random-weight bundle, made once."""
    root = tmp_path_factory.mktemp("hardening")
    synth_ct_cohort(root / "ds", cases=4, seed=3, preset="tiny")
    make_bundle(root / "bundle")
    return root


@pytest.fixture
def ds(work: Path, tmp_path: Path) -> Path:
    """A private copy of the cohort, for a test to damage."""
    return Path(shutil.copytree(work / "ds", tmp_path / "ds"))


def inspect_problems(path: Path) -> list[str]:
    """`inspect PATH`'s problem lines; it must exit 2 without a traceback."""
    result = RUNNER.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output, result.output
    return [ln for ln in result.output.splitlines() if ln.startswith("problem:")]


def nifti_like(path: Path, data: np.ndarray) -> None:
    """Overwrite a NIfTI with `data`, keeping its affine."""
    nib.save(nib.Nifti1Image(data, nib.load(str(path)).affine), str(path))


def rewrite_case_id(ds: Path, old: str, new: str) -> None:
    path = ds / "cases.csv"
    path.write_text(path.read_text().replace(f"{old},", f"{new},", 1))


# -- item 1: predict over a whole dataset --------------------------------------------------------


def test_predict_a_whole_dataset_exits_0_with_its_summary_line(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    args = ["predict", "--bundle", work / "bundle", work / "ds", "--out", out]
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert f"4 case(s), 0 failed; summary: {out / 'summary.csv'}" in result.output
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 4


# -- item 2: case ids that would be paths ---------------------------------------------------------


@pytest.mark.parametrize("bad", ["../CT0003", "sub/CT0003", "sub\\CT0003", ".hidden"])
def test_a_case_id_that_is_a_path_is_refused_where_cases_csv_is_read(ds: Path, bad: str) -> None:
    rewrite_case_id(ds, "CT0003", bad)
    with pytest.raises(DatasetError, match="case_id") as exc:
        open_dataset(ds)
    assert exc.value.path == str(ds / "cases.csv") and repr(bad) in str(exc.value)


def test_predict_writes_nothing_outside_out_for_a_dotdot_case_id(
    ds: Path, work: Path, tmp_path: Path
) -> None:
    rewrite_case_id(ds, "CT0003", "../CT0003")
    out = tmp_path / "pred" / "out"
    one_line_error(["predict", "--bundle", work / "bundle", ds, "--out", out], "cases.csv", "../")
    assert not (tmp_path / "pred").exists()


# -- item 4: 2D, 4D and RGB NIfTI ----------------------------------------------------------------


def _rgb(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda s: np.zeros(s[:2], np.int16), "got 2D"),
        (lambda s: np.zeros((*s, 3), np.int16), "got 4D"),
        (_rgb, "RGB"),
    ],
    ids=["2d", "4d", "rgb"],
)
def test_a_phase_that_is_not_one_scalar_volume_is_named(ds: Path, make, expected: str) -> None:
    phase = ds / "imagesTr" / "CT0000_0001.nii.gz"
    nifti_like(phase, make(nib.load(str(phase)).shape))
    with pytest.raises(InputFileError, match=expected) as exc:
        read_image(phase)
    assert exc.value.path == str(phase)
    for target in (phase, ds):  # the file alone, and the dataset holding it
        problems = inspect_problems(target)
        assert len(problems) == 1 and problems[0].startswith(f"problem: {phase}: ")
        assert expected in problems[0]


def test_a_trailing_length_1_axis_is_still_a_3d_image(ds: Path) -> None:
    phase = ds / "imagesTr" / "CT0000_0001.nii.gz"
    arr = np.asanyarray(nib.load(str(phase)).dataobj)
    nifti_like(phase, arr[..., None])
    assert read_image(phase).GetSize() == arr.shape


def test_a_2d_mask_says_it_is_2d_not_off_grid(ds: Path) -> None:
    mask = ds / "labelsTr" / "CT0000.nii.gz"
    nifti_like(mask, np.ones(nib.load(str(mask)).shape[:2], np.uint8))
    with pytest.raises(InputFileError, match="expected a 3D image, got 2D") as exc:
        open_dataset(ds).load_study("CT0000")
    assert exc.value.path == str(mask)
    problems = inspect_problems(ds)
    assert len(problems) == 1 and "got 2D" in problems[0] and str(mask) in problems[0]


# -- item 5: mask labels other than {0, 1} --------------------------------------------------------


@pytest.mark.parametrize("label", [2, 255])
def test_mask_labels_other_than_0_1_are_reported_and_refused(
    ds: Path, work: Path, tmp_path: Path, label: int
) -> None:
    mask = ds / "labelsTr" / "CT0000.nii.gz"
    arr = np.asanyarray(nib.load(str(mask)).dataobj).astype(np.uint8)
    arr[arr > 0] = label
    arr.flat[0] = 1  # labels 0, 1 and `label`
    nifti_like(mask, arr)
    problems = inspect_problems(ds)
    assert len(problems) == 1 and str(mask) in problems[0]
    assert f"labels [0, 1, {label}]" in problems[0]
    cache = tmp_path / "cache"
    one_line_error(
        ["preprocess", ds, "--out", cache, "--model", "resnet2d_avg"],
        "CT0000",
        str(mask),
        f"labels [0, 1, {label}]",
    )


# -- item 7: cases.csv encodings, dataset.json not an object --------------------------------------


def test_cases_csv_with_a_utf8_bom_reads_its_first_column(ds: Path) -> None:
    path = ds / "cases.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [c.case_id for c in open_dataset(ds).cases] == ["CT0000", "CT0001", "CT0002", "CT0003"]


def test_cases_csv_in_latin1_is_read_as_latin1(ds: Path) -> None:
    path = ds / "cases.csv"
    path.write_bytes(path.read_text().replace("P0002", "Müller").encode("latin-1"))
    assert open_dataset(ds).case("CT0003").patient_id == "Müller"


def test_cases_csv_in_utf16_is_one_line(ds: Path) -> None:
    path = ds / "cases.csv"
    path.write_bytes(path.read_text().encode("utf-16"))
    problems = inspect_problems(ds)
    assert len(problems) == 1 and f"{path}: is UTF-16" in problems[0]


@pytest.mark.parametrize("content", ["[1, 2]", '"text"'])
def test_dataset_json_that_is_not_an_object_is_one_line(ds: Path, content: str) -> None:
    (ds / "dataset.json").write_text(content)
    with pytest.raises(DatasetError, match="expected a JSON object") as exc:
        open_dataset(ds)
    assert exc.value.path == str(ds / "dataset.json")
    problems = inspect_problems(ds)
    assert len(problems) == 1 and str(ds / "dataset.json") in problems[0]


# -- item 9: unknown model option, compare of runs that are not cv runs ----------------------------


def test_an_unknown_model_option_is_one_line_before_any_work(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", work / "ds", "--out", out, "--model", "resnet2d_avg", "-o", "foo=1"]
    one_line_error(args, "'foo'", "resnet2d_avg", "slice_chunk")
    assert not (out / "cache").exists()  # refused before preprocessing


def test_compare_refuses_a_missing_run_and_a_train_run(work: Path, tmp_path: Path) -> None:
    base = ["--data", work / "ds", "--out", tmp_path / "cmp", "--no-kinetics", "--no-time-steps"]
    one_line_error(["compare", tmp_path / "nowhere", *base], "nowhere", "not found")
    train_run = tmp_path / "train_run"
    shutil.copytree(work / "bundle", train_run / "bundle")  # what `train` leaves: RUN/bundle
    one_line_error(["compare", train_run, *base], "`train` run")
    # a cv-looking reference and the train run second: the second is checked too
    cv_run = tmp_path / "cv_run"
    cv_run.mkdir()
    (cv_run / "splits.json").write_text("[]")
    (cv_run / "predictions.csv").write_text("case_id,prob_HCC,prob_ICC\nCT0000,0.5,0.5\n")
    one_line_error(["compare", cv_run, train_run, *base], str(train_run), "`train` run")


# -- item 10: bundle integrity --------------------------------------------------------------------


def _flip_bytes(path: Path, n: int = 64) -> None:
    """Bit-flip `n` bytes at the end of the file (tensor data, not the safetensors header)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - n, len(data)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_bundle_records_the_sha256_of_its_weights_and_refuses_a_modified_file(
    work: Path, tmp_path: Path
) -> None:
    import hashlib

    bundle = Path(shutil.copytree(work / "bundle", tmp_path / "bundle"))
    weights = bundle / "model.safetensors"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta[WEIGHTS_SHA256] == hashlib.sha256(weights.read_bytes()).hexdigest()
    load_bundle(bundle)
    _flip_bytes(weights)
    with pytest.raises(BundleError, match="SHA-256") as exc:
        load_bundle(bundle)
    assert exc.value.path == str(weights)
    out = tmp_path / "o"
    one_line_error(
        ["predict", "--bundle", bundle, work / "ds", "--case", "CT0000", "--out", out],
        str(weights),
        "SHA-256",
    )


def test_a_bundle_without_a_checksum_still_loads(work: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(work / "bundle", tmp_path / "old"))
    meta = json.loads((bundle / "bundle.json").read_text())
    del meta[WEIGHTS_SHA256]  # as written before checksums
    (bundle / "bundle.json").write_text(json.dumps(meta))
    model, _ = load_bundle(bundle)
    fresh, _ = load_bundle(work / "bundle")
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_an_encoder_bundle_refuses_modified_weights(tmp_path: Path) -> None:
    from liverphase.models.registry import create_model
    from liverphase.ssl.bundle import load_encoder, save_encoder_bundle

    def net():
        torch.manual_seed(0)
        return create_model("std_net", 2, ["NC", "PV"], base_channels=4, scales=3)

    folder = save_encoder_bundle(tmp_path / "enc", net(), {"model": "std_net"})
    assert WEIGHTS_SHA256 in json.loads((folder / "bundle.json").read_text())
    load_encoder(net(), folder)
    _flip_bytes(folder / "model.safetensors")
    with pytest.raises(BundleError, match="SHA-256"):
        load_encoder(net(), folder)


# -- item 13: misleading words --------------------------------------------------------------------


def test_too_few_patients_does_not_advise_one_fold() -> None:
    with pytest.raises(DatasetError, match="at least 2 patients of every class") as exc:
        patient_folds(["a", "b", "c"], ["p1", "p2", "p3"], ["A", "A", "B"], k=2)
    assert "--folds 1" not in str(exc.value)


def test_synth_offers_only_the_presets_it_has() -> None:
    result = RUNNER.invoke(app, ["synth", "--help"])
    assert result.exit_code == 0 and "512" not in result.output
    assert "tiny" in result.output


# -- item 8: filesystem errors are one line naming the path ---------------------------------------


def test_an_output_path_that_is_a_file_is_one_line(work: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["predict", "--bundle", work / "bundle", work / "ds", "--case", "CT0000"]
    one_line_error([*args, "--out", blocker], str(blocker))
    one_line_error([*args, "--out", blocker / "sub"], str(blocker))


def test_only_filesystem_oserrors_become_user_errors() -> None:
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/x")) == (
        "/x: Permission denied"
    )
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device"
    )
    assert os_error_message(ConnectionResetError(errno.ECONNRESET, "reset")) is None
