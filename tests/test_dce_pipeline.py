"""DCE-MRI end to end through the CLI: a five-phase gadoxetic study (PRE, ART, PV, TP, HBP; MR
signal, no HU) read from DICOM and from NIfTI → registration and preprocessing → a trained std_net
→ prediction.json, Grad-CAM per phase and report.html."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.io.dicom import read_dicom_study
from liverphase.io.nifti import read_image
from liverphase.io.study import same_grid
from liverphase.phases import DCE_PHASES
from liverphase.synth.mri_dce import synth_dce_cohort
from liverphase.synth.mri_dce_kinetics import DCE_CLASSES

RUNNER = CliRunner()
CT_ONLY = ("NC", "DL")  # CT phase names that must never name an MR series
# The DICOM writer stores MR signal losslessly (int16 signal, no rescale: checked below) and the
# geometry as 16-character decimal strings (sub-micrometre rounding), and CPU inference is
# deterministic, so both reads should give the same probabilities up to prediction.json's 6-decimal
# rounding; 1e-4 leaves room for the registration optimiser to stop a step apart on that rounding.
PROB_TOL = 1e-4
# kinetics are rounded to 0.01 signal units; the phases' liver means lie >= ~20 units apart
SIGNAL_TOL = 0.05
HU = re.compile(r"\bHU\b")


@dataclass
class Run:
    """One `liverphase predict` output folder, its prediction.json and its figures' texts."""

    out: Path
    pred: dict[str, Any]
    figures: list[list[str]]


def _ok(args: list[str]) -> str:
    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


@contextmanager
def _figure_texts() -> Iterator[list[list[str]]]:
    """Record every text (titles, axis labels, legends) of each matplotlib figure saved meanwhile:
    the report embeds its figures as PNG, so their words are not in the HTML."""
    seen: list[list[str]] = []
    original = Figure.savefig

    def spy(self: Figure, *args: Any, **kwargs: Any) -> Any:
        seen.append([t.get_text() for t in self.findobj(Text) if t.get_text()])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", spy)
        yield seen


def _predict(args: list[str], out: Path) -> Run:
    with _figure_texts() as figures:
        _ok(["predict", *args, "--out", out])
    return Run(out, json.loads((out / "prediction.json").read_text()), figures)


def _html_text(path: Path) -> str:
    """report.html without its base64 images."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", path.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny net gains nothing from two, and on a shared 2-core machine
    spinning OpenMP workers made the module's time vary several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six labeled site-A DCE studies, the first also as a DICOM study (OUT/dicom/{case})."""
    out = tmp_path_factory.mktemp("dce") / "ds"
    return synth_dce_cohort(out, cases=6, seed=11, site="A", dicom=1, preset="tiny")


@pytest.fixture(scope="module")
def dicom_case(cohort: Path) -> Path:
    """The DICOM study's folder (OUT/dicom/DA11-0000)."""
    return next(p for p in sorted((cohort / "dicom").iterdir()) if p.is_dir())


@pytest.fixture(scope="module")
def bundle(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """std_net trained for one epoch on the cohort (tiny crop, 4 base channels, 3 scales)."""
    root = tmp_path_factory.mktemp("dce_run")
    config = root / "small.yaml"
    config.write_text("train:\n  batch_size: 4\npreprocess:\n  size: [8, 16, 16]\n")
    out = _ok(
        ["train", cohort, "--model", "std_net", "--out", root / "run", "--profile", "cpu",
         "--epochs", 1, "--config", config, "-o", "base_channels=4", "-o", "scales=3"]
    )  # fmt: skip
    assert "bundle:" in out
    return root / "run" / "bundle"


@pytest.fixture(scope="module")
def dicom_run(bundle: Path, dicom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`predict` of the DICOM study with its mask file."""
    mask = dicom_case.parent / f"{dicom_case.name}_mask.nii.gz"
    out = tmp_path_factory.mktemp("dce_pred") / "dicom"
    return _predict([dicom_case, "--bundle", bundle, "--mask", mask], out)


@pytest.fixture(scope="module")
def nifti_run(
    bundle: Path, cohort: Path, dicom_case: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """`predict` of the same study from the nnU-Net dataset (its mask from labelsTr)."""
    out = tmp_path_factory.mktemp("dce_pred") / "nifti"
    return _predict([cohort, "--case", dicom_case.name, "--bundle", bundle], out)


def test_dicom_reader_names_the_mri_phases(cohort: Path, dicom_case: Path) -> None:
    """The DICOM reader names the MR series PRE/ART/PV/TP/HBP from vendor wording, losslessly."""
    study = read_dicom_study(dicom_case)
    assert list(study.phases) == list(DCE_PHASES)
    assert study.metadata["modality"] == "MR"
    assert not set(CT_ONLY) & set(study.phases)
    descriptions = study.metadata["series_descriptions"]
    assert all(descriptions[p] != p for p in DCE_PHASES), descriptions  # vendor wording, mapped
    assert "description" in study.metadata["phase_assignment"].values()
    for k, phase in enumerate(DCE_PHASES):  # each name on the right series, pixels bit-identical
        nifti = read_image(cohort / "imagesTr" / f"{dicom_case.name}_{k:04d}.nii.gz")
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(study.phases[phase]), sitk.GetArrayFromImage(nifti)
        )
        assert same_grid(study.phases[phase], nifti, tol=1e-3)


def test_prediction_has_two_class_probabilities_summing_to_one(
    dicom_run: Run, nifti_run: Run
) -> None:
    """prediction.json: non-proliferative/proliferative probabilities summing to 1, MR kinetics."""
    for run in (dicom_run, nifti_run):
        pred = run.pred
        probs = pred["probabilities"]
        assert list(probs) == list(DCE_CLASSES)
        assert all(0.0 <= v <= 1.0 for v in probs.values())
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert pred["label"] == max(probs, key=probs.get)
        assert pred["phases_present"] == list(DCE_PHASES) == pred["phases"]
        assert pred["reference_phase"] == "PV" and pred["case_id"] == "DA11-0000"
        # MR signal: per-phase rows in signal units, no HU keys and no HU-threshold patterns
        assert list(pred["kinetics"]) == list(DCE_PHASES)
        for row in pred["kinetics"].values():
            assert row["lesion_signal"] > 0 and row["liver_signal"] > 0
            assert not [k for k in row if k.endswith("_hu")], row
        assert pred["patterns"] is None
        hbp = pred["kinetics"]["HBP"]  # gadoxetic HBP: the HCC is darker than its liver
        assert hbp["lesion_signal"] < hbp["liver_signal"]
    assert dicom_run.pred["source"]["kind"] == "dicom"
    assert nifti_run.pred["source"]["kind"] == "nifti"


def test_dicom_and_nifti_predictions_agree(dicom_run: Run, nifti_run: Run) -> None:
    """The same study gives the same class, probabilities, per-phase kinetics and CAMs either way."""
    a, b = dicom_run.pred, nifti_run.pred
    assert a["label"] == b["label"]
    for c in DCE_CLASSES:
        assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=PROB_TOL)
    # A one-epoch net barely depends on its input, so agreeing probabilities alone prove little;
    # the per-phase kinetics and CAMs would differ if a phase were misnamed or rescaled.
    assert a["lesion"]["voxels"] == b["lesion"]["voxels"]
    for p in DCE_PHASES:
        for key in ("lesion_signal", "liver_signal", "rim_signal"):
            assert a["kinetics"][p][key] == pytest.approx(b["kinetics"][p][key], abs=SIGNAL_TOL)
        cam_a = read_image(dicom_run.out / f"cam_{p}.nii.gz")
        cam_b = read_image(nifti_run.out / f"cam_{p}.nii.gz")
        assert same_grid(cam_a, cam_b, tol=1e-3)
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(cam_a), sitk.GetArrayFromImage(cam_b), atol=1e-3
        )


def test_report_names_the_mri_phases_and_shows_no_hu(dicom_run: Run, nifti_run: Run) -> None:
    """report.html names PRE..HBP and gives MR intensities in signal units, never in HU."""
    for run in (dicom_run, nifti_run):
        text = _html_text(run.out / "report.html")
        assert "For research use only" in text
        assert f"phases used {', '.join(DCE_PHASES)}" in text
        for phase in DCE_PHASES:  # phase importance and kinetics tables
            assert text.count(f"<td>{phase}</td>") >= 2, phase
        assert not [p for p in CT_ONLY if f"<td>{p}</td>" in text]
        assert "lesion (signal)" in text and "liver (signal)" in text
        assert not HU.search(text), HU.findall(text)
        # the figures' words (embedded as PNG): the kinetics plot's axis is signal, not HU
        assert not [t for f in run.figures for t in f if HU.search(t)], run.figures
        kinetics = [f for f in run.figures if "Enhancement kinetics" in f]
        assert len(kinetics) == 1 and "mean signal (a.u.)" in kinetics[0], run.figures


def test_grad_cam_per_mri_phase(dicom_run: Run, dicom_case: Path) -> None:
    """A Grad-CAM per MRI phase: on the PV reference grid, in [0, 1], and in the report's figure."""
    study = read_dicom_study(dicom_case)
    cam = dicom_run.pred["cam"]
    assert cam["shared_across_phases"] is False and list(cam["raw_peak"]) == list(DCE_PHASES)
    for phase in DCE_PHASES:
        img = read_image(dicom_run.out / f"cam_{phase}.nii.gz")
        assert same_grid(img, study.phases["PV"], tol=1e-3)
        arr = sitk.GetArrayFromImage(img)
        assert arr.min() >= 0.0 and 0.0 < arr.max() <= 1.0
    assert sorted(p.name for p in dicom_run.out.glob("cam_*.nii.gz")) == sorted(
        f"cam_{p}.nii.gz" for p in DCE_PHASES
    )
    slices = [f for f in dicom_run.figures if any("Grad-CAM" in t for t in f)]
    assert len(slices) == 1
    assert [t for t in slices[0] if t.endswith(" Grad-CAM")] == [
        f"{p} Grad-CAM" for p in DCE_PHASES
    ]
    assert [t for t in slices[0] if t in DCE_PHASES] == list(DCE_PHASES)  # the image row's titles
