"""What each registered model can take, at a glance (`liverphase models`): no profiling; each model
is built on the meta device (shapes, no weights) for its parameter count."""

from __future__ import annotations

from typing import Any

import torch

from liverphase.models.registry import (
    accepts_phase_mask,
    create_model,
    list_models,
    model_defaults,
    model_info,
)
from liverphase.recipes import default_recipe, get_recipe, recipe_names

# a build with two classes and two phases only counts parameters (the heads grow with classes)
_PROBE_PHASES = ("A", "B")


def model_catalogue(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: description, parameters, mask needed, phases and missing phases taken."""
    rows = []
    for name in names or list_models():
        info = model_info(name)
        options = model_defaults(name)
        with torch.device("meta"):  # shapes only: no weights allocated or initialised
            model = create_model(name, num_classes=2, phases=_PROBE_PHASES)
        rows.append(
            {
                "model": name,
                "description": (info["description"] or "").splitlines()[0],
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "needs_mask": bool(info["segments"]),
                "min_phases": int(getattr(model, "min_phases", 1)),
                "missing_phases": accepts_phase_mask(model),
                "options": options,
                "recipes": recipe_names(name),
                "default_recipe": default_recipe(name),
            }
        )
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
        "Any number of classes. Options: `liverphase models --options`; time and memory: "
        "`liverphase models --measure`."
    )
    return "\n".join(lines)
