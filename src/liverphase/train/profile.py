"""Time a model's training step where it will train: parameters, FLOPs, seconds, peak memory.

`liverphase bench` and `liverphase models` profile the registered models with it at fixed inputs;
`compare` and `ablate` time each finished run's own network at that run's input and batch, side by
side in one sitting, so the step-time column compares networks rather than the days they trained.

What each figure is:
- `params`: trainable parameters.
- `fwd_gflops`, `train_gflops`: FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (one
  multiply-add = 2 FLOPs) for one forward, and for forward + backward, of a batch. Convolutions and
  matrix products are counted; element-wise ops, pooling and the GRU's recurrent cell are not (they
  are a small share of every model here).
- `fwd_s`: median wall time of a forward in eval mode under `torch.no_grad()` (what predict pays);
  `train_s`: median of forward + the trainer's loss + backward in train mode (no optimizer step, no
  data loading); each with min and max over `repeats` runs after the warm-up. The loss is the one
  the trainer uses: cross-entropy of the (mixed) logits, plus Dice + CE against a central cube for a
  model that segments.
- `peak_mem_mb`: how far one training step raises the process's resident memory above its level with
  the model and batch already built: activations, gradients and allocator overhead. Linux's peak-RSS
  mark (VmHWM) is reset just before the step (`/proc/self/clear_refs`; where that is refused, the
  lifetime peak `ru_maxrss` is used, which can only overstate the baseline and so understate the
  step). Memory an earlier model freed stays with the allocator and would hide part of the next
  one's step, so the memory figures are only asked for (`measure_memory`) in a fresh process.
- `train_gflops_s`: train_gflops / train_s, the achieved throughput.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from liverphase.models.blocks import count_parameters
from liverphase.models.registry import create_model
from liverphase.phases import CT_PHASES
from liverphase.train.losses import training_loss


def _central_mask(batch: int, spatial: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W) label map: a cube over the middle half of each axis, the rest background."""
    mask = torch.zeros(batch, *spatial)
    middle = tuple(slice(n // 4, n - n // 4) for n in spatial)
    mask[(slice(None), *middle)] = 1.0
    return mask


def profile_one(
    name: str,
    shape: tuple[int, ...],
    batch: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    options: Mapping[str, Any] | None = None,
    num_threads: int | None = None,
    measure_memory: bool = False,
    phases: Sequence[str] | None = None,
    num_classes: int = 2,
) -> dict[str, Any]:
    """Profile one model at one input shape (P, C, D, H, W) in this process (module docstring)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    options = dict(options or {})
    p, c = shape[0], shape[1]
    if phases is None:
        phases = list(CT_PHASES[:p]) if p <= len(CT_PHASES) else [f"P{i}" for i in range(p)]
    torch.manual_seed(0)
    model = create_model(
        name, num_classes=num_classes, phases=list(phases), in_channels=c, **options
    )
    x = torch.randn(batch, *shape)
    y = torch.arange(batch) % 2
    mask = _central_mask(batch, shape[2:])

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        training_loss(model(x), y, mask).backward()

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
