"""Profile registered models: parameters, FLOPs, forward and training-step time, peak memory.

What each figure is:
- `params`: trainable parameters.
- `fwd_gflops`, `train_gflops`: FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (one
  multiply-add = 2 FLOPs) for one forward, and for forward + backward, of a batch. Convolutions and
  matrix products are counted; element-wise ops, pooling and the GRU's recurrent cell are not (they
  are a small share of every model here).
- `fwd_s`: median wall time of a forward in eval mode under `torch.no_grad()` (what predict pays);
  `train_s`: median of forward + cross-entropy + backward in train mode (no optimizer step); each with
  min and max over `repeats` runs after the warm-up.
- `peak_mem_mb`: how far one training step raises the process's resident memory above its level with
  the model and batch already built: activations, gradients and allocator overhead. Linux's peak-RSS
  mark (VmHWM) is reset just before the step (`/proc/self/clear_refs`; where that is refused, the
  lifetime peak `ru_maxrss` is used, which can only overstate the baseline and so understate the step).
  Memory freed by an earlier model stays with the allocator and would hide part of the next one's
  step, so each model runs in its own fresh process (`isolate=True`); `peak_rss_mb` is that process's
  peak during the step, torch itself included. Without isolation the memory figures are None.
- `fwd_ratio`, `train_ratio`: the time over `resnet3d18`'s at the same input in the same run
  (resnet3d18 is added to the run when missing).
- `train_gflops_s`: train_gflops / train_s, the achieved throughput.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from liverphase.models.blocks import count_parameters
from liverphase.models.registry import create_model
from liverphase.phases import CT_PHASES
from liverphase.preprocess.config import DEFAULT_WINDOWS
from liverphase.train.config import PROFILE_INPUT

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


def models_report(
    names: str | None, quick: bool, memory_options: bool, repeats: int
) -> tuple[list[str], list[dict[str, Any]], str]:
    """`liverphase models`: one description line per chosen model, the profiled rows and their table."""
    from liverphase.errors import ConfigError
    from liverphase.models import list_models, model_info

    registered = list_models()
    chosen = [n.strip() for n in names.split(",")] if names else registered
    unknown = [n for n in chosen if n not in registered]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; registered: {registered}", "--names")
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
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(profile_one, *args, threads, True).result()


def profile_one(
    name: str,
    shape: tuple[int, ...],
    batch: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    options: Mapping[str, Any] | None = None,
    num_threads: int | None = None,
    measure_memory: bool = False,
) -> dict[str, Any]:
    """Profile one model at one input shape in this process (see profile_models)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    options = dict(options or {})
    p, c = shape[0], shape[1]
    phases = list(CT_PHASES[:p]) if p <= len(CT_PHASES) else [f"P{i}" for i in range(p)]
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, phases=phases, in_channels=c, **options)
    x = torch.randn(batch, *shape)
    y = torch.arange(batch) % 2

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).logits, y).backward()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    model.train()
    rss_before = _reset_peak_rss_mb()
    with FlopCounterMode(display=False) as train_counter:  # the first warm-up step
        train_step()
    peak = _peak_rss_mb()
    train_s = timed(train_step, max(warmup - 1, 0), repeats)
    model.eval()
    with FlopCounterMode(display=False) as fwd_counter:
        forward()
    fwd_s = timed(forward, max(warmup - 1, 0), repeats)
    train_gflops = train_counter.get_total_flops() / 1e9
    return {
        "model": name,
        "shape": tuple(shape),
        "batch": batch,
        "options": options,
        "stem_stride": options.get("stem_stride", 2),
        "threads": torch.get_num_threads(),
        "params": count_parameters(model),
        "fwd_gflops": fwd_counter.get_total_flops() / 1e9,
        "train_gflops": train_gflops,
        **{f"fwd_{k}": v for k, v in fwd_s.items()},
        **{f"train_{k}": v for k, v in train_s.items()},
        "train_gflops_s": train_gflops / train_s["s"],
        "peak_mem_mb": peak - rss_before if measure_memory else None,
        "peak_rss_mb": peak if measure_memory else None,
    }


def timed(fn: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """Run `fn` `warmup` times untimed, then `repeats` times timed: the spread of the wall times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return spread(times)


def spread(times: Sequence[float]) -> dict[str, float]:
    """{"s": median, "min_s", "max_s"} of some seconds."""
    return {"s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith(f"{field}:")), None)
    except OSError:
        return None
    return int(line.split()[1]) / 1024.0 if line else None  # kB


def _reset_peak_rss_mb() -> float:
    """Reset the peak-RSS mark to the current RSS where Linux allows it; returns the baseline."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        current = _status_mb("VmRSS")
        if current is not None:
            return current
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


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
