"""Synthetic T1W/T2W cirrhosis MRI: layout, determinism, masks, missing sequences, stage truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.errors import ConfigError
from liverphase.io.nifti import open_dataset, read_image
from liverphase.io.study import same_grid
from liverphase.synth.anatomy import T
from liverphase.synth.cirrhosis import (
    CirrhosisSynthConfig,
    draw_sequences,
    sample_patient,
    synth_cirrhosis_cohort,
    synth_cirrhosis_study,
)
from liverphase.synth.cirrhosis_anatomy import LIVER_LABELS, render, signal_table
from liverphase.synth.shapes import Domain, Grid, member

TINY = CirrhosisSynthConfig.preset("tiny")
# Features that rise (+1) or fall (-1) with the stage; liver_size is stage-independent nuisance
TRENDS = {
    "nodularity_mm": 1,
    "nodule_wavelength_mm": -1,
    "right_lobe_scale": -1,
    "left_lobe_scale": 1,
    "caudate_scale": 1,
    "caudate_right_ratio": 1,
    "fibrosis_fraction": 1,
    "nodule_fraction": 1,
    "spleen_scale": 1,
    "spleen_volume_ml": 1,
    "ascites_mm": 1,
}


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "cases.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _truth(root: Path) -> dict[str, dict]:
    return {c["case_id"]: c for c in json.loads((root / "synth.json").read_text())["cases"]}


def _files(root: Path, case_id: str) -> dict[str, Path]:
    paths = {"T1W": f"imagesTr/{case_id}_0000.nii.gz", "T2W": f"imagesTr/{case_id}_0001.nii.gz"}
    return {seq: root / p for seq, p in paths.items() if (root / p).is_file()}


def _moved(
    image: sitk.Image, onto: sitk.Image, shift_zyx: list[float], nearest: bool
) -> np.ndarray:
    """`image` resampled onto `onto`'s grid, undoing a recorded anatomy shift (z, y, x mm)."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    transform = sitk.TranslationTransform(3, tuple(float(v) for v in shift_zyx[::-1]))
    return sitk.GetArrayFromImage(sitk.Resample(image, onto, transform, interp, 0))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cirr") / "ds"
    return synth_cirrhosis_cohort(
        root, cases=24, seed=7, healthy=4, preset="tiny", second_study_fraction=0.3
    )


def test_layout_dataset_json_and_cases_csv(cohort: Path) -> None:
    meta = json.loads((cohort / "dataset.json").read_text())
    assert set(meta) == {
        "channel_names",
        "labels",
        "modality",
        "roi",
        "reference_phase",
        "missing_phases",
        "ordinal",
        "class_names",
        "numTraining",
        "file_ending",
    }
    assert meta["channel_names"] == {"0": "T1W", "1": "T2W"}
    assert meta["labels"] == {"background": 0, "liver": 1}
    assert (meta["modality"], meta["roi"], meta["reference_phase"]) == ("MR", "organ", "T1W")
    assert meta["missing_phases"] == "allow" and meta["ordinal"] is True
    assert meta["class_names"] == ["healthy", "mild", "moderate", "severe"]
    assert meta["numTraining"] == 28 and meta["file_ending"] == ".nii.gz"
    rows = _rows(cohort)
    assert [r["case_id"] for r in rows] == [f"MR{i:04d}" for i in range(28)]
    assert {"case_id", "patient_id", "label", "stage", "sequences", "reference"} <= set(rows[0])
    on_disk = {p.name for p in (cohort / "imagesTr").iterdir()}
    expected = set()
    for r in rows:
        seqs = r["sequences"].split()
        expected |= {f"{r['case_id']}_{['T1W', 'T2W'].index(s):04d}.nii.gz" for s in seqs}
        assert (cohort / "labelsTr" / f"{r['case_id']}.nii.gz").is_file()
        assert r["reference"] == seqs[0]
        assert int(r["stage"]) == meta["class_names"].index(r["label"])
    assert on_disk == expected
    assert open_dataset(cohort).class_names == meta["class_names"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = synth_cirrhosis_cohort(tmp_path / "a", cases=5, seed=1, healthy=1, preset="tiny")
    b = synth_cirrhosis_cohort(tmp_path / "b", cases=5, seed=1, healthy=1, preset="tiny")
    c = synth_cirrhosis_cohort(tmp_path / "c", cases=5, seed=2, healthy=1, preset="tiny")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "synth.json").read_text() != (c / "synth.json").read_text()
    fa, fc = _files(a, "MR0000"), _files(c, "MR0000")
    assert set(fa) != set(fc) or all(fa[s].read_bytes() != fc[s].read_bytes() for s in fa)
    # the staged cases do not depend on how many controls follow them
    d = synth_cirrhosis_cohort(tmp_path / "d", cases=5, seed=1, healthy=0, preset="tiny")
    assert _rows(d) == _rows(a)[:5]


def test_mask_on_reference_grid_and_liver_signal(cohort: Path) -> None:
    truth = _truth(cohort)
    ratios = []
    for case_id, t in truth.items():
        files = _files(cohort, case_id)
        assert list(files) == t["sequences"]
        ref = read_image(files[t["reference"]])
        mask = read_image(cohort / "labelsTr" / f"{case_id}.nii.gz")
        assert same_grid(mask, ref)
        m = sitk.GetArrayFromImage(mask)
        assert set(np.unique(m)) == {0, 1}
        vol = m.sum() * np.prod(mask.GetSpacing()) / 1000
        assert vol == pytest.approx(t["liver_volume_ml"], abs=0.2)
        if len(files) == 2:
            # T2W moved onto the T1W grid: liver is T1-brighter than T2 (fluid and spleen are not)
            core = ndimage.binary_erosion(m > 0, iterations=1)
            t1 = sitk.GetArrayFromImage(ref)[core]
            t2 = _moved(
                read_image(files["T2W"]), ref, t["per_sequence"]["T2W"]["shift_mm_zyx"], False
            )
            ratios.append(np.median(t1) / np.median(t2[core]))
    assert ratios and all(1.3 < r < 2.8 for r in ratios), ratios
    t1_table, t2_table = signal_table("T1W"), signal_table("T2W")
    assert t1_table[T.LIVER] / t2_table[T.LIVER] > 1.5
    assert t1_table[T.SPLEEN] / t2_table[T.SPLEEN] < 1.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_clean_images_follow_the_tables_and_the_recorded_shift() -> None:
    clean = {"noise": (0.0, 0.0), "bias_scale": 0.0, "gain": (1.0, 1.0), "signal_jitter": 0.0}
    config = CirrhosisSynthConfig.preset("tiny", blur_mm=(0.0, 0.0), shift_mm=8.0, **clean)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        study, truth = synth_cirrhosis_study(rng, config, "c", "p", 2, sequences=("T1W", "T2W"))
        labels = study.metadata["labels"]
        mask = sitk.GetArrayFromImage(study.mask) > 0
        np.testing.assert_array_equal(mask, member(labels["T1W"], LIVER_LABELS))
        t1 = sitk.GetArrayFromImage(study.phases["T1W"]).astype(float)
        # the table behind a slice profile of sigma 0.35 slice (no in-plane blur asked for)
        table = signal_table("T1W")[labels["T1W"]]
        expect = ndimage.gaussian_filter(table, (0.35, 0, 0), mode="nearest", truncate=3.0)
        near = ndimage.binary_dilation(mask, np.ones((3, 1, 1), bool))
        assert np.abs(t1 - expect)[~near].max() <= 1  # rounding only
        # inside, only the ±3% liver texture separates the clean image from the table
        assert 0 < np.abs(t1 - expect)[mask].mean() < 0.03 * 500
        shift = truth["per_sequence"]["T2W"]["shift_mm_zyx"]
        assert np.linalg.norm(shift) > 0.5
        t2_liver = sitk.GetImageFromArray(member(labels["T2W"], LIVER_LABELS).astype(np.uint8))
        t2_liver.CopyInformation(study.phases["T2W"])
        right = _dice(_moved(t2_liver, study.phases["T1W"], shift, True) > 0, mask)
        wrong = _dice(_moved(t2_liver, study.phases["T1W"], [-v for v in shift], True) > 0, mask)
        assert right > 0.9 and right > wrong + 0.02


def test_missing_sequences_and_mix() -> None:
    rng = np.random.default_rng(0)
    draws = [draw_sequences(rng, (0.5, 0.3, 0.2)) for _ in range(3000)]
    share = [np.mean([d == want for d in draws]) for want in (("T1W", "T2W"), ("T1W",), ("T2W",))]
    np.testing.assert_allclose(share, (0.5, 0.3, 0.2), atol=0.03)


def test_cohort_lacks_each_sequence_somewhere_never_both(cohort: Path) -> None:
    present = [set(_files(cohort, r["case_id"])) for r in _rows(cohort)]
    assert any(p == {"T1W"} for p in present) and any(p == {"T2W"} for p in present)
    assert any(p == {"T1W", "T2W"} for p in present) and all(present)


def test_second_study_shares_patient_and_stage(cohort: Path) -> None:
    rows, truth = _rows(cohort), _truth(cohort)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    pairs = [v for v in by_patient.values() if len(v) == 2]
    assert pairs and all(len(v) <= 2 for v in by_patient.values())
    for first, second in pairs:
        assert first["label"] == second["label"] and second["follow_up"] == "1"
        a, b = truth[first["case_id"]], truth[second["case_id"]]
        assert a["severity"] == b["severity"] and a["nodularity_mm"] == b["nodularity_mm"]
        assert a["per_sequence"] != b["per_sequence"]  # a new acquisition


def test_class_balance(cohort: Path, tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    for r in _rows(cohort):
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    assert counts["healthy"] == 4
    staged = [counts[k] for k in ("mild", "moderate", "severe")]
    assert sum(staged) == 24 and max(staged) - min(staged) <= 2
    root = synth_cirrhosis_cohort(tmp_path / "x", cases=4, seed=0, preset="tiny")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["class_names"] == ["mild", "moderate", "severe"]
    assert {r["label"] for r in _rows(root)} <= set(meta["class_names"])


@pytest.fixture(scope="module")
def patients() -> dict[int, list]:
    return {
        stage: [
            sample_patient(np.random.default_rng([5, stage, i]), TINY, stage) for i in range(40)
        ]
        for stage in range(4)
    }


def test_features_follow_stage_on_average_but_overlap(patients: dict[int, list]) -> None:
    values = {s: [p.truth() for p in ps] for s, ps in patients.items()}
    for name, sign in TRENDS.items():
        means = [np.mean([v[name] for v in values[s]]) for s in range(4)]
        trend = sign * np.diff(means)
        assert np.all(trend >= 0) and sign * (means[3] - means[0]) > 0, (name, means)
        for s in range(3):
            lo, hi = (
                np.array([v[name] for v in values[s]]),
                np.array([v[name] for v in values[s + 1]]),
            )
            # no threshold on this feature alone tells neighbouring stages apart
            best = max(
                (np.sum(sign * lo <= sign * t) + np.sum(sign * hi > sign * t)) / (len(lo) + len(hi))
                for t in np.concatenate([lo, hi])
            )
            assert best < 0.92, (name, s, best)
    sizes = [np.mean([v["liver_size"] for v in values[s]]) for s in range(4)]
    assert np.ptp(sizes) < 0.06  # liver size is nuisance, not stage
    assert np.mean([v["ascites_mm"] > 0 for v in values[3]]) > 0.2
    assert not any(v["ascites_mm"] > 0 for v in values[0] + values[1])


def _roughness(patient, step: float = 2.0) -> float:  # noqa: ANN001
    """Share of liver-boundary voxels the mask loses or gains when smoothed (4 mm)."""
    lo, hi = patient.box_lo.copy(), patient.box_hi.copy()
    mid = (patient.anatomy.liver_lo[2] + patient.anatomy.liver_hi[2]) / 2
    lo[2], hi[2] = mid - 40, mid + 20
    size = tuple(int(n) for n in np.ceil((hi - lo) / step))
    mask = member(render(patient, Domain(Grid(size, (step,) * 3, tuple(lo)))), LIVER_LABELS)
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), 4 / step) > 0.5
    edge = mask & ~ndimage.binary_erosion(mask)
    return float((mask != smooth).sum() / edge.sum())


def test_rendered_surface_roughness_and_spleen_rise_with_stage(patients: dict[int, list]) -> None:
    rough = {s: np.mean([_roughness(p) for p in patients[s][:8]]) for s in (0, 1, 3)}
    assert rough[3] > rough[1] + 0.03 and rough[3] > rough[0] + 0.03, rough
    spleen = {}
    for s in (0, 3):
        counts = []
        for p in patients[s][:8]:
            size = tuple(int(n) for n in np.ceil((p.box_hi - p.box_lo) / 4.0))
            labels = render(p, Domain(Grid(size, (4.0,) * 3, tuple(p.box_lo))))
            counts.append((labels == T.SPLEEN).sum() * 64 / 1000)
        spleen[s] = np.mean(counts)
    assert spleen[3] > 1.3 * spleen[0], spleen


def test_rician_background_is_positive() -> None:
    config = CirrhosisSynthConfig.preset("tiny", fov_margin_mm=(20.0, 30.0))
    study, truth = synth_cirrhosis_study(
        np.random.default_rng(5), config, "c", "p", 2, sequences=("T1W", "T2W")
    )
    for seq, image in study.phases.items():
        arr = sitk.GetArrayFromImage(image).astype(float)
        assert arr.min() >= 0
        background = ndimage.binary_erosion(
            member(study.metadata["labels"][seq], (T.AIR, T.LUNG)), iterations=2
        )
        assert background.sum() > 300
        sigma = truth["per_sequence"][seq]["noise_sigma"]
        # magnitude of complex Gaussian noise: Rayleigh, mean σ√(π/2), sd σ√(2 − π/2)
        assert arr[background].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.08)
        assert arr[background].std() == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=0.12)


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="healthy"):
        synth_cirrhosis_cohort(tmp_path / "a", cases=3, seed=0, healthy=-1, preset="tiny")
    with pytest.raises(ConfigError, match="cases"):
        synth_cirrhosis_cohort(tmp_path / "a", cases=0, seed=0, preset="tiny")
    with pytest.raises(ConfigError, match="preset"):
        synth_cirrhosis_cohort(tmp_path / "a", cases=3, seed=0, preset="huge")
    with pytest.raises(ConfigError, match="sequence_mix"):
        CirrhosisSynthConfig.preset("tiny", sequence_mix=(0.5, 0.5, 0.5))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an earlier synthetic cohort"):
        synth_cirrhosis_cohort(tmp_path / "other", cases=1, seed=0, preset="tiny")


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", str(out), "--kind", "mri-cirrhosis", "--cases", "3", "--seed", "4"]
    result = runner.invoke(app, [*args, "--healthy", "1", "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in _rows(out)][-1] == "healthy" and len(_rows(out)) == 4
    for bad in (["--healthy", "-2"], ["--dicom", "1"]):
        result = runner.invoke(app, [*args, "--preset", "tiny", *bad])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    result = runner.invoke(app, ["synth", str(tmp_path / "d"), "--kind", "mri-pet"])
    assert result.exit_code == 2 and "mri-dce" in result.output  # names the kinds there are
    result = runner.invoke(app, [*args, "--preset", "tiny", "--unlabeled", "2"])
    assert result.exit_code == 2 and "mri-dce only" in result.output
