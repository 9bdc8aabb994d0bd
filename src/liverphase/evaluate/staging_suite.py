"""`liverphase ablate --suite cirrhosis`: cirrhosis staging per sequence, networks against radiomics.

One table per sequence setting the dataset has: T1W alone, T2W alone (each on the studies that
have that sequence), and T1W+T2W (every study, a missing sequence masked). Rows: `cirrhosis_msa`
(2D encoder over slices, the seed study's pseudo-3D design), its 3D variant (`dims=3`, the seed's
named next step) and the radiomics baseline (shape, first-order and GLCM features of the liver
into a logistic regression tuned inside each training fold), all on the same patient-level folds
of a setting. Every figure is per scan with a 95% patient-bootstrap CI; the slice-wise network also
gets its per-slice accuracy (every organ slice scored with its study's stage, as the seed study's
code scores); p is a paired bootstrap over patients against the radiomics baseline (no DeLong:
these are ordered multi-class predictions, not one ROC).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.errors import ConfigError, DatasetError
from liverphase.evaluate.ablate_runs import variant_key
from liverphase.evaluate.compare import aligned_predictions, log_seconds, oof_probs
from liverphase.evaluate.ordinal import paired_ordinal_p
from liverphase.evaluate.radiomics import radiomics_cv
from liverphase.evaluate.report import markdown_table
from liverphase.io.nifti import NnUNetDataset, open_dataset

RADIOMICS = "radiomics (shape + first-order + GLCM, logistic regression)"
ROWS: dict[str, dict[str, Any]] = {
    "cirrhosis_msa (2D slices)": {"model": "cirrhosis_msa", "model_options": {}},
    "cirrhosis_msa (3D)": {"model": "cirrhosis_msa", "model_options": {"dims": 3}},
    RADIOMICS: {"model": "radiomics"},
}
SETTINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("T1W", ("T1W",)),
    ("T2W", ("T2W",)),
    ("T1W+T2W", ("T1W", "T2W")),
)
PAIRED = ("acc", "qwk")
COLUMNS = [
    ("row", "Model", ""),
    ("n", "Scans", "d"),
    ("acc", "Accuracy (95% CI)", "ci"),
    ("qwk", "QWK (95% CI)", "ci"),
    ("kappa", "κ (95% CI)", "ci"),
    ("mae_stage", "MAE stages (95% CI)", "ci"),
    ("slice_acc", "Per-slice accuracy (95% CI)", "ci"),
    ("acc_p", "p acc vs radiomics", "p"),
    ("qwk_p", "p QWK vs radiomics", "p"),
    ("train_s", "Train s", ".0f"),
]


def staging_tables(phases: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Table title → row label → variant, for the sequence settings the dataset's phases allow."""
    tables = {}
    for i, (name, seqs) in enumerate(
        [(n, s) for n, s in SETTINGS if all(p in phases for p in s)], start=1
    ):
        tables[f"{i}. {name}"] = {
            row: {**variant, "phases": list(seqs)} for row, variant in ROWS.items()
        }
    if not tables:
        raise ConfigError(
            f"the cirrhosis suite needs T1W and/or T2W sequences; the dataset has {list(phases)}",
            "--suite",
        )
    return tables


def check_staging_dataset(ds: NnUNetDataset) -> None:
    """A ConfigError unless the dataset holds ordered stages of a whole organ."""
    if not ds.ordinal or ds.roi != "organ":
        raise ConfigError(
            "the cirrhosis suite needs a whole-organ staging dataset (dataset.json 'roi': "
            "'organ' and 'ordinal': true, as `synth --kind mri-cirrhosis` writes)",
            ds.root / "dataset.json",
        )


def run_staging_suite(
    dataset: str | Path,
    out: Path,
    chosen: dict[str, dict[str, dict[str, Any]]],
    train: Callable[[list[dict[str, Any]]], dict[str, Path]],
    n_boot: int,
    seed: int,
    folds: int,
    profile: str,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the chosen tables' networks (`train`: variants → run folders), fit the radiomics
    baseline on each setting's folds, and write RUN/report.md and RUN/staging.json."""
    start = time.perf_counter()
    ds = open_dataset(dataset)
    check_staging_dataset(ds)
    networks = [v for rows in chosen.values() for v in rows.values() if v["model"] != "radiomics"]
    runs = train(networks)
    sections, results = [], {}
    for title, variants in chosen.items():
        seqs = next(iter(variants.values()))["phases"]
        nets = {r: runs[variant_key(v)] for r, v in variants.items() if v["model"] != "radiomics"}
        table_runs = dict(nets)
        if RADIOMICS in variants:
            folder = out / "runs" / f"radiomics_{'+'.join(seqs)}"
            log(f"radiomics {folder.name}: on the folds of {next(iter(nets.values())).name}")
            radiomics_cv(dataset, next(iter(nets.values())), folder, sequences=seqs, n_boot=n_boot)
            table_runs[RADIOMICS] = folder
        rows = staging_rows(table_runs, RADIOMICS if RADIOMICS in variants else None, n_boot, seed)
        results[title] = rows
        sections.append(_section(title, seqs, rows))
    n_cases, n_patients = len(ds.cases), len({c.patient_id for c in ds.cases})
    header = (
        f"# Cirrhosis staging: sequences, networks and radiomics\n\nDataset {ds.root} ({n_cases} "
        f"studies, {n_patients} patients; classes {', '.join(ds.class_names)}). Each table is one "
        f"sequence setting: every row a {folds}-fold patient-level cross-validation on the same "
        f"folds (seed {seed}, profile `{profile}`), single-sequence settings on the studies that "
        "have that sequence. Per-scan accuracy, quadratic-weighted κ (QWK), unweighted κ and the "
        "mean absolute stage error with 95% CIs by bootstrap over patients; per-stage accuracy "
        "(the share of each stage's scans staged correctly) in the second table of each setting. "
        "p: paired bootstrap over patients (both models on each resample) of the difference "
        "against the radiomics baseline. Per-slice accuracy: every slice holding the liver scored "
        "against its study's stage, the seed study's way; the per-scan columns are what a study "
        "gets.\n"
    )
    seconds = round(time.perf_counter() - start, 1)
    footer = f"\nWall time of this sitting: {seconds} s.\n"
    atomic_write_text(out / "report.md", header + "\n" + "\n\n".join(sections) + footer)
    atomic_write_json(out / "staging.json", {"tables": results, "seconds": seconds})
    return {"tables": results, "seconds": seconds, "report": str(out / "report.md")}


def staging_rows(
    runs: dict[str, Path], reference: str | None, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """One row per run: its ordinal metrics, per-stage rates, per-slice accuracy, training
    seconds and paired p against `reference` (runs must share folds and cases)."""
    ref = runs.get(reference) if reference else None
    ref_splits = _splits(ref) if ref else None
    ref_ids, ref_probs = oof_probs(ref) if ref else ([], None)
    rows = []
    for label, run in runs.items():
        metrics = json.loads((run / "metrics.json").read_text())["pooled"]
        ordinal = metrics.get("ordinal")
        if ordinal is None:
            raise DatasetError("metrics.json has no ordinal block: not a staging run", run)
        row: dict[str, Any] = {"row": label, "run": run.name, "n": ordinal["n"]}
        for key in ("acc", "qwk", "kappa", "mae_stage", "macro_f1"):
            row[key], row[f"{key}_ci"] = ordinal.get(key), ordinal.get(f"{key}_ci")
        row["per_stage"] = ordinal["per_stage"]
        slices = metrics.get("slices") or {}
        row["slice_acc"], row["slice_acc_ci"] = slices.get("slice_acc"), slices.get("slice_acc_ci")
        row["train_s"] = log_seconds(run)[1]
        if ref is not None and label != reference:
            if _splits(run) != ref_splits:
                raise DatasetError(f"run {label!r} used other folds than {reference!r}", run)
            labels, patients, probs = aligned_predictions(run, ref_ids)
            for metric in PAIRED:
                row[f"{metric}_p"] = paired_ordinal_p(
                    labels, probs, ref_probs, patients, metric, n_boot, seed
                )
        rows.append(row)
    return rows


def _splits(run: Path) -> Any:
    return json.loads((run / "splits.json").read_text())


def _section(title: str, seqs: Sequence[str], rows: list[dict[str, Any]]) -> str:
    """A setting's two tables: the per-scan metrics, then per-stage accuracy."""
    stages = list(rows[0]["per_stage"])
    stage_rows = [
        {
            "row": r["row"],
            **{s: r["per_stage"][s].get("sensitivity") for s in stages},
            **{f"{s}_ci": r["per_stage"][s].get("sensitivity_ci") for s in stages},
        }
        for r in rows
    ]
    stage_cols = [("row", "Model", "")] + [(s, f"{s} (95% CI)", "ci") for s in stages]
    return (
        f"## {title}\n\nInput: {' + '.join(seqs)}.\n\n"
        + markdown_table(rows, COLUMNS)
        + "\nPer-stage accuracy (share of the stage's scans staged correctly):\n\n"
        + markdown_table(stage_rows, stage_cols)
    )
