"""How much of a training step waits for data: the cached dataset with augmentation against the
compute of miff_spm's step at the CPU profile's grid.

Each epoch makes a fresh DataLoader, as the trainer does (non-persistent workers), so the wait for
the first batch counts. `wait` is the time `next()` on the loader takes (loading the memory-mapped
cache, augmenting, collating; with workers, only what the workers have not already prepared);
`compute` is zero_grad + forward + loss + backward + optimiser step. The wait fraction of an epoch
is wait / (wait + compute); the figure is the median over the timed epochs after a warm-up epoch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from liverphase.data.augment import Augmenter
from liverphase.data.dataset import CachedStudyDataset
from liverphase.evaluate.cv import cached_items
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import create_model
from liverphase.phases import CT_PHASES
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.config import profile_config
from liverphase.train.losses import multitask_loss
from liverphase.train.profile import spread
from liverphase.train.recipe import build_optimizer


def replicate(items: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` dataset items cycling through `items` (distinct case ids, shared cached files)."""
    return [
        {**items[i % len(items)], "case_id": f"{items[i % len(items)]['case_id']}_{i}"}
        for i in range(n)
    ]


def wait_fraction(
    items: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    model: str = "miff_spm",
    batch: int = 4,
    steps: int = 3,
    epochs: int = 3,
    warmup_epochs: int = 1,
    num_workers: int | None = None,
    profile: str = "cpu",
) -> dict[str, Any]:
    """Wait and compute per step over `epochs` timed epochs of `steps` batches (see the docstring)."""
    cfg = profile_config(profile, model=model)
    workers = cfg.num_workers if num_workers is None else num_workers
    data = CachedStudyDataset(
        replicate(items, batch * steps),
        {c: i for i, c in enumerate(class_names)},
        Augmenter(cfg.augment_params),
        seed=cfg.seed,
    )
    first = data[0]["image"]
    torch.manual_seed(cfg.seed)
    net = create_model(
        model,
        len(class_names),
        list(CT_PHASES[: first.shape[0]]),
        in_channels=first.shape[1],
        **cfg.model_options,
    )
    net.train()
    opt = build_optimizer(cfg, net)
    fractions, waits, computes = [], [], []
    for epoch in range(warmup_epochs + epochs):
        data.set_epoch(epoch)
        tick = time.perf_counter()
        loader = iter(
            DataLoader(
                data,
                batch_size=batch,
                shuffle=True,
                num_workers=workers,
                generator=torch.Generator().manual_seed(epoch),
            )
        )
        wait = compute = 0.0
        for b in range(steps):
            if b > 0:
                tick = time.perf_counter()
            sample = next(loader)
            got = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            multitask_loss(net(sample["image"]), sample["label"]).backward()
            opt.step()
            done = time.perf_counter()
            wait, compute = wait + got - tick, compute + done - got
            if epoch >= warmup_epochs:
                waits.append(got - tick)
                computes.append(done - got)
        if epoch >= warmup_epochs:
            fractions.append(wait / (wait + compute))
    return {
        "model": model,
        "batch": batch,
        "input": list(first.shape),
        "num_workers": workers,
        "steps_per_epoch": steps,
        "epochs": epochs,
        "wait_fraction": statistics.median(fractions),
        "min_wait_fraction": min(fractions),
        "max_wait_fraction": max(fractions),
        "wait_s": spread(waits),
        "compute_s": spread(computes),
        "threads": torch.get_num_threads(),
    }


def run_dataload(pipeline: Mapping[str, Any], quick: bool) -> dict[str, Any]:
    """The data-loading section of bench.json, over the studies the pipeline section cached."""
    if "error" in pipeline or "cache" not in pipeline:
        raise RuntimeError("needs the studies the pipeline section preprocesses")
    config = PreprocessConfig.from_dict(pipeline["preprocessing"])
    ds = open_dataset(pipeline["dataset"])
    items = list(
        cached_items(ds, Path(pipeline["cache"]), config, workers=1, progress=False).values()
    )
    profile_workers = profile_config("cpu").num_workers
    workers = tuple(sorted({0, profile_workers} | (set() if quick else {1})))
    runs = {
        f"workers_{w}": wait_fraction(items, ds.class_names, steps=2 if quick else 3, num_workers=w)
        for w in workers
    }
    # the figure judged: the CPU profile's own loader setting
    main = runs[f"workers_{profile_workers}"]
    return {**main, "by_workers": runs}
