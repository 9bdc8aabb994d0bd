"""What each registered model can take, built live from the registry; writes the static catalogue.

`liverphase models` reads the static file `liverphase/models/catalogue.json` (no torch; see
`liverphase.catalogue`). This module builds the same rows from the registry (each model on the meta
device: shapes, no weights, for its parameter count) for `liverphase models --live`, and rewrites
the static file after a model, an option or a description changes:

    python -m liverphase.train.catalogue --write

(`--check` only compares, exit 1 when the file is stale; tests/test_model_catalogue.py does too.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from liverphase.atomic import atomic_write_json
from liverphase.catalogue import (
    REGENERATE,
    STATIC_FIELDS,
    format_catalogue,
    read_static_rows,
    static_catalogue_path,
    with_recipes,
)
from liverphase.models.registry import (
    accepts_phase_mask,
    create_model,
    list_models,
    model_defaults,
    model_info,
)

__all__ = ["format_catalogue", "model_catalogue", "static_rows", "write_static_catalogue"]

# a build with two classes and two phases only counts parameters (the heads grow with classes)
_PROBE_PHASES = ("A", "B")


def _static_row(name: str) -> dict[str, Any]:
    info = model_info(name)
    with torch.device("meta"):  # shapes only: no weights allocated or initialised
        model = create_model(name, num_classes=2, phases=_PROBE_PHASES)
    return {
        "model": name,
        "description": (info["description"] or "").splitlines()[0],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "needs_mask": bool(info["segments"]),
        "min_phases": int(getattr(model, "min_phases", 1)),
        "missing_phases": accepts_phase_mask(model),
        "options": model_defaults(name),
    }


def model_catalogue(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: description, parameters, mask needed, phases and missing phases taken."""
    return [with_recipes(_static_row(name)) for name in names or list_models()]


def static_rows() -> list[dict[str, Any]]:
    """The static file's rows built live from the registry, as JSON stores them (tuples as lists)."""
    rows = [{k: r[k] for k in STATIC_FIELDS} for r in model_catalogue()]
    return json.loads(json.dumps(rows))


def write_static_catalogue(path: str | Path | None = None) -> Path:
    """Rewrite the static catalogue (the shipped file unless `path`) atomically; returns its path."""
    target = Path(str(static_catalogue_path())) if path is None else Path(path)
    atomic_write_json(target, static_rows())
    return target


def main(argv: list[str] | None = None) -> int:
    """`python -m liverphase.train.catalogue --write | --check`."""
    parser = argparse.ArgumentParser(prog="python -m liverphase.train.catalogue")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="Rewrite the static catalogue.")
    group.add_argument("--check", action="store_true", help="Exit 1 when it is stale.")
    args = parser.parse_args(argv)
    if args.write:
        print(f"wrote {write_static_catalogue()}")
        return 0
    if read_static_rows() != static_rows():
        print(f"{static_catalogue_path()} is stale; run: {REGENERATE}")
        return 1
    print(f"{static_catalogue_path()} matches the registry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
