"""The machine a bench ran on, and its dense-matmul ceiling (the GFLOP/s models are judged against).

The ceiling is one square matrix product `a @ b` of size n (2·n³ FLOPs) timed on the threads torch
uses, so a model's achieved GFLOP/s read as a share of it says how much of the arithmetic the
hardware offers the model's kernels reach. On a GPU the product (twice the size, or a GPU idles)
runs in float32 and, when the device supports them, bfloat16 and float16 (tensor cores); CUDA work
is timed with a synchronise.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any

import monai
import numpy as np
import torch

import liverphase
from liverphase.train.profile import timed

DEFAULT_SIZE = 2048
QUICK_SIZE = 1024


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The CUDA device's name when one is visible, else "cpu"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU, threads in use, library versions, device and date: what the figures depend on."""
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "liverphase": liverphase.__version__,
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": load_average(),
    }


def matmul_gflops(
    n: int = DEFAULT_SIZE,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 5,
) -> dict[str, Any]:
    """Throughput of an n×n by n×n product: median GFLOP/s with the min–max over `repeats`."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def product() -> None:
        torch.matmul(a, b)
        sync()

    t = timed(product, warmup, repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "gflops": flops / t["s"] / 1e9,
        "min_gflops": flops / t["max_s"] / 1e9,
        "max_gflops": flops / t["min_s"] / 1e9,
        "seconds": t,
    }


def ceiling(quick: bool = False, repeats: int = 5) -> dict[str, Any]:
    """The float32 CPU ceiling (the reference for every model row) and, on a GPU, its dtypes."""
    n = QUICK_SIZE if quick else DEFAULT_SIZE
    out = matmul_gflops(n, repeats=repeats)
    out["gpu"] = None
    if torch.cuda.is_available():
        gpu: dict[str, Any] = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
                continue
            try:
                gpu[str(dtype).removeprefix("torch.")] = matmul_gflops(
                    n * 2, dtype, "cuda", repeats=repeats
                )
            except RuntimeError as exc:  # an old device without the dtype's kernels
                gpu[str(dtype).removeprefix("torch.")] = {"error": str(exc)}
        out["gpu"] = gpu
    return out
