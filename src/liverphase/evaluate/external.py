"""`liverphase evaluate RUN --data DATASET`: trained bundle(s) on another dataset, with CIs and ROC.

Each bundle predicts as it would in `cv` and `predict`: with its own preprocessing and the test-time
flips its training recipe names. Fold bundles of a cv RUN are averaged (class probabilities, and the
lesion-mask probabilities of models that segment, which then get per-case Dice, HD95, surface Dice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from liverphase.data.dataset import CachedStudyDataset
from liverphase.data.forward import predict_batch
from liverphase.errors import BundleError, DatasetError
from liverphase.evaluate.cv import cached_items
from liverphase.evaluate.predictions import Predictions
from liverphase.evaluate.provenance import dataset_content, screen_evaluation
from liverphase.evaluate.report import write_cv_report
from liverphase.evaluate.segmentation import evaluate_segmentation
from liverphase.evaluate.submission import (
    check_submission,
    submission_cases,
    submission_filename,
    write_submission,
)
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.config import PreprocessConfig
from liverphase.train.bundle import load_bundle, read_bundle_meta


def run_bundles(run: str | Path) -> list[Path]:
    """The bundles of a RUN folder: RUN/bundle (train), else every RUN/fold_k/bundle (cv ensemble)."""
    run = Path(run)
    if (run / "bundle.json").is_file():
        return [run]
    if (run / "bundle" / "bundle.json").is_file():
        return [run / "bundle"]
    folds = sorted(run.glob("fold_*/bundle"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not folds:
        raise BundleError("no bundle found (expected RUN/bundle or RUN/fold_k/bundle)", run)
    return folds


@torch.no_grad()
def predict_items(
    model: torch.nn.Module,
    items: list[dict[str, Any]],
    class_names: list[str],
    batch_size: int = 2,
    flip_axes: tuple[int, ...] = (),
    present: Sequence[bool] | None = None,
    roi_channel: bool = False,
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Class probabilities (N, K) of cached items, in order, averaged over flips of `flip_axes`;
    with a model that segments also the lesion probability maps (D, H, W) per item, else None.
    The phases an item lacks (its `present`) and those `present` (one bool per phase) withholds
    reach the model through its phase mask (data.forward.predict_batch, as in cv and predict);
    `roi_channel` appends each item's lesion mask as the model's last input channel."""
    index = {c: i for i, c in enumerate(class_names)}
    labelled = [
        {**it, "label": it["label"] if it["label"] in index else class_names[0]} for it in items
    ]
    loader = DataLoader(
        CachedStudyDataset(labelled, index, None, seed=0, roi_channel=roi_channel),
        batch_size=batch_size,
        shuffle=False,
    )
    device = next(model.parameters()).device
    probs, lesion = [], []
    for batch in loader:
        pred = predict_batch(model, batch, flip_axes, device, present)
        probs.append(pred.probs)
        if pred.lesion is not None:
            lesion += list(pred.lesion)
    return np.concatenate(probs), (lesion or None)


def evaluate_run(
    run: str | Path,
    dataset: str | Path,
    out: str | Path | None = None,
    workers: int = 1,
    n_boot: int = 1000,
    progress: bool = True,
    cache_root: str | Path | None = None,
    submission: str | None = None,
    allow_overlap: bool = False,
) -> dict[str, Any]:
    """Evaluate RUN's bundle (or the mean of its fold bundles) on DATASET; writes a report folder
    (the crops go to `cache_root`, default OUT/cache). With `submission` (a format of
    evaluate.submission) also OUT/submission_<format>.json of the dataset's test split (every case
    without a split column), labeled or not; metrics are None when no case is labeled.
    A dataset sharing studies or patients with the bundles' training data is refused
    (DataOverlapError) unless `allow_overlap`; on the bundles' own dataset only the cases they
    never saw are scored (evaluate.provenance.screen_evaluation)."""
    bundles = run_bundles(run)
    ds = open_dataset(dataset)
    out = Path(out) if out else Path(run) / f"evaluate_{ds.root.name}"
    ids = [c.case_id for c in ds.cases if c.label]  # unlabeled rows cannot be scored
    sub_ids = submission_cases(ds.cases, ds.root / "cases.csv") if submission else []
    if not ids and not sub_ids:
        raise DatasetError("no labeled case to evaluate on", ds.root / "cases.csv")
    cache = Path(cache_root) if cache_root else out / "cache"
    # file digests only: a dataset refused for overlap costs no preprocessing
    content = dataset_content(ds, cache)
    trained = [read_bundle_meta(b).get("data") for b in bundles]
    screened = screen_evaluation(trained, content, ids, sub_ids, allow_overlap)
    ids = screened.scored
    wanted = {*ids, *sub_ids}
    order = [c.case_id for c in ds.cases if c.case_id in wanted]  # predicted once, in dataset order
    probs_sum, meta0, lesion_sum = None, None, None
    for path in bundles:
        model, meta = load_bundle(path)
        meta0 = meta0 or meta
        missing = [p for p in meta["phases"] if p not in ds.phases]
        if missing:
            raise DatasetError(
                f"the bundle needs phases {missing} the dataset lacks", ds.root / "dataset.json"
            )
        unknown = sorted({c.label for c in ds.cases if c.label} - set(meta["class_names"]))
        if unknown:
            raise DatasetError(
                f"labels {unknown} are not classes of the bundle {meta['class_names']}",
                ds.root / "cases.csv",
            )
        if submission:  # a format the bundle's classes or the case ids cannot meet fails first
            check_submission(submission, sub_ids, meta["class_names"])
        pre = PreprocessConfig.from_dict(
            meta.get("preprocessing") or {}, source=str(path / "bundle.json")
        )
        content.keep_hashes(cache)  # preprocessing then reads no file the check hashed
        items = cached_items(
            ds,
            cache,
            pre,
            workers,
            progress,
            cases=order,
        )
        flips = tuple((meta.get("training") or {}).get("tta_flip_axes") or ())
        probs, lesion = predict_items(
            model,
            [items[c] for c in order],
            list(meta["class_names"]),
            flip_axes=flips,
            roi_channel=pre.roi_channel,
        )
        probs_sum = probs if probs_sum is None else probs_sum + probs
        if lesion is not None:
            lesion_sum = (
                lesion
                if lesion_sum is None
                else [a + b for a, b in zip(lesion_sum, lesion, strict=True)]
            )
    assert meta0 is not None and probs_sum is not None
    class_names = list(meta0["class_names"])
    row = {c: i for i, c in enumerate(order)}
    probs_mean = probs_sum / len(bundles)
    written = None
    if submission:
        written = write_submission(
            submission,
            out / submission_filename(submission),
            sub_ids,
            probs_mean[[row[c] for c in sub_ids]],
            class_names,
        )
    result = {
        "metrics": None,
        "out": str(out),
        "bundles": [str(b) for b in bundles],
        "submission": str(written) if written else None,
        "overlap": asdict(screened.overlap),
        "note": screened.note,
    }
    if not ids:
        return result
    preds = Predictions(
        case_ids=ids,
        patient_ids=[items[c]["patient_id"] for c in ids],
        folds=[0] * len(ids),
        labels=np.array([class_names.index(items[c]["label"]) for c in ids]),
        probs=probs_mean[[row[c] for c in ids]],
        class_names=class_names,
    )
    title = f"{meta0['model']} on {ds.root.name}" + (
        f" (mean of {len(bundles)} fold bundles)" if len(bundles) > 1 else ""
    )
    seg_pooled, sections = None, [screened.section]
    if lesion_sum is not None:
        lesion = [lesion_sum[row[c]] / len(bundles) for c in ids]
        seg_pooled, seg_sections = evaluate_segmentation(
            out, ds, [items[c] for c in ids], lesion, n_boot=n_boot
        )
        sections = [*sections, *seg_sections]
    if written:
        sections = [*sections, f"## Submission\n\n`{written.name}`: {len(sub_ids)} cases.\n"]
    result["metrics"] = write_cv_report(
        out,
        preds,
        title=title,
        dataset=str(ds.root),
        model=meta0["model"],
        seed=0,
        n_boot=n_boot,
        extra_pooled=seg_pooled,
        sections=sections,
    )
    return result
