"""Where a model's training step spends its time: torch.profiler's operator table for one step.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/profile_step.py --model miff_spm --input paper

Prints the top operators by self CPU time (after one warm-up step) and the share of the step in
convolutions, their backward, normalisation, the GRU and everything else.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from liverphase.models import create_model
from liverphase.phases import CT_PHASES
from liverphase.train.config import PROFILE_INPUT

GROUPS = {
    "convolution": ("conv", "mkldnn_convolution", "thnn_conv"),
    "batch norm": ("batch_norm",),
    "gru": ("gru", "rnn"),
    "pooling": ("pool",),
    "elementwise": ("add", "mul", "relu", "sigmoid", "threshold", "div", "sub", "copy", "fill"),
}


def main() -> None:
    """Profile one forward+backward step of --model at --input with --batch and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="miff_spm")
    ap.add_argument("--input", choices=sorted(PROFILE_INPUT), default="paper")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    phases = list(CT_PHASES)
    model = create_model(args.model, 2, phases, in_channels=3).train()
    x = torch.randn(args.batch, len(phases), 3, *PROFILE_INPUT[args.input])
    y = torch.arange(args.batch) % 2

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x).logits, y).backward()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {g: 0.0 for g in GROUPS}
    shares["other"] = 0.0
    for e in events:
        name = e.key.lower()
        group = next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), "other")
        shares[group] += e.self_cpu_time_total / total
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    print(
        json.dumps(
            {
                "model": args.model,
                "input": [args.batch, len(phases), 3, *PROFILE_INPUT[args.input]],
                "threads": torch.get_num_threads(),
                "step_s": round(total / 1e6, 2),
                "self_cpu_share": {k: round(v, 3) for k, v in shares.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
