"""`liverphase pretrain`: a dataset's studies (labels ignored) → the cache → self-supervised
pretraining of a model's per-phase encoder (`ssl.pretrain`) → an encoder bundle for `--init`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liverphase.evaluate.cv import cached_items, make_experiment
from liverphase.io.nifti import open_dataset
from liverphase.models.registry import create_model
from liverphase.ssl.pretrain import PretrainConfig, pretrain, pretrain_cases


def run_pretrain(
    dataset: str | Path,
    out: str | Path,
    exp_kwargs: dict[str, Any],
    settings: dict[str, Any],
    seed: int = 0,
    cache_root: str | Path | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain the encoder of `exp_kwargs`'s model on every study of `dataset` (the same crops
    `cv` reads, through the same cache) with the pretraining `settings` (PretrainConfig fields)."""
    cfg = PretrainConfig.from_dict({**settings, "seed": seed}, source="pretraining settings")
    out = Path(out)
    ds = open_dataset(dataset)
    exp = make_experiment(ds, seed=seed, **exp_kwargs)
    ids = pretrain_cases(ds, exp.phases)
    cache = Path(cache_root) if cache_root else out / "cache"
    items = cached_items(ds, cache, exp.preprocess, workers, progress, cases=ids)
    classes = max(2, len(exp.class_names))
    result = pretrain(
        [items[c] for c in ids if c in items],
        out,
        lambda: create_model(exp.model, classes, exp.phases, **exp.model_options),
        cfg,
        {
            "model": exp.model,
            "model_options": exp.model_options,
            "phases": exp.phases,
            "preprocessing": exp.preprocess.to_dict(),
            "dataset": str(Path(dataset).resolve()),
        },
        resume=resume,
        progress=progress,
        roi_channel=exp.preprocess.roi_channel,
    )
    return {**result, "method": cfg.method}
