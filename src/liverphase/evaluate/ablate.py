"""`liverphase ablate`: a paper's experiments as tables, all on the same patient-level folds.

Suite `paper` (the four-phase CT paper, MIFF+SPM; each row a full cross-validation, identical
variants trained once and reused):
1. miff_spm against itself reading the lesion through its mask (`region_kinetics`, not the
   paper's), resnet3d18, densenet3d121, stic, early_fusion and the kinetics baseline;
2. Backbone, +SPM, +MIFF, +SPM+MIFF, +MTL (miff_spm's switches);
3. λ ∈ {0, 0.25, 0.5, 0.75};
4. 1 raw channel vs 3 CT windows;
5. four phases vs NC+ART+PV vs NC+ART+DL.
Suite `std_net` (STD-Net, joint segmentation and characterisation):
1. temporal module: transformer (the full model) vs gru, mean, concat, and MONAI's UNet taking the
   phases as input channels (`unet_channels`, no decoupling at all);
2. phases: four vs three (ART+PV+DL, the published model's) vs two (ART+PV);
3. a phase missing at inference: the full model's own folds re-predicted with each phase withheld
   through its phase mask (`evaluate.missing_phase`; nothing is trained for this table).
Runs live in RUN/runs: a finished run whose run.json holds a variant's settings is reused, and a run
killed midway (its folder keeps variant.json and the folds' checkpoints) is continued by the next call.
Every row has AUC, accuracy and F1 with patient-bootstrap CIs and DeLong's p against the suite's full
model (Obuchowski's clustered test when a patient has several studies, named under each table); the
kinetics baseline's row is `KINETICS` (it reads the true lesion mask); models that segment add Dice, HD95 and surface Dice with CIs and a paired p on Dice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.errors import ConfigError
from liverphase.evaluate.ablate_runs import BASELINES, train_variants, variant_key
from liverphase.evaluate.compare import (
    KINETICS,
    compare_runs,
    oof_probs,
    step_note,
    table_columns,
)
from liverphase.evaluate.missing_phase import missing_phase_run
from liverphase.evaluate.report import comparison_note, markdown_table
from liverphase.evaluate.ssl_suite import run_ssl_ablation
from liverphase.evaluate.staging_suite import run_staging_suite, staging_tables
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import model_defaults


def _variant(model: str, **options: Any) -> dict[str, Any]:
    extra = {k: options.pop(k) for k in ("phases", "in_channels") if k in options}
    return {"model": model, "model_options": options, **extra}


SUITES = {
    "paper": "the four-phase CT paper's experiments (MIFF+SPM)",
    "std_net": "STD-Net's experiments (temporal module, phases, a missing phase)",
    "cirrhosis": "cirrhosis staging per sequence (cirrhosis_msa 2D and 3D vs radiomics)",
    "ssl": "self-supervised pretraining's label efficiency on two sites (std_net)",
}


def check_suite(suite: str) -> None:
    """A ConfigError naming the suites unless `suite` is one of them."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}", "--suite")


def full_model(suite: str = "paper") -> dict[str, Any]:
    """The reference of every table of a suite: miff_spm with MIFF, SPM and the multi-task loss
    (λ = 0.5) for `paper`; std_net with the temporal transformer for `std_net`."""
    check_suite(suite)
    if suite == "std_net":
        return _variant("std_net", temporal="transformer")
    if suite == "cirrhosis":
        return _variant("cirrhosis_msa")
    if suite == "ssl":
        return _variant("std_net")
    return _variant("miff_spm", miff=True, spm=True, mtl_lambda=0.5)


def _named_subsets(
    phases: list[str], wanted: tuple[tuple[str, list[str]], ...]
) -> dict[str, list[str]]:
    return {name: sub for name, sub in wanted if all(p in phases for p in sub) and sub != phases}


def std_net_tables(phases: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """The std_net suite: temporal-module, 2/3/4-phase and missing-phase tables."""
    full = full_model("std_net")
    temporal = {"transformer (full)": full}
    temporal.update(
        {mode: _variant("std_net", temporal=mode) for mode in ("gru", "mean", "concat")}
    )
    temporal["unet_channels (phases as channels)"] = _variant("unet_channels")
    subsets = _named_subsets(
        phases, (("ART+PV+DL", ["ART", "PV", "DL"]), ("ART+PV", ["ART", "PV"]))
    )
    phase_rows = {f"{len(phases)} phases": full}
    phase_rows.update({name: {**full, "phases": sub} for name, sub in subsets.items()})
    missing = {"all phases (full)": full}
    missing.update({f"without {p}": {**full, "missing_phase": p} for p in phases})
    return {
        "1. Temporal module": temporal,
        "2. Phases": phase_rows,
        "3. A phase missing at inference": missing,
    }


def experiment_tables(
    phases: list[str], suite: str = "paper"
) -> dict[str, dict[str, dict[str, Any]]]:
    """Table title → row label → variant (model, model_options, phases, in_channels)."""
    check_suite(suite)
    if suite == "std_net":
        return std_net_tables(phases)
    if suite == "cirrhosis":
        return staging_tables(phases)
    if suite == "ssl":
        return {"1. Label efficiency": {"none": full_model(suite)}}
    full = full_model()
    tables: dict[str, dict[str, dict[str, Any]]] = {
        "1. MIFF+SPM vs other networks and the kinetics baseline": {
            "miff_spm": full,
            "miff_spm + region reading": {
                **full,
                "model_options": {**full["model_options"], "region_kinetics": True},
            },
            "resnet3d18": _variant("resnet3d18"),
            "densenet3d121": _variant("densenet3d121"),
            "stic": _variant("stic"),
            "early_fusion": _variant("early_fusion"),
            KINETICS: {"model": "kinetics"},
        },
        "2. Components": {
            "Backbone": _variant("miff_spm", miff=False, spm=False, mtl_lambda=1.0),
            "+SPM": _variant("miff_spm", miff=False, spm=True, mtl_lambda=0.0),
            "+MIFF": _variant("miff_spm", miff=True, spm=False, mtl_lambda=1.0),
            "+SPM+MIFF": _variant("miff_spm", miff=True, spm=True, mtl_lambda=0.0),
            "+SPM+MIFF+MTL (full)": full,
        },
        "3. Multi-task weight λ": {
            f"λ = {lam}": _variant("miff_spm", miff=True, spm=True, mtl_lambda=lam)
            for lam in (0.0, 0.25, 0.5, 0.75)
        },
        "4. Input channels": {
            "1 raw channel": _variant(
                "miff_spm", miff=True, spm=True, mtl_lambda=0.5, in_channels=1
            ),
            "3 CT windows": full,
        },
    }
    subsets = _named_subsets(
        phases, (("NC+ART+PV", ["NC", "ART", "PV"]), ("NC+ART+DL", ["NC", "ART", "DL"]))
    )
    tables["5. Phases"] = {"four phases": full}
    tables["5. Phases"].update({name: {**full, "phases": sub} for name, sub in subsets.items()})
    return tables


def with_shared_options(variant: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """A row with those of the command's shared model options its model takes; the row's own
    options win, since they are what its table varies."""
    if variant["model"] in BASELINES or not options:
        return variant
    takes = model_defaults(variant["model"])
    shared = {k: v for k, v in options.items() if k in takes}
    return {**variant, "model_options": {**shared, **variant.get("model_options", {})}}


def check_shared_options(options: dict[str, Any], models: set[str]) -> None:
    """A ConfigError for a shared model option none of the chosen rows' models takes (a typo, or
    an option of another suite's model)."""
    taken = set().union(*(model_defaults(m) for m in models))
    unused = sorted(set(options) - taken)
    if unused:
        raise ConfigError(
            f"model option(s) {unused} are taken by none of the models of the chosen tables "
            f"({', '.join(sorted(models))})",
            "--option",
        )


def parse_tables(spec: str | None, dataset: str | Path, suite: str) -> list[int] | None:
    """`--tables 1,3` into table numbers of the suite (None: all); a ConfigError if out of range."""
    check_suite(suite)
    if not spec:
        return None
    n_tables = len(experiment_tables(open_dataset(dataset).phases, suite))
    try:
        chosen = [int(t) for t in spec.split(",")]
    except ValueError:
        raise ConfigError(f"expected numbers 1-{n_tables}, got {spec!r}", "--tables") from None
    if any(t not in range(1, n_tables + 1) for t in chosen):
        raise ConfigError(f"suite {suite!r} has tables 1-{n_tables}, got {spec!r}", "--tables")
    return chosen


def _shared_text(shared: dict[str, Any], options: dict[str, Any]) -> str:
    parts = [f"model options {options} (rows whose model takes them)"] if options else []
    parts += [f"{k} {v}" for k, v in shared.items() if v not in ({}, None)]
    return "; ".join(parts)


def _missing_phase_run(full: Path, dataset: str | Path, phase: str, out: Path, n_boot: int) -> Path:
    """The full model's run re-predicted without `phase`, in RUN/missing/<phase> (redone each time:
    it only predicts)."""
    return missing_phase_run(full, dataset, phase, out / "missing" / phase, out / "cache", n_boot)


def run_ablate(
    dataset: str | Path,
    out: str | Path,
    folds: int = 5,
    profile: str = "cpu",
    seed: int = 0,
    epochs: int | None = None,
    tables: list[int] | None = None,
    workers: int = 1,
    n_boot: int = 1000,
    log: Callable[[str], None] = print,
    suite: str = "paper",
    time_steps: bool = True,
    shared: dict[str, Any] | None = None,
    external: str | Path | None = None,
    pretrain: dict[str, Any] | None = None,
    plan_only: bool = False,
) -> dict[str, Any]:
    """Run every variant of the chosen tables once (same folds, same seed) and write RUN/report.md.
    `plan_only`: raise RowsPlanned with the rows still to train instead (`ablate_plan`).

    `shared` (`config_overrides` of --config and -o) goes to every row: training and preprocessing
    settings as they are, each model option to the rows whose model takes it. The ssl suite also
    needs `external` (site B) and takes `pretrain` (pretraining settings, `ssl_suite`)."""
    start = time.perf_counter()
    out = Path(out)
    ds = open_dataset(dataset)
    shared = dict(shared or {})
    if suite == "ssl" and plan_only:  # its rows start from pretrainings this call would train
        raise ConfigError("--plan covers the paper, std_net and cirrhosis suites", "--plan")
    if suite == "ssl":
        return run_ssl_ablation(
            ds,
            out,
            shared,
            external,
            pretrain or {},
            folds,
            profile,
            seed,
            epochs,
            workers,
            n_boot,
            log,
        )
    options = shared.pop("model_options", None) or {}
    all_tables = experiment_tables(ds.phases, suite)
    chosen = {
        t: {row: with_shared_options(v, options) for row, v in rows.items()}
        for i, (t, rows) in enumerate(all_tables.items(), start=1)
        if tables is None or i in tables
    }
    full = with_shared_options(full_model(suite), options)
    models = {v["model"] for rows in chosen.values() for v in rows.values()} - set(BASELINES)
    check_shared_options(options, models | {full["model"]})

    def train(variants: list[dict[str, Any]]) -> dict[str, Path]:
        return train_variants(
            ds,
            dataset,
            out,
            variants,
            folds,
            profile,
            seed,
            epochs,
            shared,
            workers,
            n_boot,
            log,
            plan_only,
        )

    if suite == "cirrhosis":
        return run_staging_suite(dataset, out, chosen, train, n_boot, seed, folds, profile, log)
    full_key = variant_key(full)
    runs = train([full] + [v for t in chosen.values() for v in t.values()])
    sections, results = [], {}
    timings: dict[str, float] = {}  # each network timed once, however many tables hold it
    n_cases = len(oof_probs(runs[full_key])[0])
    for title, variants in chosen.items():
        reference = next(k for k, v in variants.items() if variant_key(v) == full_key)
        table_runs = {
            k: _missing_phase_run(runs[full_key], dataset, v["missing_phase"], out, n_boot)
            if "missing_phase" in v
            else runs[variant_key(v)]
            for k, v in variants.items()
            if v["model"] != "kinetics"
        }
        rows = compare_runs(
            table_runs,
            dataset,
            reference,
            kinetics=KINETICS in variants,
            cache_root=out / "cache",
            n_boot=n_boot,
            seed=seed,
            time_steps=time_steps,
            timings=timings,
        )
        sections.append(
            f"## {title}\n\nReference for DeLong: {reference}.\n\n"
            + markdown_table(rows, table_columns(rows))
            + f"\n{comparison_note(rows)}"
        )
        results[title] = rows
    shared_text = _shared_text(shared, options)
    header = (
        f"# Ablation: {SUITES[suite]}\n\nDataset {ds.root} ({n_cases} cases, "
        f"{len({c.patient_id for c in ds.cases})} patients). Every row is a {folds}-fold patient-level cross-validation on the same "
        f"folds (seed {seed}), profile `{profile}`"
        + (f", {epochs} epochs" if epochs else "")
        + ". "
        "AUC/accuracy/F1 with 95% CIs by bootstrap over patients; DeLong p against the full model "
        "(clustered by patient when a patient has several studies; the test is named under each "
        "table)"
        + (
            "; Dice, HD95 and surface Dice (2 mm) per case with patient-bootstrap CIs, Dice p a "
            "paired patient bootstrap of the per-case Dice difference against the full model; "
            "the rows of table 3 are the full model's own fold bundles re-predicting their test "
            "cases with one phase withheld (nothing trained)"
            if suite == "std_net"
            else ""
        )
        + ". "
        + (f"Settings shared by every row: {shared_text}. " if shared_text else "")
        + step_note([r for rows in results.values() for r in rows])
        + "\n"
    )
    seconds = round(time.perf_counter() - start, 1)
    # each trained network once, however many tables show it; every sitting that trained it
    spent = {r["run"]: r["train_s"] for t in results.values() for r in t if r.get("train_s")}
    train_s = round(sum(spent.values()), 1)
    footer = (
        f"Wall time of this sitting: {seconds} s. Training passes of the {len(spent)} runs "
        f"behind these tables, over every sitting: {train_s:.0f} s (Train s column).\n"
    )
    atomic_write_text(out / "report.md", header + "\n" + "\n\n".join(sections) + "\n\n" + footer)
    atomic_write_json(
        out / "ablation.json", {"tables": results, "seconds": seconds, "train_seconds": train_s}
    )
    return {"tables": results, "seconds": seconds, "report": str(out / "report.md")}
