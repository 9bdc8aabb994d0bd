"""The `liverphase` command line: one thin function per command; user errors exit 2 with one line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from liverphase.errors import LiverphaseError, os_error_message

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deep learning on multi-phase liver imaging (multi-phase CT, DCE and multi-sequence MRI).",
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn LiverphaseError and filesystem OSErrors into one line on stderr and exit code 2;
    anything else is a bug (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LiverphaseError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            # a read-only or full disk, or a file where a folder should be: the user's to fix,
            # in every command alike
            message = os_error_message(exc)
            if message is None:
                raise
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _auc_text(metrics: dict[str, Any]) -> str:
    """'AUC 0.912 (95% CI 0.850-0.960)' from metrics with auc and auc_ci (nan where missing)."""
    nan = float("nan")
    auc = metrics.get("auc")
    lo, hi = metrics.get("auc_ci") or (nan, nan)
    return f"AUC {nan if auc is None else auc:.3f} (95% CI {lo:.3f}-{hi:.3f})"


def _staging_text(pooled: dict[str, Any]) -> str:
    """'accuracy 0.71 (0.64-0.78), QWK ..., MAE ...' of an ordinal metrics block (+ per slice)."""
    nan = float("nan")
    block = pooled["ordinal"]
    parts = []
    for key, name in (("acc", "accuracy"), ("qwk", "QWK"), ("mae_stage", "MAE (stages)")):
        lo, hi = (nan if v is None else v for v in block.get(f"{key}_ci") or (nan, nan))
        value = block.get(key)
        parts.append(f"{name} {nan if value is None else value:.3f} ({lo:.3f}-{hi:.3f})")
    slices = pooled.get("slices")
    if slices and slices.get("slice_acc") is not None:
        parts.append(f"per-slice accuracy {slices['slice_acc']:.3f}")
    return ", ".join(parts)


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
) -> None:
    """Make a synthetic cohort: multi-phase CT lesions, T1W/T2W MRI of cirrhosis stages, or DCE-MRI."""
    from liverphase.errors import ConfigError

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

    root = synth_ct_cohort(
        out,
        cases=cases,
        seed=seed,
        classes=classes,
        dicom=dicom,
        difficulty=difficulty,
        preset=preset,
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


_MODEL = typer.Option("miff_spm", "--model", help="A registered model (see `liverphase models`).")
_PROFILE = typer.Option(
    "cpu", help="paper (the paper's recipe, for GPUs) or cpu (reduced, for 2 CPU cores)."
)
_CONFIG = typer.Option(None, help="YAML with sections train, preprocess, model_options.")
_PHASES = typer.Option(None, help="Comma-separated subset of the dataset's phases, e.g. NC,ART,PV.")
_EPOCHS = typer.Option(None, help="Override the profile's epochs.")
_BATCH_SIZE = typer.Option(None, help="Override the profile's batch size.")
_LR = typer.Option(None, help="Override the profile's learning rate.")
_IN_CHANNELS = typer.Option(3, help="3 CT windows or 1 raw channel.")
_WORKERS = typer.Option(1, min=1, help="Preprocessing worker processes.")
_CACHE = typer.Option(None, help="Cache folder (default RUN/cache).")
_NO_REGISTER = typer.Option(False, "--no-register", help="Skip inter-phase registration.")
_TIME_STEPS = typer.Option(
    True, help="Time each run's network side by side for the 'Step s (timed)' column."
)
_LOSS = typer.Option(
    None, help="Class loss: ce (cross-entropy) or coral (ordinal, for ordered stages)."
)
_OPTION = typer.Option(
    [], "--option", "-o", help="Model option key=value (repeatable), e.g. miff=false."
)
_INIT = typer.Option(
    None, "--init", help="Start the model's encoder from a `pretrain` bundle (OUT/bundle)."
)
_FREEZE = typer.Option(
    None, "--freeze-epochs", min=0, help="With --init: keep the encoder frozen for K epochs."
)


def _init_kwargs(init: Path | None, freeze_epochs: int | None) -> dict[str, Any]:
    """--init / --freeze-epochs as training overrides (absent flags leave the config's values)."""
    out: dict[str, Any] = {}
    if init is not None:
        out["init"] = str(init.resolve())
    if freeze_epochs is not None:
        out["freeze_epochs"] = freeze_epochs
    return out


@app.command()
@user_errors
def preprocess(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="Cache folder (give it to train/cv as --cache)."),
    model: str = _MODEL,
    profile: str = _PROFILE,
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
    )
    stats = preprocess_experiment(dataset, out, kwargs, workers=workers)
    typer.echo(
        f"built {stats['built']}, reused {stats['reused']}, {stats['seconds']:.1f} s; cache {out}"
    )
    for cid, warns in stats.get("warnings", {}).items():
        for w in warns:
            typer.echo(f"warning: {cid}: {w}")


@app.command()
@user_errors
def train(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="RUN folder (RUN/bundle is written)."),
    model: str = _MODEL,
    profile: str = _PROFILE,
    epochs: int | None = _EPOCHS,
    batch_size: int | None = _BATCH_SIZE,
    lr: float | None = _LR,
    seed: int = typer.Option(0),
    config: Path | None = _CONFIG,
    phases: str | None = _PHASES,
    in_channels: int = _IN_CHANNELS,
    option: list[str] = _OPTION,
    workers: int = _WORKERS,
    cache: Path | None = _CACHE,
    resume: bool = typer.Option(False, help="Continue a killed run from its last checkpoint."),
    no_register: bool = _NO_REGISTER,
    loss: str | None = _LOSS,
    init: Path | None = _INIT,
    freeze_epochs: int | None = _FREEZE,
) -> None:
    """Train one model on a whole dataset (an inner validation split selects the epoch)."""
    from liverphase.evaluate.cv import run_train
    from liverphase.train.options import experiment_kwargs

    kwargs = experiment_kwargs(
        model,
        profile,
        config,
        epochs,
        batch_size,
        lr,
        phases,
        in_channels,
        option,
        no_register,
        loss,
    )
    kwargs.update(_init_kwargs(init, freeze_epochs))
    result = run_train(
        dataset, out, kwargs, seed=seed, cache_root=cache, workers=workers, resume=resume
    )
    typer.echo(f"bundle: {result['bundle']}")


@app.command()
@user_errors
def cv(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="RUN folder."),
    model: str = _MODEL,
    folds: int = typer.Option(5, min=2),
    profile: str = _PROFILE,
    epochs: int | None = _EPOCHS,
    batch_size: int | None = _BATCH_SIZE,
    lr: float | None = _LR,
    seed: int = typer.Option(0),
    config: Path | None = _CONFIG,
    phases: str | None = _PHASES,
    in_channels: int = _IN_CHANNELS,
    option: list[str] = _OPTION,
    workers: int = _WORKERS,
    cache: Path | None = _CACHE,
    resume: bool = typer.Option(False, help="Continue killed folds from their last checkpoint."),
    no_register: bool = _NO_REGISTER,
    loss: str | None = _LOSS,
    init: Path | None = _INIT,
    freeze_epochs: int | None = _FREEZE,
    label_fraction: float | None = typer.Option(
        None,
        help="Train on this share of each class's training patients (a label-efficiency curve; "
        "the test folds stay whole).",
    ),
    splits: str = typer.Option(
        "kfold",
        help="kfold (patient-level k-fold) or official (cases.csv's split column: train on train, "
        "select on val, score test once; --folds is then unused).",
    ),
) -> None:
    """k-fold patient-level cross-validation (or the published split): metrics with CIs, ROC,
    report and a bundle per fold."""
    from liverphase.errors import ConfigError
    from liverphase.evaluate.cv import run_cv
    from liverphase.train.options import experiment_kwargs

    kwargs = experiment_kwargs(
        model,
        profile,
        config,
        epochs,
        batch_size,
        lr,
        phases,
        in_channels,
        option,
        no_register,
        loss,
        label_fraction,
    )
    kwargs.update(_init_kwargs(init, freeze_epochs))
    if splits not in ("kfold", "official"):
        raise ConfigError(f"--splits must be kfold or official, got {splits!r}", "--splits")
    if splits == "official":
        from liverphase.evaluate.official import official_summary, run_official

        result = run_official(
            dataset, out, kwargs, seed=seed, cache_root=cache, workers=workers, resume=resume
        )
        for line in official_summary(result):
            typer.echo(line)
        typer.echo(f"report: {Path(out) / 'report.md'}")
        return
    result = run_cv(
        dataset,
        out,
        kwargs,
        folds=folds,
        seed=seed,
        cache_root=cache,
        workers=workers,
        resume=resume,
    )
    pooled = result["metrics"]["pooled"]
    if "ordinal" in pooled:
        typer.echo(f"pooled {_staging_text(pooled)}")
    else:
        typer.echo(f"pooled {_auc_text(pooled)}, ACC {pooled.get('acc', float('nan')):.3f}")
    if "dice" in pooled:
        typer.echo(f"pooled Dice {pooled['dice']:.3f}")
    typer.echo(f"report: {Path(out) / 'report.md'}")


@app.command()
@user_errors
def pretrain(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset; every study, labeled or not."),
    out: Path = typer.Option(..., "--out", help="RUN folder (RUN/bundle: the encoder bundle)."),
    model: str = typer.Option("std_net", "--model", help="A model with a per-phase encoder."),
    method: str = typer.Option("vicreg", help="mae, barlow or vicreg."),
    profile: str = _PROFILE,
    epochs: int | None = typer.Option(None, help="Pretraining epochs (default 20)."),
    batch_size: int | None = typer.Option(None, help="Studies per batch (default 4)."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (default 1e-3)."),
    seed: int = typer.Option(0),
    config: Path | None = _CONFIG,
    phases: str | None = _PHASES,
    in_channels: int = _IN_CHANNELS,
    option: list[str] = _OPTION,
    ssl_option: list[str] = typer.Option(
        [], "--ssl-option", "-s", help="Pretraining setting key=value, e.g. mask_ratio=0.75."
    ),
    workers: int = _WORKERS,
    cache: Path | None = _CACHE,
    resume: bool = typer.Option(False, help="Continue a killed run from its last checkpoint."),
    no_register: bool = _NO_REGISTER,
) -> None:
    """Self-supervised pretraining of a model's per-phase encoder (labels ignored); `train`/`cv
    --init RUN/bundle` fine-tune from it."""
    from liverphase.evaluate.pretrain import run_pretrain
    from liverphase.train.options import experiment_kwargs, parse_model_options

    kwargs = experiment_kwargs(
        model,
        profile,
        config,
        phases=phases,
        in_channels=in_channels,
        option=option,
        no_register=no_register,
    )
    flags = {"method": method, "epochs": epochs, "batch_size": batch_size, "lr": lr}
    settings = {
        **parse_model_options(ssl_option),
        **{k: v for k, v in flags.items() if v is not None},
    }
    result = run_pretrain(
        dataset, out, kwargs, settings, seed=seed, cache_root=cache, workers=workers, resume=resume
    )
    last = result["history"][-1]
    typer.echo(f"{result['method']}: loss {last['loss']:.4f}, probe AUC {last['probe_auc']:.3f}")
    typer.echo(f"bundle: {result['bundle']}")


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
) -> None:
    """Registered models and what each takes; --measure profiles them (time, memory, batch 2)."""
    from liverphase.atomic import atomic_write_json, atomic_write_text
    from liverphase.bench.models import models_report

    if not measure:
        from liverphase.bench.models import chosen_models
        from liverphase.models.catalogue import format_catalogue, model_catalogue

        rows = model_catalogue(chosen_models(names))
        typer.echo(format_catalogue(rows))
        for r in rows if show_options else []:
            typer.echo(f"{r['model']}: " + ", ".join(f"{k}={v}" for k, v in r["options"].items()))
        return
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
def evaluate(
    run: Path = typer.Argument(
        ..., help="A RUN folder of train (RUN/bundle) or cv (fold bundles, averaged)."
    ),
    data: Path = typer.Option(..., "--data", help="An nnU-Net dataset with cases.csv."),
    out: Path | None = typer.Option(None, help="Report folder (default RUN/evaluate_<dataset>)."),
    workers: int = typer.Option(1, min=1),
    submission: str | None = typer.Option(
        None,
        help="Also write a challenge submission, OUT/submission_<format>.json: lld-mmri (the "
        "dataset's test split, or every case without a split column; labels may be withheld).",
    ),
) -> None:
    """Evaluate trained bundle(s) on another dataset: metrics with patient-bootstrap CIs, ROC, report."""
    from liverphase.evaluate.external import evaluate_run

    result = evaluate_run(run, data, out, workers=workers, submission=submission)
    if result["metrics"] is None:
        typer.echo("no labeled case: nothing scored")
    else:
        pooled = result["metrics"]["pooled"]
        dice = f", pooled Dice {pooled['dice']:.3f}" if "dice" in pooled else ""
        typer.echo(f"{_auc_text(pooled)}{dice}; report: {result['out']}/report.md")
    if result.get("submission"):
        typer.echo(f"submission: {result['submission']}")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("demo_run"), "--out", help="Output folder."),
    cases: int = typer.Option(40, min=12),
    epochs: int = typer.Option(8, min=1),
    model: str = typer.Option("miff_spm"),
) -> None:
    """The embedded default: synthetic cohort → patient-level CV → predict a held-out study → report."""
    from liverphase.inference.demo import run_demo

    s = run_demo(out, cases=cases, epochs=epochs, model=model, log=typer.echo)
    typer.echo(f"cross-validated {_auc_text(s)}; CV report: {s['report_md']}")
    typer.echo(
        f"held-out study {s['held_out_case']} (true {s['true_label']}): predicted {s['held_out_label']} {s['probabilities']}"
    )
    typer.echo(f"timings: {s['timings']}")
    typer.echo(f"report: {s['report_html']}")


@app.command()
@user_errors
def ablate(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv (four CT phases)."),
    out: Path = typer.Option(..., "--out", help="RUN folder: report.md, ablation.json, runs/."),
    folds: int = typer.Option(5, min=2),
    profile: str = _PROFILE,
    epochs: int | None = typer.Option(None, help="Override the profile's epochs for every run."),
    tables: str | None = typer.Option(
        None, help="Comma-separated subset of the suite's tables, by number (default all)."
    ),
    suite: str = typer.Option(
        "paper",
        help="paper: MIFF+SPM's tables 1-5; std_net: STD-Net's temporal-module, phase and missing-phase tables 1-3; cirrhosis: staging per sequence (T1W, T2W, both), cirrhosis_msa 2D/3D vs radiomics; ssl: pretraining (none, mae, barlow) x label share, site A CV and --external site B.",
    ),
    seed: int = typer.Option(0),
    config: Path | None = _CONFIG,
    option: list[str] = _OPTION,
    workers: int = _WORKERS,
    time_steps: bool = _TIME_STEPS,
    external: Path | None = typer.Option(
        None, help="ssl suite: the second site's dataset, never pretrained or trained on."
    ),
    ssl_option: list[str] = typer.Option(
        [],
        "--ssl-option",
        "-s",
        help="ssl suite: a pretraining setting key=value (epochs=20, mask_ratio=0.75, ...), or "
        "methods=[mae,barlow], label_fractions=[0.1,0.25,1], freeze_epochs=K.",
    ),
) -> None:
    """A paper's experiments (networks, components, λ, channels, phases; or STD-Net's) in one command.

    Run again on the same OUT, it reuses finished runs with the same settings and continues an
    interrupted one from its last epoch, so a long ablation can be spread over several sittings.
    --config and -o go to every row: training and preprocessing settings as given, each model option
    to the rows whose model takes it (a row's own options win: they are what its table varies)."""
    from liverphase.evaluate.ablate import parse_tables, run_ablate
    from liverphase.train.options import config_overrides, parse_model_options

    chosen = parse_tables(tables, dataset, suite)
    shared = config_overrides(config, option)
    result = run_ablate(
        dataset,
        out,
        folds=folds,
        profile=profile,
        seed=seed,
        epochs=epochs,
        tables=chosen,
        workers=workers,
        log=typer.echo,
        suite=suite,
        time_steps=time_steps,
        shared=shared,
        external=external,
        pretrain=parse_model_options(ssl_option),
    )
    typer.echo(f"report: {result['report']} ({result['seconds']:.0f} s)")


@app.command()
@user_errors
def compare(
    runs: list[Path] = typer.Argument(
        ...,
        help="Finished cv RUN folders on the same dataset and folds; the first is the reference.",
    ),
    data: Path = typer.Option(..., "--data", help="The dataset the runs were trained on."),
    out: Path = typer.Option(..., "--out", help="Folder for comparison.md and comparison.json."),
    kinetics: bool = typer.Option(
        True, help="Add the kinetics logistic-regression baseline on the same folds."
    ),
    cache: Path | None = typer.Option(
        None,
        help="The runs' preprocessing cache (default: the one the first run used, from its run.json).",
    ),
    missing_phases: bool = typer.Option(
        False,
        help="Add the first run re-predicted on its own folds with each phase withheld in turn "
        "(models with a phase mask, e.g. std_net).",
    ),
    time_steps: bool = _TIME_STEPS,
) -> None:
    """Compare cv runs: AUC, accuracy, F1 with patient-bootstrap CIs and DeLong p against the first run."""
    from liverphase.evaluate.compare import (
        check_cv_run,
        compare_runs,
        label_runs,
        step_note,
        write_comparison,
    )
    from liverphase.evaluate.missing_phase import with_missing_phase_runs

    for run in runs:
        check_cv_run(run)
    labels = label_runs(runs)
    reference = next(iter(labels))
    if missing_phases:
        labels = with_missing_phase_runs(labels, reference, data, out, cache)
    rows = compare_runs(
        labels, data, reference, kinetics=kinetics, cache_root=cache, time_steps=time_steps
    )
    path = write_comparison(
        rows,
        out,
        f"Comparison against {reference}",
        f"Dataset {data}; same patient-level folds for every row. {step_note(rows)}",
    )
    typer.echo(path.read_text())


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


@app.command()
@user_errors
def bench(
    quick: bool = typer.Option(False, help="Tiny inputs; finishes in about a minute."),
    out: Path = typer.Option(Path("bench_results"), help="Folder for bench.json and bench.md."),
) -> None:
    """Speed, memory and accuracy side by side in one run: writes OUT/bench.json and OUT/bench.md."""
    from liverphase.bench.run import run_bench

    run_bench(out, quick=quick, log=typer.echo)
    typer.echo(f"wrote {out / 'bench.md'}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="liverphase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
