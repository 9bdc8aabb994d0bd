"""The pipeline on realistic studies: read, register, preprocess and predict seconds per study, and
preprocessing throughput with 1 and 2 workers.

The studies are synthetic 4-phase CTs on the grid of a routine liver protocol (512×512×80 voxels of
0.7×0.7×2.5 mm, `REALISTIC_GRID`); a `--quick` run uses the `tiny` preset instead. Prediction uses a
miff_spm bundle with random weights at the CPU profile's grid (the figures are about time, not
answers; a quick run uses the models' quick grid), Grad-CAM on and phase occlusion off, and locates the lesion from the dataset's mask.
`end_to_end` is reading the NIfTI case plus everything `predict_study` does (register, crop and
resample, model, CAM, kinetics, report); `predict` is the part after preprocessing.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from liverphase.bench.models import QUICK_INPUT
from liverphase.inference.predictor import Predictor
from liverphase.inference.run import read_dicom
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import create_model
from liverphase.phases import CT_PHASES
from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.config import PreprocessConfig
from liverphase.synth.ct import synth_ct_cohort
from liverphase.train.bundle import read_bundle_meta, save_bundle
from liverphase.train.config import PROFILE_INPUT, profile_config
from liverphase.train.profile import spread

REALISTIC_GRID: dict[str, tuple] = {"grid_size": (512, 512, 80), "grid_spacing_mm": (0.7, 0.7, 2.5)}
"""Synth overrides forcing every phase onto a routine liver CT grid (x, y, z)."""
BENCH_MODEL = "miff_spm"
CLASS_NAMES = ["HCC", "ICC"]
STAGES = ("register", "preprocess", "model", "cam", "kinetics", "report")
"""predict_study's own timing keys reported per stage."""


def make_cohort(root: Path, cases: int, quick: bool, seed: int = 0) -> Path:
    """Synthetic CT studies (realistic grid, or `tiny` when quick); the first also as DICOM."""
    if quick:
        return synth_ct_cohort(root, cases=cases, seed=seed, dicom=1, preset="tiny")
    return synth_ct_cohort(root, cases=cases, seed=seed, dicom=1, **REALISTIC_GRID)


def make_bundle(folder: Path, size: Sequence[int] | None = None, seed: int = 0) -> Path:
    """A miff_spm bundle with random (seeded) weights preprocessing to `size` (the CPU grid)."""
    torch.manual_seed(seed)
    config = PreprocessConfig(size=tuple(size or PROFILE_INPUT["cpu"]), phases=tuple(CT_PHASES))
    net = create_model(
        BENCH_MODEL, len(CLASS_NAMES), list(CT_PHASES), in_channels=config.n_channels
    )
    meta = {
        "model": BENCH_MODEL,
        "model_options": {},
        "class_names": CLASS_NAMES,
        # a trained cpu-profile bundle's recipe, so predict averages the same test-time flips
        "training": profile_config("cpu").to_dict(),
        "reference_phase": "PV",
        "preprocessing": config.to_dict(),
    }
    return save_bundle(folder, net, meta)


def time_predict(
    bundle: Path, dataset: Path, work: Path, warmup: int = 1, repeats: int = 3
) -> dict[str, Any]:
    """Seconds per stage of predicting the dataset's first case (spread over `repeats` runs)."""
    start = time.perf_counter()
    predictor = Predictor(bundle)
    load_s = time.perf_counter() - start
    ds = open_dataset(dataset)
    case_id = ds.cases[0].case_id
    runs: list[dict[str, float]] = []
    for i in range(warmup + repeats):
        tick = time.perf_counter()
        study = ds.load_study(case_id)
        read_s = time.perf_counter() - tick
        out = work / f"predict_{i}"
        pred = predictor.predict_study(study, out, cam=True, occlusion=False, read_seconds=read_s)
        end_to_end = time.perf_counter() - tick
        shutil.rmtree(out, ignore_errors=True)
        t = pred["timings"]
        run = {"read_nifti": read_s, **{k: float(t.get(k, 0.0)) for k in STAGES}}
        run["predict"] = sum(run[k] for k in ("model", "cam", "kinetics", "report"))
        run["end_to_end"] = end_to_end
        if i >= warmup:
            runs.append(run)
    timings = {k: spread([r[k] for r in runs]) for k in runs[0]}
    dicom = dataset / "dicom" / case_id
    if dicom.is_dir():
        timings["read_dicom"] = _timed_read(lambda: read_dicom(dicom), warmup, repeats)
    return {
        "case_id": case_id,
        "grid_size": list(study.phases["PV"].GetSize()),
        "spacing_mm": [round(v, 3) for v in study.phases["PV"].GetSpacing()],
        "phases": list(study.phases),
        "load_bundle_s": load_s,
        "timings": timings,
    }


def _timed_read(read: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    times = []
    for i in range(warmup + repeats):
        tick = time.perf_counter()
        read()
        if i >= warmup:
            times.append(time.perf_counter() - tick)
    return spread(times)


def throughput(
    dataset: Path,
    config: PreprocessConfig,
    work: Path,
    workers: int,
    repeats: int = 3,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Studies per minute through `preprocess_dataset` (reading included), a fresh cache per run.

    With `keep`, the last run's cache is moved there (the data-loading benchmark reads it).
    """
    rates, seconds = [], []
    for r in range(repeats):
        cache = work / f"cache_w{workers}_{r}"
        stats = preprocess_dataset(dataset, cache, config, workers=workers, progress=False)
        rates.append(60.0 * stats["built"] / stats["seconds"])
        seconds.append(stats["seconds"] / max(stats["built"], 1))
        if keep is not None and r == repeats - 1:
            shutil.rmtree(keep, ignore_errors=True)
            cache.rename(keep)
        else:
            shutil.rmtree(cache, ignore_errors=True)
    return {
        "workers": workers,
        "studies": stats["built"],
        "studies_per_minute": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "seconds_per_study": spread(seconds),
    }


def run_pipeline(
    work: Path, quick: bool, repeats: int = 3, log: Callable[[str], object] = print
) -> dict[str, Any]:
    """The pipeline section of bench.json; leaves the preprocessed cache in `work/cache`."""
    cases = 2 if quick else 4
    log(f"pipeline: synthesising {cases} {'tiny' if quick else '512×512×80'} 4-phase studies")
    tick = time.perf_counter()
    dataset = make_cohort(work / "cohort", cases, quick)
    synth_s = time.perf_counter() - tick
    bundle = make_bundle(work / "bundle", QUICK_INPUT[2:] if quick else PROFILE_INPUT["cpu"])
    log("pipeline: predict (read, register, preprocess, model, Grad-CAM, report)")
    result = time_predict(bundle, dataset, work, repeats=repeats)
    config = PreprocessConfig.from_dict(read_bundle_meta(bundle)["preprocessing"])
    # warm-up: imports and page cache for the whole preprocessing path, on one study
    preprocess_dataset(
        dataset, work / "cache_warmup", config, progress=False, cases=[result["case_id"]]
    )
    shutil.rmtree(work / "cache_warmup", ignore_errors=True)
    log("pipeline: preprocessing throughput with 1 and 2 workers")
    result["throughput"] = {
        f"workers_{w}": throughput(
            dataset, config, work, w, repeats, keep=work / "cache" if w == 1 else None
        )
        for w in (1, 2)
    }
    result.update(
        preset="tiny" if quick else "realistic",
        studies=cases,
        synth_s=synth_s,
        bundle={"model": BENCH_MODEL, "size": list(config.size), "random_weights": True},
        dataset=str(dataset),
        cache=str(work / "cache"),
        preprocessing=config.to_dict(),
    )
    return result
