"""Training throughput of `liverphase train` in one process and under `torchrun` (DDP, gloo, CPU).

One small model on a synthetic cohort, the same global batch in every launch:
- 1 process with 1 thread, 1 process with all (2) threads, and 2 processes with 1 thread each
  (`torchrun --nproc_per_node=2`), so both multi-core launches use the same cores;
- samples per second is the trainer's own log.csv column (training cases of an epoch over the
  epoch's training seconds, every rank's cases counted), the median over the epochs after the
  first (which warms up allocators and the cache reads).

Usage: python benchmarks/bench_ddp.py [--cases 32] [--epochs 4] [--model std_net]
Prints a markdown table and writes benchmarks/results/ddp_cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "ddp_cpu.json"
TORCHRUN = Path(sys.executable).parent / "torchrun"
LAUNCHES = [  # (label, processes, threads per process)
    ("1 process, 1 thread", 1, 1),
    ("1 process, 2 threads", 1, 2),
    ("2 processes (torchrun), 1 thread each", 2, 1),
]


def train(args: argparse.Namespace, root: Path, name: str, nproc: int, threads: int) -> Path:
    """One `liverphase train` launch; returns its RUN folder."""
    run = root / name
    launch = [sys.executable, "-m", "liverphase"]
    if nproc > 1:
        launch = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "liverphase"]
    cmd = [
        *launch,
        "train",
        str(root / "ds"),
        "--out",
        str(run),
        "--cache",
        str(root / "cache"),
        "--model",
        args.model,
        *[x for opt in args.option for x in ("-o", opt)],
        "--epochs",
        str(args.epochs),
        "--config",
        str(root / "bench.yaml"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return run


def throughput(run: Path) -> dict[str, Any]:
    """Samples per second of each epoch and the median after the first."""
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    per_epoch = [float(r["samples_per_s"]) for r in rows]
    return {
        "samples_per_s": round(statistics.median(per_epoch[1:] or per_epoch), 2),
        "per_epoch": per_epoch,
        "train_seconds_per_epoch": [float(r["seconds"]) for r in rows],
    }


def main() -> None:
    """Run the three launches and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default="std_net")
    parser.add_argument("--option", "-o", action="append", default=None)
    parser.add_argument("--size", type=int, nargs=3, default=[16, 64, 64])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    args.option = args.option or ["base_channels=8", "scales=4"]
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        root = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "liverphase", "synth", str(root / "ds")]
            + ["--cases", str(args.cases), "--seed", "0", "--preset", "tiny"],
            check=True,
            capture_output=True,
        )
        size = ", ".join(map(str, args.size))
        (root / "bench.yaml").write_text(
            f"train:\n  batch_size: {args.batch_size}\n  num_workers: 0\n"
            f"preprocess:\n  size: [{size}]\n  register: false\n"
        )
        train(args, root, "warm_cache", 1, 2)  # fills the cache: no launch below preprocesses
        rows = []
        for label, nproc, threads in LAUNCHES:
            start = time.perf_counter()
            run = train(args, root, f"run_{nproc}x{threads}", nproc, threads)
            rows.append(
                {
                    "launch": label,
                    "processes": nproc,
                    "threads_per_process": threads,
                    **throughput(run),
                    "wall_seconds": round(time.perf_counter() - start, 1),
                }
            )
    result = {
        "what": "liverphase train samples/s, one process vs torchrun DDP (gloo) on the CPU",
        "model": args.model,
        "model_options": args.option,
        "input": args.size,
        "global_batch": args.batch_size,
        "cases": args.cases,
        "epochs": args.epochs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            # other work on the machine shifts every launch; the 1-minute load before and after
            "load_average_1min": [load_before, round(os.getloadavg()[0], 2)],
        },
        "launches": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("| launch | samples/s | wall s (incl. start-up) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['launch']} | {r['samples_per_s']:.2f} | {r['wall_seconds']:.1f} |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
