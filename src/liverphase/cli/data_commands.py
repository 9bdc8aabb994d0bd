"""Commands that make, read and prepare data: synth, inspect, import, preprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from liverphase.cli.common import (
    _CONFIG,
    _IN_CHANNELS,
    _MODEL,
    _NO_REGISTER,
    _OPTION,
    _PHASES,
    _PROFILE,
    _RECIPE,
    _WORKERS,
    _echo_json,
    app,
    user_errors,
)


@app.command()
@user_errors
def synth(
    out: Path = typer.Argument(..., help="Output folder (an nnU-Net raw dataset + cases.csv)."),
    kind: str = typer.Option(
        "ct",
        help="ct (multi-phase CT lesions), mri-cirrhosis (T1W/T2W cirrhosis stages) or mri-dce "
        "(five-phase DCE-MRI of HCC, proliferative or not).",
    ),
    cases: int = typer.Option(40, min=0, help="Number of (labeled) cases."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same cohort."),
    classes: int = typer.Option(2, help="ct: 2 (HCC, ICC) or 5 (+ hemangioma, cyst, metastasis)."),
    dicom: int = typer.Option(
        0,
        min=0,
        help="ct and mri-dce: also write the first K cases as DICOM studies in OUT/dicom/.",
    ),
    difficulty: str = typer.Option("realistic", help="ct: easy (textbook kinetics) or realistic."),
    healthy: int = typer.Option(
        0, help="mri-cirrhosis: add N healthy controls (stage 0) to the staged cases."
    ),
    unlabeled: int = typer.Option(
        0, min=0, help="mri-dce: also write N studies with an empty label (for pretraining)."
    ),
    site: str = typer.Option(
        "A",
        help="mri-dce: scanner site A (1.5 T) or B (3 T: other contrast, bias, noise, timing, "
        "resolution; an external test set).",
    ),
    preset: str = typer.Option(
        "default", help="Grid preset: default, or tiny (small grids, for tests)."
    ),
    center_frac: str | None = typer.Option(
        None,
        "--center-frac",
        help="ct: 'LOW HIGH', the range each lesion's central region (normalised depth) is drawn "
        "from; default: each class's own (0.45 for HCC and ICC).",
    ),
) -> None:
    """Make a synthetic cohort: multi-phase CT lesions, T1W/T2W MRI of cirrhosis stages, or DCE-MRI."""
    from liverphase.errors import ConfigError

    if center_frac is not None and kind != "ct":
        raise ConfigError("--center-frac is available for --kind ct only", "center_frac")
    if kind != "mri-dce" and (unlabeled or site.upper() != "A"):
        raise ConfigError("--unlabeled and --site are available for --kind mri-dce only", "kind")
    if kind == "mri-dce":
        from liverphase.synth.mri_dce import synth_dce_cohort

        if healthy:
            raise ConfigError("--healthy is available for --kind mri-cirrhosis only", "healthy")
        root = synth_dce_cohort(
            out,
            cases=cases,
            seed=seed,
            unlabeled=unlabeled,
            site=site.upper(),
            dicom=dicom,
            preset=preset,
        )
        typer.echo(
            f"wrote {cases} labeled and {unlabeled} unlabeled site-{site.upper()} studies to {root}"
        )
        return
    if kind == "mri-cirrhosis":
        from liverphase.synth.cirrhosis import synth_cirrhosis_cohort

        if dicom:
            raise ConfigError("--dicom is available for --kind ct only", "dicom")
        root = synth_cirrhosis_cohort(out, cases=cases, seed=seed, healthy=healthy, preset=preset)
        extra = f" and {healthy} healthy controls" if healthy else ""
        typer.echo(f"wrote {cases} staged cases{extra} to {root}")
        return
    if kind != "ct":
        raise ConfigError(f"unknown --kind {kind!r}; use ct, mri-cirrhosis or mri-dce", "kind")
    if cases < 1:
        raise ConfigError("--cases must be at least 1", "cases")
    if healthy:
        raise ConfigError("--healthy is available for --kind mri-cirrhosis only", "healthy")
    from liverphase.synth.ct import synth_ct_cohort

    structure = {}
    if center_frac is not None:
        try:
            low, high = (float(v) for v in center_frac.replace(",", " ").split())
        except ValueError:
            raise ConfigError(
                f"--center-frac takes two numbers 'LOW HIGH', got {center_frac!r}", "center_frac"
            ) from None
        structure["center_frac"] = (low, high)
    root = synth_ct_cohort(
        out,
        cases=cases,
        seed=seed,
        classes=classes,
        dicom=dicom,
        difficulty=difficulty,
        preset=preset,
        **structure,
    )
    typer.echo(f"wrote {cases} cases to {root}")


@app.command()
@user_errors
def inspect(
    path: Path = typer.Argument(..., help="An nnU-Net dataset folder, or a DICOM study folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Describe a dataset or study (phases, grids, labels) and list every problem found; exit 2 on problems."""
    from liverphase.io.inspect import inspect_path

    summary, problems = inspect_path(path)
    if as_json:
        _echo_json({**summary, "problems": [str(p) for p in problems]})
    else:
        for line in summary.get("lines", []):
            typer.echo(line)
        for p in problems:
            typer.echo(f"problem: {p}")
        typer.echo(f"{len(problems)} problem(s) found")
    if problems:
        raise typer.Exit(2)


@app.command()
@user_errors
def preprocess(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="Cache folder (give it to train/cv as --cache)."),
    model: str = _MODEL,
    profile: str | None = _PROFILE,
    recipe: str | None = _RECIPE,
    config: Path | None = _CONFIG,
    phases: str | None = _PHASES,
    in_channels: int = _IN_CHANNELS,
    option: list[str] = _OPTION,
    workers: int = _WORKERS,
    no_register: bool = _NO_REGISTER,
) -> None:
    """Build the cache entries `train`/`cv` with the same options will read (a rerun does nothing)."""
    from liverphase.evaluate.cv import preprocess_experiment
    from liverphase.train.options import experiment_kwargs

    kwargs = experiment_kwargs(
        model,
        profile,
        config,
        phases=phases,
        in_channels=in_channels,
        option=option,
        no_register=no_register,
        recipe=recipe,
        dataset=dataset,
    )
    stats = preprocess_experiment(dataset, out, kwargs, workers=workers)
    typer.echo(
        f"built {stats['built']}, reused {stats['reused']}, {stats['seconds']:.1f} s; cache {out}"
    )
    for cid, warns in stats.get("warnings", {}).items():
        for w in warns:
            typer.echo(f"warning: {cid}: {w}")


@app.command("import")
@user_errors
def import_dataset(
    name: str = typer.Argument(None, help="Dataset: cirrmri600, plc-cect or mct-ltdiag."),
    src: Path = typer.Argument(None, help="The dataset as published (never modified)."),
    out: Path = typer.Argument(None, help="New folder for the liverphase dataset."),
    list_: bool = typer.Option(False, "--list", help="List the importers and exit."),
    merge_metastases: bool = typer.Option(
        False, "--merge-metastases", help="mct-ltdiag: BCLM + CRLM as one class (the benchmark's)."
    ),
    roi: str = typer.Option(
        None, help="plc-cect: lesion (PV lesion mask; controls left out) or organ (liver mask)."
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Import a public dataset as published into a liverphase dataset, with a summary of its faults."""
    from liverphase.errors import ConfigError
    from liverphase.io.importers import get_importer, list_importers

    if list_:
        for key, text in list_importers().items():
            typer.echo(f"{key:12s} {text}")
        return
    if name is None or src is None or out is None:
        raise ConfigError("give NAME SRC OUT (or --list)", "import")
    options: dict[str, Any] = {}
    if merge_metastases:
        options["merge_metastases"] = True
    if roi is not None:
        options["roi"] = roi
    summary = get_importer(name)(src, out, progress=progress, **options)
    for line in summary.lines():
        typer.echo(line)
