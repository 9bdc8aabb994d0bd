"""`liverphase ablate SITE_A --suite ssl --external SITE_B`: does self-supervised pretraining help?

The pHCC-SSL experiment as one table. Each pretraining method (`mae`, `barlow`, ...) pretrains the
model's per-phase encoder once on every study of site A, labeled or not (labels ignored; site B is
never seen), into RUN/pretrain/<method>. Then for every initialisation (none, and each method's
encoder bundle) and every share of site A's labels (`label_fraction`: a seeded share of each class's
training patients per fold, the test folds whole) a patient-level cross-validation on site A runs
through `ablate`'s reusable runs, on the same folds, and its fold bundles (averaged) are evaluated
on site B. Every row: AUC with a 95% patient-bootstrap CI on site A (out-of-fold) and on site B, and
DeLong's p against no pretraining at the same label share on the same cases: Obuchowski's (1997)
clustered version when a patient has several studies (the report names the test; the CIs resample
patients).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.errors import ConfigError
from liverphase.evaluate.ablate_runs import train_variants, variant_key
from liverphase.evaluate.compare import aligned_predictions, log_seconds, oof_probs
from liverphase.evaluate.external import evaluate_run
from liverphase.evaluate.pretrain import run_pretrain
from liverphase.evaluate.report import markdown_table
from liverphase.evaluate.stats import auc_test, auc_test_name
from liverphase.io.nifti import NnUNetDataset, open_dataset

MODEL = "std_net"  # the model whose per-phase encoder `ssl` pretrains
NONE = "none"
DEFAULT_METHODS = ("mae", "barlow")
DEFAULT_FRACTIONS = (0.1, 0.25, 1.0)
COLUMNS = [
    ("init", "Pretraining", ""),
    ("fraction_text", "Labels", ""),
    ("n_train", "Labeled train studies / fold", ".0f"),
    ("auc_a", "AUC site A, CV (95% CI)", "ci"),
    ("p_a", "DeLong p A vs none", "p"),
    ("auc_b", "AUC site B, external (95% CI)", "ci"),
    ("p_b", "DeLong p B vs none", "p"),
    ("train_s", "Fine-tune s", ".0f"),
]
PRETRAIN_COLUMNS = [
    ("method", "Method", ""),
    ("studies", "Studies", "d"),
    ("epochs", "Epochs", "d"),
    ("s_per_epoch", "s / epoch", ".1f"),
    ("studies_per_s", "Studies / s", ".2f"),
    ("peak_mb", "Peak RSS MB", ".0f"),
    ("probe_init", "Probe AUC before", ".3f"),
    ("probe_last", "Probe AUC after", ".3f"),
    ("loss_first", "Loss epoch 1", ".4f"),
    ("loss_last", "Loss last", ".4f"),
]


def check_ssl_inputs(
    ds: NnUNetDataset, external: NnUNetDataset, fractions: Sequence[float], methods: Sequence[str]
) -> None:
    """ConfigErrors for a suite that cannot run: a non-binary task, site B's phases or classes
    unlike site A's, label shares outside (0, 1], no method."""
    if len(ds.class_names) != 2:
        raise ConfigError(
            f"the ssl suite is a binary task (AUC); the dataset has classes {ds.class_names}",
            ds.root / "dataset.json",
        )
    missing = [p for p in ds.phases if p not in external.phases]
    if missing:
        raise ConfigError(f"site B lacks phases {missing}", external.root / "dataset.json")
    unknown = sorted({c.label for c in external.cases if c.label} - set(ds.class_names))
    if unknown:
        raise ConfigError(f"site B has labels {unknown} site A lacks", external.root / "cases.csv")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(
            f"label fractions must lie in (0, 1], got {list(fractions)}", "--ssl-option"
        )
    if not methods:
        raise ConfigError("name at least one pretraining method", "--ssl-option")


def ssl_variants(
    model: str,
    options: dict[str, Any],
    bundles: dict[str, Path],
    fractions: Sequence[float],
    freeze_epochs: int,
) -> dict[tuple[str, float], dict[str, Any]]:
    """(init, label fraction) → the cv variant: the model, its label share and encoder bundle."""
    out = {}
    for init in (NONE, *bundles):
        for fraction in fractions:
            variant: dict[str, Any] = {
                "model": model,
                "model_options": dict(options),
                "label_fraction": float(fraction),
            }
            if init != NONE:
                variant["init"] = str(Path(bundles[init]).resolve())
                if freeze_epochs:
                    variant["freeze_epochs"] = freeze_epochs
            out[(init, float(fraction))] = variant
    return out


def pretrain_methods(
    dataset: str | Path,
    out: Path,
    exp_kwargs: dict[str, Any],
    methods: Sequence[str],
    settings: dict[str, Any],
    seed: int,
    workers: int,
    log: Callable[[str], None],
) -> dict[str, Path]:
    """Each method's encoder bundle under RUN/pretrain/<method>. A pretraining already there is
    resumed from its checkpoint, which refuses other settings: a finished one gains no epoch
    (reused), an interrupted one goes on."""
    bundles = {}
    for method in methods:
        folder = out / "pretrain" / method
        before = _bundle_epochs(folder)
        result = run_pretrain(
            dataset,
            folder,
            exp_kwargs,
            {**settings, "method": method},
            seed=seed,
            cache_root=out / "cache",
            workers=workers,
            resume=(folder / "checkpoint").exists(),
            progress=False,
        )
        done = len(result["history"])
        log(f"pretrain {method}: {'reused' if done == before else 'trained'} ({done} epochs)")
        bundles[method] = folder / "bundle"
    return bundles


def _bundle_epochs(folder: Path) -> int:
    """Epochs the bundle in FOLDER/bundle holds (0 without one)."""
    path = folder / "bundle" / "bundle.json"
    return int(json.loads(path.read_text()).get("epochs") or 0) if path.is_file() else 0


def external_run(run: Path, external: str | Path, cache: Path, n_boot: int) -> Path:
    """RUN's fold bundles evaluated on site B into RUN/external (redone when the run is newer)."""
    folder = run / "external"
    metrics = folder / "metrics.json"
    if not metrics.is_file() or metrics.stat().st_mtime < (run / "metrics.json").stat().st_mtime:
        evaluate_run(run, external, folder, n_boot=n_boot, progress=False, cache_root=cache)
    return folder


def _auc(folder: Path) -> tuple[float, list[float]]:
    pooled = json.loads((folder / "metrics.json").read_text())["pooled"]
    return pooled["auc"], pooled["auc_ci"]


def delong_against(folder: Path, reference: Path, positive: str) -> float:
    """Two-sided p of DeLong's test between two prediction folders on the reference's cases,
    clustered by patient when a patient has several studies (`delong_name`)."""
    ids, ref_probs = oof_probs(reference)
    labels, patients, probs = aligned_predictions(folder, ids)
    k = int(np.flatnonzero(np.array(_class_names(folder)) == positive)[0])
    return auc_test((labels == k).astype(int), probs[:, k], ref_probs[:, k], patients)[3]


def delong_name(reference: Path) -> str:
    """The test `delong_against` uses on the reference's cases (`auc_test_name`)."""
    ids, _ = oof_probs(reference)
    return auc_test_name(aligned_predictions(reference, ids)[1])


def _class_names(folder: Path) -> list[str]:
    with open(folder / "predictions.csv", newline="") as fh:
        header = next(csv.reader(fh))
    return [c[len("prob_") :] for c in header if c.startswith("prob_")]


def _n_train(run: Path) -> float:
    """Mean labeled studies per fold the network trained on (the label share, its inner
    validation included), from the fold bundles' recorded splits."""
    counts = []
    for meta in sorted(run.glob("fold_*/bundle/bundle.json")):
        split = json.loads(meta.read_text()).get("split") or {}
        counts.append(len(split.get("train", [])) + len(split.get("validation", [])))
    return float(np.mean(counts)) if counts else float("nan")


def pretrain_row(method: str, folder: Path) -> dict[str, Any]:
    """Cost and effect of one pretraining: seconds per epoch, throughput, peak RSS, probe AUC."""
    with open(folder / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    meta = json.loads((folder / "bundle" / "bundle.json").read_text())
    last_probe = float(rows[-1].get("probe_auc") or "nan")
    seconds = [float(r["seconds"]) for r in rows]
    return {
        "method": method,
        "studies": meta.get("studies"),
        "epochs": len(rows),
        "s_per_epoch": float(np.median(seconds)),
        "studies_per_s": float(np.median([float(r["samples_per_s"]) for r in rows])),
        "peak_mb": max(float(r["max_rss_mb"]) for r in rows),
        "probe_init": (meta.get("metrics") or {}).get("probe_auc_init"),
        "probe_last": last_probe if np.isfinite(last_probe) else None,
        "loss_first": float(rows[0]["loss"]),
        "loss_last": float(rows[-1]["loss"]),
    }


def ssl_rows(
    runs: dict[tuple[str, float], Path], externals: dict[tuple[str, float], Path], positive: str
) -> list[dict[str, Any]]:
    """One row per (init, label share): site A and B AUCs with CIs, DeLong p against `none`."""
    rows = []
    for (init, fraction), run in runs.items():
        auc_a, ci_a = _auc(run)
        auc_b, ci_b = _auc(externals[(init, fraction)])
        row: dict[str, Any] = {
            "init": init,
            "fraction": fraction,
            "fraction_text": f"{fraction:.0%}",
            "run": run.name,
            "n_train": _n_train(run),
            "auc_a": auc_a,
            "auc_a_ci": ci_a,
            "auc_b": auc_b,
            "auc_b_ci": ci_b,
            "train_s": log_seconds(run)[1],
        }
        if init != NONE:
            row["p_a"] = delong_against(run, runs[(NONE, fraction)], positive)
            row["p_b"] = delong_against(
                externals[(init, fraction)], externals[(NONE, fraction)], positive
            )
            row["p_a_test"] = delong_name(runs[(NONE, fraction)])
            row["p_b_test"] = delong_name(externals[(NONE, fraction)])
        rows.append(row)
    return sorted(rows, key=lambda r: (r["fraction"], r["init"] != NONE, r["init"]))


def write_ssl_report(
    out: Path,
    rows: list[dict[str, Any]],
    pretraining: list[dict[str, Any]],
    header: str,
    seconds: float,
) -> dict[str, Any]:
    """RUN/report.md (the label-efficiency table, the test behind its p, the pretraining costs)
    and RUN/ssl.json."""
    tests = {
        f"site {s.upper()}: {r[f'p_{s}_test']}" for r in rows for s in "ab" if f"p_{s}_test" in r
    }
    text = (
        header
        + "\n## Label efficiency\n\n"
        + markdown_table(rows, COLUMNS)
        + (f"\np: {'; '.join(sorted(tests))}.\n" if tests else "")
        + "\n## Pretraining\n\n"
        + markdown_table(pretraining, PRETRAIN_COLUMNS)
        + "\nProbe AUC: a logistic regression on the frozen encoder's pooled features of site A's "
        "labeled studies, patient-grouped CV (before the first and after the last epoch). Peak "
        "RSS: the process's resident-memory high-water mark, CPU.\n"
        + f"\nWall time of this sitting: {seconds} s.\n"
    )
    atomic_write_text(out / "report.md", text)
    result = {"rows": rows, "pretraining": pretraining, "seconds": seconds}
    atomic_write_json(out / "ssl.json", result)
    return {**result, "report": str(out / "report.md")}


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "defaults"


def run_ssl_ablation(
    ds: NnUNetDataset,
    out: Path,
    shared: dict[str, Any],
    external: str | Path | None,
    pretrain: dict[str, Any],
    folds: int,
    profile: str,
    seed: int,
    epochs: int | None,
    workers: int,
    n_boot: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`ablate --suite ssl`: pretrain, fine-tune at every label share (through `train_variants`,
    like any ablate row), evaluate on site B, write the table."""
    start = time.perf_counter()
    if external is None:
        raise ConfigError("the ssl suite needs --external SITE_B (the second site)", "--external")
    shared = dict(shared)
    options = shared.pop("model_options", None) or {}
    settings = dict(pretrain)
    methods = tuple(settings.pop("methods", DEFAULT_METHODS))
    fractions = tuple(float(f) for f in settings.pop("label_fractions", DEFAULT_FRACTIONS))
    freeze = int(settings.pop("freeze_epochs", 0))
    ext = open_dataset(external)
    check_ssl_inputs(ds, ext, fractions, methods)
    exp_kwargs = {"profile": profile, **shared, "model": MODEL, "model_options": options}
    bundles = pretrain_methods(ds.root, out, exp_kwargs, methods, settings, seed, workers, log)
    variants = ssl_variants(MODEL, options, bundles, fractions, freeze)
    by_key = train_variants(
        ds, ds.root, out, list(variants.values()), folds, profile, seed, epochs, shared, workers,
        n_boot, log,
    )  # fmt: skip
    runs = {k: by_key[variant_key(v)] for k, v in variants.items()}
    externals = {}
    for key, run in runs.items():
        log(f"external {run.name}: {key[0]} at {key[1]:.0%} of the labels on {ext.root.name}")
        externals[key] = external_run(run, external, out / "cache", n_boot)
    rows = ssl_rows(runs, externals, ds.class_names[1])
    pretraining = [pretrain_row(m, out / "pretrain" / m) for m in methods]
    n_labeled = sum(1 for c in ds.cases if c.label)
    header = (
        f"# Self-supervised pretraining: label efficiency on two sites\n\nSite A {ds.root} "
        f"({len(ds.cases)} studies, {n_labeled} labeled); site B {ext.root} "
        f"({sum(1 for c in ext.cases if c.label)} labeled studies, never seen in pretraining or "
        f"training). Pretraining ({', '.join(methods)}) on every site-A study, labels ignored, "
        f"settings {_settings_text(settings)}. Fine-tuning: {MODEL}, a {folds}-fold "
        f"patient-level cross-validation of site A's labeled studies (seed {seed}, the same folds "
        "in every row), training on the stated share of each class's training patients per fold "
        "(test folds whole)"
        + (f", the encoder frozen for the first {freeze} epochs" if freeze else "")
        + ". Site A AUC: out-of-fold; site B AUC: the mean of the fold bundles' probabilities. "
        "95% CIs by bootstrap over patients; p: DeLong's test against no pretraining at the same "
        "label share on the same studies (clustered by patient when a patient has several "
        "studies; named under the table).\n"
    )
    seconds = round(time.perf_counter() - start, 1)
    return write_ssl_report(out, rows, pretraining, header, seconds)
