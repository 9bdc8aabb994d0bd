"""The app, the decorator that turns user errors into one line and exit 2, and shared options."""

from __future__ import annotations

import contextlib
import functools
import json
import os
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
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and not getattr(fn, "torchrun", False):
            # N copies of a command that does not join a process group would write the same
            # outputs N times over
            typer.echo(
                f"error: {fn.__name__.replace('_dataset', '')} does not run under torchrun "
                "(only train and cv do): run it as one process",
                err=True,
            )
            raise typer.Exit(2)
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


def torchrun_aware(fn: F) -> F:
    """Under `torchrun`: leave the process group when the command ends, however it ends, and print
    results from rank 0 only (every rank still prints its error line). No-op in a plain launch."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from liverphase.train.distributed import launch_facts, torchrun_session

        with contextlib.ExitStack() as stack:
            stack.enter_context(torchrun_session())
            if launch_facts()[0] != 0:  # N copies of "bundle: RUN/bundle" say nothing new
                devnull = stack.enter_context(open(os.devnull, "w"))
                stack.enter_context(contextlib.redirect_stdout(devnull))
            return fn(*args, **kwargs)

    wrapper.torchrun = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _auc_text(metrics: dict[str, Any]) -> str:
    """'AUC 0.912 (95% CI 0.850-0.960)' from metrics with auc and auc_ci (nan where missing)."""
    nan = float("nan")
    auc = metrics.get("auc")
    # a CI the bootstrap could not estimate (too few studies of a class) is [null, null]
    lo, hi = (nan if v is None else v for v in metrics.get("auc_ci") or (nan, nan))
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


_MODEL = typer.Option("miff_spm", "--model", help="A registered model (see `liverphase models`).")
_PROFILE = typer.Option(
    None,
    help="paper (the paper's settings, for GPUs) or cpu (reduced, for 2 CPU cores); default: the "
    "recipe's, else cpu.",
)
_RECIPE = typer.Option(
    None,
    help="A named recipe of the model (see `liverphase models`); default: the model's default "
    "recipe. The config and flags override it.",
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="liverphase")
