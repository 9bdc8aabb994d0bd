"""`liverphase bench`: speed, memory and accuracy measured side by side in one run.

`run_bench(OUT)` measures, in this order: the machine, the matmul ceiling, every registered model
(`bench.models`), the pipeline on realistic studies (`bench.pipeline`), data loading
(`bench.dataload`, over the studies the pipeline cached) and a small cross-validation
(`bench.accuracy`); then judges the targets (`bench.report`). OUT/bench.json and OUT/bench.md are
rewritten after every section, so a long run that stops leaves what it measured. A section that
fails records its error and the others go on. Working files live in a temporary folder.
"""

from __future__ import annotations

import math
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_json, atomic_write_text
from liverphase.bench.accuracy import run_accuracy
from liverphase.bench.ceiling import ceiling, load_average, machine_info
from liverphase.bench.dataload import run_dataload
from liverphase.bench.models import default_input_shapes, profile_models
from liverphase.bench.pipeline import run_pipeline
from liverphase.bench.report import evaluate_targets, format_markdown
from liverphase.errors import ConfigError
from liverphase.models.registry import list_models

REPEATS = 3
BATCH = 2


def plain(obj: Any) -> Any:
    """JSON-ready copy: tuples as lists, numpy scalars as Python numbers, NaN and inf as None."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_models(quick: bool, ceiling_gflops: float | None) -> dict[str, Any]:
    """Every registered model at the CPU profile's and the paper's input (quick: a tiny one)."""
    shapes = default_input_shapes(quick)
    # isolation gives memory figures but costs a process start per model and input
    rows = profile_models(
        list_models(), shapes, batch=BATCH, repeats=REPEATS, warmup=1, isolate=not quick
    )
    for row in rows:
        if "error" not in row and ceiling_gflops:
            row["ceiling_fraction"] = row["train_gflops_s"] / ceiling_gflops
    return {
        "inputs": shapes,
        "batch": BATCH,
        "repeats": REPEATS,
        "isolated": not quick,
        "rows": rows,
    }


def _write(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    data = plain(result)
    atomic_write_json(out / "bench.json", data)
    atomic_write_text(out / "bench.md", format_markdown(data))
    return data


SECTIONS = ("ceiling", "models", "pipeline", "dataload", "accuracy")


def run_bench(
    out: Path,
    quick: bool = False,
    log: Callable[[str], object] = print,
    only: Sequence[str] | None = None,
) -> dict:
    """Run every measurement (or the sections in `only`); write OUT/bench.json and OUT/bench.md;
    return bench.json's content. The targets of sections not run are left out."""
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {unknown}; the sections are {', '.join(SECTIONS)}", "--sections"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "machine": machine_info(), "section_seconds": {}}
    if only:
        result["sections"] = [name for name in SECTIONS if name in only]
    log(
        f"bench{' --quick' if quick else ''}: {result['machine']['cpu']}, "
        f"{result['machine']['threads']} threads"
    )
    with tempfile.TemporaryDirectory(prefix="liverphase-bench-") as tmp:
        work = Path(tmp)

        sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("ceiling", lambda: ceiling(quick)),
            ("models", lambda: run_models(quick, (result.get("ceiling") or {}).get("gflops"))),
            ("pipeline", lambda: run_pipeline(work / "pipeline", quick, REPEATS, log)),
            ("dataload", lambda: run_dataload(result.get("pipeline") or {}, quick)),
            ("accuracy", lambda: run_accuracy(work / "accuracy", quick, log=log)),
        ]
        for name, measure in sections:
            if only and name not in only:
                continue
            log(f"{name} ...")
            tick = time.perf_counter()
            try:
                result[name] = measure()
            except Exception as exc:  # one failing section keeps the others' figures
                log(f"{name} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            result["section_seconds"][name] = round(time.perf_counter() - tick, 1)
            log(f"{name}: {result['section_seconds'][name]:.0f} s")
            result["seconds"] = time.perf_counter() - start
            _write(out, result)
    for key in ("dataset", "cache"):  # working paths, gone with the temporary folder
        (result.get("pipeline") or {}).pop(key, None)
    result["machine"]["load_average_end"] = load_average()
    # a partial run judges the targets of the sections it ran, and says which it left out
    result["targets"] = [
        t for t in evaluate_targets(plain(result)) if not only or t["section"] in only
    ]
    result["seconds"] = time.perf_counter() - start
    data = _write(out, result)
    for t in data["targets"]:
        log(f"target {'met' if t['met'] else 'MISSED'}: {t['name']}: {t['value']} ({t['target']})")
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return data
