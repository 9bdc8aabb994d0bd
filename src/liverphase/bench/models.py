"""Profile registered models side by side: parameters, FLOPs, step time, peak memory.

Each figure is `train.profile.profile_one`'s (its docstring says what each means). Memory freed by
an earlier model stays with the allocator and would hide part of the next one's step, so each model
runs in its own fresh process (`isolate=True`); `peak_rss_mb` is that process's peak during the
step, torch itself included. Without isolation the memory figures are None. Added here:
- `fwd_ratio`, `train_ratio`: the time over `resnet3d18`'s at the same input in the same run
  (resnet3d18 is added to the run when missing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from liverphase.phases import CT_PHASES
from liverphase.pool import process_pool
from liverphase.preprocess.config import DEFAULT_WINDOWS
from liverphase.train.config import PROFILE_INPUT
from liverphase.train.profile import profile_one

REFERENCE_MODEL = "resnet3d18"
PAPER_INPUT: tuple[int, ...] = (len(CT_PHASES), len(DEFAULT_WINDOWS), *PROFILE_INPUT["paper"])
"""The four-phase CT paper's input: phases, window channels, slices, height, width."""
CPU_INPUT: tuple[int, ...] = (len(CT_PHASES), len(DEFAULT_WINDOWS), *PROFILE_INPUT["cpu"])
"""The CPU training profile's input (the grid `train --profile cpu` preprocesses to)."""
QUICK_INPUT: tuple[int, ...] = (4, 3, 16, 32, 32)
"""A tiny input for `--quick` runs and tests (16 slices: std_net and unet_channels need D % 16 == 0)."""
MEMORY_OPTIONS: dict[str, dict[str, Any]] = {
    name: {"checkpointing": True, "slice_chunk": 16}
    for name in ("miff_spm", "resnet2d_avg", "stic")
}
"""Options that keep the slice-wise models' training step at the paper's input well under 8 GB."""


def default_input_shapes(quick: bool = False) -> dict[str, tuple[int, ...]]:
    """Input shapes (P, C, D, H, W) by label: the paper's and the CPU profile's, or a tiny one."""
    if quick:
        return {"quick": QUICK_INPUT}
    return {"paper": PAPER_INPUT, "cpu": CPU_INPUT}


def chosen_models(names: str | None) -> list[str]:
    """`--names a,b` as registered model names (all when None); an unknown name is a ConfigError."""
    from liverphase.catalogue import chosen_names
    from liverphase.models import list_models

    return chosen_names(names, list_models())


def models_report(
    names: str | None, quick: bool, memory_options: bool, repeats: int
) -> tuple[list[str], list[dict[str, Any]], str]:
    """`liverphase models`: one description line per chosen model, the profiled rows and their table."""
    from liverphase.models import model_info

    chosen = chosen_models(names)
    lines = []
    for name in chosen:
        description = model_info(name)["description"]
        lines.append(f"{name}: {description.splitlines()[0] if description else ''}")
    rows = profile_models(
        chosen,
        default_input_shapes(quick),
        repeats=repeats,
        options_by_name=MEMORY_OPTIONS if memory_options else None,
    )
    return lines, rows, format_models_table(rows)


def profile_models(
    names: Sequence[str],
    input_shapes: Mapping[str, tuple[int, ...]],
    batch: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    options_by_name: Mapping[str, Mapping[str, Any]] | None = None,
    isolate: bool = True,
    num_threads: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (input, model): the figures in the module docstring; failures give an `error`."""
    names = list(names) if REFERENCE_MODEL in names else [REFERENCE_MODEL, *names]
    threads = num_threads or torch.get_num_threads()
    options_by_name = options_by_name or {}
    rows: list[dict[str, Any]] = []
    for label, shape in input_shapes.items():
        block = []
        for name in names:
            args = (name, tuple(shape), batch, repeats, warmup, dict(options_by_name.get(name, {})))
            try:
                row = _in_fresh_process(args, threads) if isolate else profile_one(*args, threads)
            except Exception as exc:  # one model failing (e.g. out of memory) keeps the table
                row = {
                    "model": name,
                    "shape": tuple(shape),
                    "error": f"{type(exc).__name__}: {exc}",
                }
            row["input"] = label
            block.append(row)
        _add_ratios(block)
        rows += block
    return rows


def _in_fresh_process(args: tuple, threads: int) -> dict[str, Any]:
    with process_pool(1) as pool:
        return pool.submit(profile_one, *args, threads, True).result()


def _add_ratios(block: list[dict[str, Any]]) -> None:
    ref = next((r for r in block if r["model"] == REFERENCE_MODEL and "error" not in r), None)
    for row in block:
        for key in ("fwd", "train"):
            ok = ref is not None and "error" not in row
            row[f"{key}_ratio"] = row[f"{key}_s"] / ref[f"{key}_s"] if ok else None


def format_models_table(
    rows: Sequence[Mapping[str, Any]], ceiling_gflops: float | None = None
) -> str:
    """The rows as a markdown table (one line per model and input); with `ceiling_gflops`, a
    column gives the training step's throughput as a share of that matmul ceiling."""
    share = " % of ceiling |" if ceiling_gflops else ""
    head = (
        "| model | input (P×C×D×H×W) | stem stride | params (M) | fwd GFLOPs | fwd s (min–max) "
        "| fwd+bwd s (min–max) | fwd × resnet3d18 | fwd+bwd × resnet3d18 | GFLOP/s (train) |"
        f"{share} peak mem (MB) | options |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        shape = "×".join(str(n) for n in r["shape"])
        if "error" in r:
            lines.append(f"| {r['model']} | {r['input']} {shape} | " + f"error: {r['error']} |")
            continue
        pct = f" {100 * r['train_gflops_s'] / ceiling_gflops:.0f} |" if ceiling_gflops else ""
        lines.append(
            f"| {r['model']} | {r['input']} {shape} | {r['stem_stride']} "
            f"| {r['params'] / 1e6:.2f} | {r['fwd_gflops']:.1f} "
            f"| {_span(r, 'fwd')} | {_span(r, 'train')} "
            f"| {_num(r['fwd_ratio'], '.2f')} | {_num(r['train_ratio'], '.2f')} "
            f"| {r['train_gflops_s']:.0f} |{pct} {_num(r['peak_mem_mb'], '.0f')} "
            f"| {_options(r['options'])} |"
        )
    return "\n".join(lines) + "\n"


def _span(row: Mapping[str, Any], key: str) -> str:
    return f"{row[f'{key}_s']:.3g} ({row[f'{key}_min_s']:.3g}–{row[f'{key}_max_s']:.3g})"


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "default"
