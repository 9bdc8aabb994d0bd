"""Training-step time and peak memory of model variants side by side, each in a fresh process.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_time.py resnet3d18 miff_spm \
        miff_spm:region_kinetics=true:channels=4 --input cpu --batch 4

A spec is NAME[:key=value...]; `channels=N` sets the input channels per phase (an ROI channel adds one),
every other key is a model option (values read as YAML scalars). Figures are
`train.profile.profile_one`'s (median forward+backward seconds over --repeats after a warm-up step,
the step's peak resident memory above the built model); ratios are against the first spec.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
import yaml

from liverphase.phases import CT_PHASES
from liverphase.preprocess.config import DEFAULT_WINDOWS
from liverphase.train.config import PROFILE_INPUT
from liverphase.train.profile import profile_one


def parse_spec(spec: str) -> tuple[str, int, dict[str, Any]]:
    """'miff_spm:region_kinetics=true:channels=4' → (name, channels, options)."""
    name, *pairs = spec.split(":")
    options = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}
    return name, int(options.pop("channels", len(DEFAULT_WINDOWS))), options


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("specs", nargs="+", help="NAME[:key=value...], the first is the reference")
    for flag, default in (("--batch", 4), ("--repeats", 5)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--input", choices=sorted(PROFILE_INPUT), default="cpu")
    return ap.parse_args()


def main() -> None:
    """Profile every spec at one input and batch; print a markdown table."""
    args = _arguments()
    threads = torch.get_num_threads()
    rows = []
    for spec in args.specs:
        name, channels, options = parse_spec(spec)
        shape = (len(CT_PHASES), channels, *PROFILE_INPUT[args.input])
        call = (name, shape, args.batch, args.repeats, 1, options, threads, True)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            rows.append((spec, pool.submit(profile_one, *call).result()))
    first = rows[0][1]["train_s"]
    print(f"input {args.input} {PROFILE_INPUT[args.input]}, batch {args.batch}, {threads} threads")
    print("| Spec | Train step s | × first | Peak step MB |\n|---|---|---|---|")
    for spec, row in rows:
        ratio = row["train_s"] / first
        print(f"| {spec} | {row['train_s']:.3f} | {ratio:.2f} | {row['peak_mem_mb']:.0f} |")


if __name__ == "__main__":
    main()
