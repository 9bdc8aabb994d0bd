"""The `liverphase` command line: one thin function per command; user errors exit 2 with one line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from liverphase.errors import LiverphaseError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deep learning on multi-phase liver imaging (multi-phase CT, DCE and multi-sequence MRI).",
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn LiverphaseError into one line on stderr and exit code 2; anything else is a bug (exit 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LiverphaseError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
@user_errors
def synth(
    out: Path = typer.Argument(..., help="Output folder (an nnU-Net raw dataset + cases.csv)."),
    kind: str = typer.Option("ct", help="ct (mri-dce and mri-cirrhosis follow in later releases)."),
    cases: int = typer.Option(40, min=1, help="Number of cases."),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same cohort."),
    classes: int = typer.Option(2, help="2 (HCC, ICC) or 5 (+ hemangioma, cyst, metastasis)."),
    dicom: int = typer.Option(
        0, min=0, help="Also write the first K cases as DICOM studies in OUT/dicom/."
    ),
    difficulty: str = typer.Option("realistic", help="easy (textbook kinetics) or realistic."),
    preset: str = typer.Option(
        "default", help="Grid preset: default, tiny (tests) or realistic (512² CT)."
    ),
) -> None:
    """Make a synthetic multi-phase cohort with known lesion classes, masks and breathing shifts."""
    from liverphase.errors import ConfigError
    from liverphase.synth.ct import synth_ct_cohort

    if kind != "ct":
        raise ConfigError(f"--kind {kind!r} is not available yet; use --kind ct")
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


def main() -> None:
    """Console-script entry point."""
    app(prog_name="liverphase")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
