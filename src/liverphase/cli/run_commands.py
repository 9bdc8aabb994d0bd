"""Commands that use trained models and measure: models, predict, export, demo, bench."""

from __future__ import annotations

from pathlib import Path

import typer

from liverphase.cli.common import (
    _auc_text,
    app,
    user_errors,
)
from liverphase.inference.demo_settings import DEMO_CASES, DEMO_EPOCHS, DEMO_MODEL, DEMO_SEED


@app.command()
@user_errors
def models(
    measure: bool = typer.Option(
        False, "--measure", help="Profile: GFLOPs, forward and step time, peak memory (minutes)."
    ),
    show_options: bool = typer.Option(False, "--options", help="Also list each model's options."),
    quick: bool = typer.Option(
        False, help="Tiny input (seconds, for a smoke check) instead of the paper and CPU grids."
    ),
    names: str | None = typer.Option(None, help="Comma-separated subset of models."),
    memory_options: bool = typer.Option(
        False, help="Also profile the memory-saving options (checkpointing, slice chunks)."
    ),
    repeats: int = typer.Option(3, min=1),
    out: Path | None = typer.Option(
        None, help="Also save the rows as JSON and the table as markdown here."
    ),
    live: bool = typer.Option(
        False,
        "--live",
        help="Build the list from the registry (imports torch) instead of the file.",
    ),
) -> None:
    """Registered models and what each takes; --measure profiles them (time, memory, batch 2)."""
    if not measure:
        # the shipped static catalogue: no torch import, so the list comes at once
        from liverphase.catalogue import format_catalogue, format_options, static_catalogue

        if live:
            from liverphase.bench.models import chosen_models
            from liverphase.train.catalogue import model_catalogue

            rows = model_catalogue(chosen_models(names))
        else:
            rows = static_catalogue(names)
        typer.echo(format_catalogue(rows))
        for line in format_options(rows) if show_options else []:
            typer.echo(line)
        return
    from liverphase.atomic import atomic_write_json, atomic_write_text
    from liverphase.bench.models import models_report

    lines, rows, table = models_report(names, quick, memory_options, repeats)
    for line in [*lines, table]:
        typer.echo(line)
    if out is not None:
        atomic_write_json(out / "models.json", rows)
        atomic_write_text(out / "models.md", table + "\n")


@app.command()
@user_errors
def predict(
    study: Path = typer.Argument(
        ..., help="A DICOM folder, an nnU-Net case file, or a dataset (with --case, or all cases)."
    ),
    bundle: Path = typer.Option(
        ..., "--bundle", help="A bundle folder (RUN/bundle or RUN/fold_k/bundle)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    case: str | None = typer.Option(None, help="One case of a dataset."),
    mask: Path | None = typer.Option(None, help="Lesion mask on the reference phase's grid."),
    bbox: str | None = typer.Option(
        None,
        help="Lesion box 'z0 y0 x0 z1 y1 x1' (voxels) or 'x0 y0 z0 x1 y1 z1' (mm); 3 numbers: a point.",
    ),
    bbox_units: str = typer.Option("mm", help="mm or voxel."),
    keep_phi: bool = typer.Option(False, help="Keep patient identifiers in every output."),
    anonymize: bool = typer.Option(False, help="DICOM SEG under the Basic Profile, new UIDs."),
) -> None:
    """Characterise, segment and explain the lesion of a study; writes prediction.json, CAMs and report.html."""
    from liverphase.inference.run import parse_bbox, run_predict

    box = parse_bbox(bbox, bbox_units)
    phi = {"keep_phi": keep_phi, "anonymize": anonymize}  # identifiers policy: io/phi.py
    result = run_predict(
        bundle, study, out, case=case, mask=mask, bbox=box, bbox_units=bbox_units, **phi
    )
    if "summary" in result:
        # dataset mode: "cases" is the number of cases, "failed" the list of failed case ids
        typer.echo(
            f"{result['cases']} case(s), {len(result['failed'])} failed; summary: {result['summary']}"
        )
    else:
        probs = ", ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
        typer.echo(f"{result['case_id']}: {result['label']} ({probs})")
        typer.echo(f"report: {Path(out) / 'report.html'}")


@app.command()
@user_errors
def export(
    bundle: Path = typer.Option(..., "--bundle", help="A bundle folder."),
    onnx: Path = typer.Option(..., "--onnx", help="Output .onnx file."),
) -> None:
    """Export a bundle's model to ONNX, checked against PyTorch with onnxruntime."""
    from liverphase.inference.export import export_onnx

    info = export_onnx(bundle, onnx)
    typer.echo(
        f"wrote {onnx} (max abs diff vs PyTorch {info['max_abs_diff']:.2e}, dynamic batch {info['dynamic_batch']})"
    )


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("demo_run"), "--out", help="Output folder."),
    cases: int = typer.Option(DEMO_CASES, min=12),
    epochs: int = typer.Option(DEMO_EPOCHS, min=1),
    model: str = typer.Option(DEMO_MODEL),
    seed: int = typer.Option(
        DEMO_SEED, help="The cohort's seed (the settings were chosen on another)."
    ),
) -> None:
    """The embedded default: synthetic cohort → patient-level CV next to the kinetics baseline →
    predict a held-out study → report."""
    from liverphase.inference.demo import run_demo

    s = run_demo(out, cases=cases, epochs=epochs, model=model, seed=seed, log=typer.echo)
    verdict = "meets" if s["learns"] else "MISSES"
    typer.echo(
        f"cross-validated {s['model']}: {_auc_text(s)} ({verdict} the demo's floor: AUC ≥ "
        f"{s['auc_floor']:.2f}, CI above {s['ci_lower_floor']:.2f}); kinetics baseline on the same folds (true mask): "
        f"{_auc_text({'auc': s['baseline_auc'], 'auc_ci': s['baseline_auc_ci']})}"
    )
    probs = ", ".join(f"{k} {v:.3f}" for k, v in (s["probabilities"] or {}).items())
    typer.echo(
        f"held-out study {s['held_out_case']}: true {s['true_label']}, predicted "
        f"{s['held_out_label']} ({probs})"
    )
    typer.echo(f"timings (s): {s['timings']}")
    typer.echo(f"CV report: {s['report_md']}; study report: {s['report_html']}")


@app.command()
@user_errors
def bench(
    quick: bool = typer.Option(False, help="Tiny inputs; finishes in about a minute."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for bench.json and bench.md."),
    sections: str | None = typer.Option(
        None,
        help="Comma-separated sections to run (ceiling, models, pipeline, dataload, accuracy); "
        "the targets of the others are left out. Default: all.",
    ),
) -> None:
    """Speed, memory and accuracy side by side in one run: writes OUT/bench.json and OUT/bench.md."""
    from liverphase.bench.run import run_bench

    only = [s.strip() for s in sections.split(",") if s.strip()] if sections else None
    run_bench(out, quick=quick, log=typer.echo, only=only)
    typer.echo(f"wrote {out / 'bench.md'}")
