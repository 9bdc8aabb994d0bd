"""Preprocess a whole dataset into the content-addressed cache, in worker processes if asked.

Keys come from file hashes first (`PreprocessCache.key_for`), so a rerun with nothing changed reads
no study; only missing entries are built, each in a spawned worker with its share of the threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from tqdm.auto import tqdm

from liverphase.errors import DatasetError, LiverphaseError
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.pool import process_pool
from liverphase.preprocess.cache import HASHES, FileHasher, PreprocessCache
from liverphase.preprocess.config import PreprocessConfig


def _case_extra(ds: NnUNetDataset, case_id: str) -> dict[str, Any]:
    # what besides file content shapes the result: phase names per file, reference, csv bbox
    rec = ds.case(case_id)
    extra: dict[str, Any] = {
        "phases": ds.phases,
        "reference_phase": ds.case_reference_phase(case_id),
        "bbox": list(rec.bbox) if rec.bbox else None,
    }
    if rec.phase_boxes:  # only when present, so keys of datasets without them stay as they were
        extra["phase_boxes"] = {p: list(b) for p, b in sorted(rec.phase_boxes.items())}
    if ds.allow_missing_phases:
        extra["phases_present"] = ds.present_phases(case_id)
    return extra


def _worker_init(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _build_case(
    dataset_root: str, case_id: str, key: str, cache_root: str, config: dict[str, Any]
) -> tuple[str, str, float, list[str]]:
    """Load, preprocess and store one case (runs in a worker process; arguments are picklable)."""
    start = time.perf_counter()
    cfg = PreprocessConfig.from_dict(config)
    ds = open_dataset(dataset_root)
    study = ds.load_study(case_id, require_roi=cfg.roi_source != "image")
    inputs = [p.name for p in ds.case_files(case_id)]
    entry = PreprocessCache(cache_root).build(key, study, cfg, {"inputs": inputs})
    return case_id, key, time.perf_counter() - start, list(entry.meta.get("warnings", []))


def preprocess_dataset(
    dataset_root: str | Path,
    cache_root: str | Path,
    config: PreprocessConfig,
    workers: int = 1,
    progress: bool = True,
    cases: Sequence[str] | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Preprocess every case (or `cases`) of a dataset into the cache; unchanged cases are skipped.

    Keys are computed from file hashes first, so a rerun with nothing changed reads no study.
    Returns stats: built, reused, failed (case → message), seconds, keys (case → key), warnings.
    With `strict`, any failure raises DatasetError after the other cases are done and indexed.
    """
    start = time.perf_counter()
    ds = open_dataset(dataset_root)
    config = config.resolved(ds.phases)
    cache = PreprocessCache(cache_root)
    cache.root.mkdir(parents=True, exist_ok=True)
    cache.clean_temp()
    hasher = FileHasher(cache.root / HASHES)
    ids = list(cases) if cases is not None else [c.case_id for c in ds.cases]
    keys: dict[str, str] = {}
    failed: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    for cid in ids:
        try:
            keys[cid] = cache.key_for(ds.case_files(cid), config, _case_extra(ds, cid), hasher)
        except LiverphaseError as exc:
            failed[cid] = str(exc)
            continue
        if not cache.reusable(keys[cid], cid):  # missing, or damaged (then logged)
            todo.append((cid, keys[cid]))
    hasher.save()
    warnings: dict[str, list[str]] = {}
    args = [(str(ds.root), cid, key, str(cache.root), config.to_dict()) for cid, key in todo]
    bar = tqdm(total=len(todo), desc="preprocess", unit="study", disable=not progress or not todo)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))

    def done(cid: str, outcome: tuple[str, str, float, list[str]] | BaseException) -> None:
        if isinstance(outcome, LiverphaseError):
            failed[cid] = str(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome[3]:
            warnings[cid] = outcome[3]
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for a in args:
                try:
                    done(a[1], _build_case(*a))
                except LiverphaseError as exc:
                    done(a[1], exc)
        else:
            with process_pool(workers, _worker_init, (threads,)) as pool:
                futures = {pool.submit(_build_case, *a): a[1] for a in args}
                for fut in as_completed(futures):
                    exc = fut.exception()
                    done(futures[fut], exc if exc is not None else fut.result())
    finally:
        bar.close()
        cache.update_index({c: k for c, k in keys.items() if c not in failed and cache.has(k)})
    stats = {
        "built": len(todo) - len([c for c, _ in todo if c in failed]),
        "reused": len(keys) - len(todo),
        "failed": failed,
        "seconds": round(time.perf_counter() - start, 3),
        "keys": {c: k for c, k in keys.items() if c not in failed},
        "warnings": warnings,
    }
    if failed and strict:
        first = next(iter(failed.items()))
        raise DatasetError(f"{len(failed)} case(s) failed; first {first[0]}: {first[1]}", ds.root)
    return stats
