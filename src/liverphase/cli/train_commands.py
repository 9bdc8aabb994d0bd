"""Commands that train and evaluate: train, cv, pretrain, evaluate, ablate, compare."""

from __future__ import annotations

from pathlib import Path

import typer

from liverphase.cli.common import (
    _BATCH_SIZE,
    _CACHE,
    _CONFIG,
    _EPOCHS,
    _FREEZE,
    _IN_CHANNELS,
    _INIT,
    _LOSS,
    _LR,
    _MODEL,
    _NO_REGISTER,
    _OPTION,
    _PHASES,
    _PROFILE,
    _RECIPE,
    _TIME_STEPS,
    _WORKERS,
    _auc_text,
    _init_kwargs,
    _staging_text,
    app,
    torchrun_aware,
    user_errors,
)


@app.command()
@user_errors
@torchrun_aware
def train(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="RUN folder (RUN/bundle is written)."),
    model: str = _MODEL,
    profile: str | None = _PROFILE,
    recipe: str | None = _RECIPE,
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
    """Train one model on a whole dataset (an inner validation split selects the epoch).

    Under `torchrun --nproc_per_node=N -m liverphase train ...`: DDP, one process per GPU.
    """
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
        recipe=recipe,
        dataset=dataset,
    )
    kwargs.update(_init_kwargs(init, freeze_epochs))
    result = run_train(
        dataset, out, kwargs, seed=seed, cache_root=cache, workers=workers, resume=resume
    )
    typer.echo(f"bundle: {result['bundle']}")


@app.command()
@user_errors
@torchrun_aware
def cv(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv."),
    out: Path = typer.Option(..., "--out", help="RUN folder."),
    model: str = _MODEL,
    folds: int = typer.Option(5, min=2),
    profile: str | None = _PROFILE,
    recipe: str | None = _RECIPE,
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
    fold: int | None = typer.Option(
        None,
        "--fold",
        min=0,
        help="Train and predict fold K only (0-based), a job of its own: run one per fold (a SLURM "
        "array), then --merge.",
    ),
    merge: bool = typer.Option(
        False,
        "--merge",
        help="Pool the RUN's finished folds into metrics and report, with the settings they "
        "recorded (refused if they differ, or a fold is missing); trains nothing.",
    ),
    locate: str = typer.Option(
        "given",
        "--locate",
        help="given: test studies are cropped around their true lesion. auto: then also predict "
        "every test study with its mask removed, through a lesion locator each fold trains on its "
        "training masks (what `predict` uses for an unmarked study); RUN/located/ reports "
        "detection, AUC and Dice next to the true-location figures.",
    ),
) -> None:
    """k-fold patient-level cross-validation (or the published split): metrics with CIs, ROC,
    report and a bundle per fold. Folds finished with the same settings and data are reused.

    Under `torchrun --nproc_per_node=N -m liverphase cv ...`: DDP, one process per GPU.
    """
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
        recipe=recipe,
        dataset=dataset,
    )
    kwargs.update(_init_kwargs(init, freeze_epochs))
    if splits not in ("kfold", "official"):
        raise ConfigError(f"--splits must be kfold or official, got {splits!r}", "--splits")
    if (fold is not None) + merge + (splits == "official") > 1:
        raise ConfigError("--fold, --merge and --splits official exclude one another", "--fold")
    from liverphase.inference.located import check_locatable, check_locate
    from liverphase.train.locator_config import locator_settings
    from liverphase.train.options import read_experiment_config

    if check_locate(locate) == "auto" and splits == "official":
        raise ConfigError(
            "--locate auto scores k-fold test studies: use --splits kfold", "--locate"
        )
    locator_config = locator_settings(read_experiment_config(config).get("locator"), config)
    if locate == "auto":  # before any training: a dataset it cannot learn from fails now
        check_locatable(dataset)
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
        only_fold=fold,
        merge=merge,
    )
    located = None
    from liverphase.train.distributed import is_main

    if locate == "auto" and is_main():  # under torchrun, the first process alone
        from liverphase.inference.located import run_located

        located = run_located(
            out,
            dataset,
            store=Path(cache) / "locators" if cache else None,
            config=locator_config,
            only_fold=fold,
            log=lambda line: typer.echo(line, err=True),
        )
    if fold is not None:
        typer.echo(f"fold {fold} finished: {result['folder']}")
        typer.echo(f"once every fold is: liverphase cv {dataset} --out {out} --merge")
        return
    pooled = result["metrics"]["pooled"]
    if "ordinal" in pooled:
        typer.echo(f"pooled {_staging_text(pooled)}")
    else:
        typer.echo(f"pooled {_auc_text(pooled)}, ACC {pooled.get('acc', float('nan')):.3f}")
    if "dice" in pooled:
        typer.echo(f"pooled Dice {pooled['dice']:.3f}")
    typer.echo(f"report: {Path(out) / 'report.md'}")
    if located is not None:
        from liverphase.evaluate.located import OUT, headline

        typer.echo(headline(located))
        typer.echo(f"located report: {Path(out) / OUT / 'report.md'}")


@app.command()
@user_errors
def pretrain(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset; every study, labeled or not."),
    out: Path = typer.Option(..., "--out", help="RUN folder (RUN/bundle: the encoder bundle)."),
    model: str = typer.Option("std_net", "--model", help="A model with a per-phase encoder."),
    method: str = typer.Option("vicreg", help="mae, barlow or vicreg."),
    profile: str | None = _PROFILE,
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
        recipe="default",  # recipes are fine-tuning settings; pretraining has its own
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
    allow_overlap: bool = typer.Option(
        False,
        "--allow-overlap",
        help="Evaluate even when the dataset shares studies (by image content) or patients with "
        "the bundles' training data; the report then states the overlap.",
    ),
) -> None:
    """Evaluate trained bundle(s) on another dataset: metrics with patient-bootstrap CIs, ROC, report."""
    from liverphase.evaluate.external import evaluate_run

    result = evaluate_run(
        run, data, out, workers=workers, submission=submission, allow_overlap=allow_overlap
    )
    if result.get("note"):
        typer.echo(result["note"])
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
def ablate(
    dataset: Path = typer.Argument(..., help="An nnU-Net dataset with cases.csv (four CT phases)."),
    out: Path = typer.Option(..., "--out", help="RUN folder: report.md, ablation.json, runs/."),
    folds: int = typer.Option(5, min=2),
    profile: str = typer.Option(
        "cpu", help="paper (the paper's settings, for GPUs) or cpu (reduced, for 2 CPU cores)."
    ),
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
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Print one `liverphase cv` command per row still to train (jobs for other machines) "
        "instead of training; run `ablate` again with the same options once they finished.",
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
    if plan:  # stdout holds the commands alone (one per line, for a job array); notes to stderr
        from liverphase.evaluate.ablate_plan import plan_ablation

        commands = plan_ablation(
            dataset,
            out,
            folds,
            seed,
            workers,
            profile=profile,
            epochs=epochs,
            tables=chosen,
            log=lambda line: typer.echo(line, err=True),
            suite=suite,
            shared=shared,
        )
        for command in commands:
            typer.echo(command)
        return
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
        True,
        help="Add the kinetics regression baseline (reads the true lesion mask) on the same folds.",
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
