"""The registered models at a glance without torch: `liverphase models` reads this (under a second).

What needs the models built (parameter count, phases, options, description) is read from the static
file `liverphase/models/catalogue.json`, shipped with the package; the recipes are read live from
`liverphase.recipes`. The static file is regenerated from the registry by
`python -m liverphase.train.catalogue --write` (a test fails when it no longer matches).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from liverphase.errors import ConfigError
from liverphase.recipes import default_recipe, get_recipe, recipe_names

REGENERATE = "python -m liverphase.train.catalogue --write"
"""The command that rewrites the static catalogue from the model registry."""
STATIC_FIELDS = (
    "model",
    "description",
    "params_m",
    "needs_mask",
    "min_phases",
    "missing_phases",
    "options",
)
"""Each static row's fields: the ones that need torch and the models built."""


def static_catalogue_path() -> Any:
    """The shipped static catalogue (a Traversable; a Path in a normal install)."""
    # joined from `liverphase`, not `liverphase.models`: importing that package imports torch
    return resources.files("liverphase").joinpath("models").joinpath("catalogue.json")


def read_static_rows() -> list[dict[str, Any]]:
    """The static file's rows as stored (JSON: tuples appear as lists)."""
    path = static_catalogue_path()
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"the model catalogue is missing; regenerate it: {REGENERATE}", path
        ) from None
    return rows


def _as_tuples(value: Any) -> Any:
    # the registry's sequence defaults are tuples; JSON stores them as lists
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def chosen_names(names: str | None, registered: list[str]) -> list[str]:
    """`--names a,b` checked against `registered` (all when None); an unknown name is a ConfigError."""
    chosen = [n.strip() for n in names.split(",")] if names else list(registered)
    unknown = [n for n in chosen if n not in registered]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; registered: {registered}", "--names")
    return chosen


def with_recipes(row: dict[str, Any]) -> dict[str, Any]:
    """A row with the model's recipes and default recipe, read live from `liverphase.recipes`."""
    return {
        **row,
        "recipes": recipe_names(row["model"]),
        "default_recipe": default_recipe(row["model"]),
    }


def static_catalogue(names: str | None = None) -> list[dict[str, Any]]:
    """The catalogue rows (`--names a,b` or all) from the static file, with today's recipes."""
    by_name = {r["model"]: r for r in read_static_rows()}
    rows = []
    for name in chosen_names(names, list(by_name)):
        row = dict(by_name[name])
        row["options"] = {k: _as_tuples(v) for k, v in row["options"].items()}
        rows.append(with_recipes(row))
    return rows


def _recipes(row: dict[str, Any]) -> str:
    return ", ".join(n + ("*" if n == row["default_recipe"] else "") for n in row["recipes"])


def format_catalogue(rows: list[dict[str, Any]]) -> str:
    """The catalogue as a markdown table plus the rule it states."""
    lines = [
        "| model | params (M) | lesion input | phases / sequences | a missing one | recipes "
        "(* default) | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']:.1f} | "
            f"{'mask (segments it)' if r['needs_mask'] else 'mask or box'} | "
            f"any number ≥ {r['min_phases']} | "
            f"{'predicted without it' if r['missing_phases'] else 'refused at predict'} | "
            f"{_recipes(r)} | {r['description']} |"
        )
    for r in rows:
        for name in r["recipes"][1:]:
            recipe = get_recipe(r["model"], name)
            lines.append(f"- {r['model']} `--recipe {name}`: {recipe.summary}. {recipe.evidence}.")
    lines.append(
        "A default (*) was chosen on CT cohorts and applies to CT datasets; on MRI every model "
        "runs `default` unless `--recipe` names another. Any number of classes. Options: "
        "`liverphase models --options`; time and memory: `liverphase models --measure`."
    )
    return "\n".join(lines)


def format_options(rows: list[dict[str, Any]]) -> list[str]:
    """One line per model: its options and their defaults."""
    return [
        f"{r['model']}: " + ", ".join(f"{k}={v}" for k, v in r["options"].items()) for r in rows
    ]
