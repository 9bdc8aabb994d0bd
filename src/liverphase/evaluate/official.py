"""`liverphase cv --splits official`: train on a dataset's published `train` split, select the epoch
on its `val` split, score its `test` split once (LLD-MMRI: 316 / 78 / 104 patients).

The RUN folder reads like a k-fold cv RUN with one fold (splits.json, fold_0/bundle, predictions.csv,
metrics.json with patient-bootstrap CIs, report.md, run.json), plus predictions_unlabeled.csv for
test cases whose label is withheld (predicted, never scored) and, for LLD-MMRI's seven classes, the
challenge's submission file.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_path, atomic_write_json, atomic_write_text
from liverphase.errors import DatasetError
from liverphase.evaluate.cv import (
    Experiment,
    OutOfFold,
    _fit_fold,
    cached_items,
    experiment_cases,
    make_experiment,
    predict_fold,
    run_record,
    write_oof_report,
)
from liverphase.evaluate.metrics import classification_metrics
from liverphase.evaluate.predictions import Predictions
from liverphase.evaluate.provenance import run_data
from liverphase.evaluate.report import format_ci
from liverphase.evaluate.stats import bootstrap_many
from liverphase.evaluate.submission import submission_filename, write_submission
from liverphase.io.nifti import NnUNetDataset, open_dataset
from liverphase.io.published_split import PublishedSplit, published_split
from liverphase.train.distributed import in_turn, is_main, join_group, on_main

UNLABELED_CSV = "predictions_unlabeled.csv"
SUBMISSION = "lld-mmri"


def predictable_unlabeled(ds: NnUNetDataset, phases: Sequence[str]) -> list[str]:
    """Unlabeled cases an experiment on `phases` can predict (all, unless a dataset that allows
    missing phases has none of them for a case)."""
    cases = [c.case_id for c in ds.cases if not c.label]
    if not ds.allow_missing_phases:
        return cases
    return [c for c in cases if set(phases) & set(ds.present_phases(c))]


def challenge_score(preds: Predictions, n_boot: int, seed: int) -> dict[str, Any]:
    """LLD-MMRI's ranking score, mean(macro F1, Cohen's κ), with a patient-bootstrap CI."""

    def fn(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        m = classification_metrics(y, p, preds.class_names)
        return {"score": (m["f1"] + m["kappa"]) / 2}

    point = fn(preds.labels, preds.probs)["score"]
    ci = None
    if n_boot:
        groups = np.asarray(preds.patient_ids)
        ci = bootstrap_many(fn, preds.labels, preds.probs, groups, n_boot, seed).get("score")
    return {
        "challenge_score": None if not np.isfinite(point) else float(point),
        "challenge_score_ci": None if ci is None else [float(ci[0]), float(ci[1])],
    }


def _patients(ds: NnUNetDataset, ids: Sequence[str]) -> int:
    return len({ds.case(c).patient_id for c in ids})


def _evaluation_text(ds: NnUNetDataset, split: PublishedSplit, seed: int) -> str:
    """The report's sentence on how the split was used (write_cv_report appends the CIs)."""
    val = (
        f"the epoch selected on `val` ({len(split.val)} cases, {_patients(ds, split.val)} patients)"
        if split.val
        else "the epoch selected on an inner validation split of `train` (`val` is empty)"
    )
    text = (
        f"The dataset's published split (cases.csv column `split`, not a k-fold): trained on "
        f"`train` ({len(split.train)} cases, {_patients(ds, split.train)} patients), {val}, "
        f"scored once on `test` ({len(split.test)} labeled cases, "
        f"{_patients(ds, split.test)} patients), seed {seed}"
    )
    if split.unscored:
        text += (
            f"; {len(split.unscored)} test case(s) with the label withheld are predicted "
            f"({UNLABELED_CSV}) but not scored"
        )
    if split.outside:
        text += f"; {len(split.outside)} labeled case(s) without a split value are left out"
    return text + ". Metrics are over the labeled test cases only"


def _write_unlabeled(
    path: Path, ds: NnUNetDataset, oof: OutOfFold, ids: list[str], names: list[str]
) -> None:
    """predictions.csv's columns for the unscored test cases (label empty)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "patient_id", "fold", "label", *[f"prob_{c}" for c in names]])
        for c in ids:
            w.writerow([c, ds.case(c).patient_id, 0, "", *[f"{v:.9g}" for v in oof.probs[c]]])


def _submission(
    out: Path, ds: NnUNetDataset, oof: OutOfFold, ids: list[str], names: list[str]
) -> tuple[Path | None, str]:
    """Write the LLD-MMRI submission of every test case when the dataset is LLD-MMRI-shaped;
    return its path (None when not written) and the report's sentence."""
    try:
        path = write_submission(
            SUBMISSION,
            out / submission_filename(SUBMISSION),
            ids,
            np.stack([oof.probs[c] for c in ids]),
            names,
        )
    except DatasetError as exc:  # not LLD-MMRI's classes or ids: no submission, said why
        return None, f"No LLD-MMRI submission written: {exc.problem}."
    return path, (
        f"LLD-MMRI submission of all {len(ids)} test cases (scored and unscored): "
        f"`{path.name}` (classes in the challenge's order, validated)."
    )


def _score(
    out: Path,
    ds: NnUNetDataset,
    exp: Experiment,
    items: dict,
    oof: OutOfFold,
    split: PublishedSplit,
    sections: list[str],
    seed: int,
    n_boot: int,
) -> tuple[dict[str, Any], Predictions | None]:
    """metrics.json, predictions.csv and report.md over the labeled test cases (a report without
    results when every test label is withheld); `sections` end the report."""
    title = f"{exp.model}: official split (train / val / test as published)"
    evaluation = _evaluation_text(ds, split, seed)
    if not split.test:
        parts = [
            f"# {title}\n",
            f"## Evaluation\n\nModel `{exp.model}`. {evaluation}.\n",
            "## Results\n\nEvery test label is withheld: nothing is scored. The predictions are "
            f"in `{UNLABELED_CSV}`.\n",
        ]
        atomic_write_text(out / "report.md", "\n".join([*parts, *sections]))
        return {"pooled": None, "folds": []}, None
    keep = set(split.test)
    scored = OutOfFold(
        *(
            {c: v for c, v in d.items() if c in keep}
            for d in (oof.probs, oof.lesion, oof.fold, oof.slices)
        )
    )
    metrics, preds = write_oof_report(
        out,
        ds,
        items,
        scored,
        exp.class_names,
        title=title,
        model=exp.model,
        seed=seed,
        n_boot=n_boot,
        evaluation=evaluation,
    )
    if len(exp.class_names) > 2:  # Cohen's κ and macro F1 are the multi-class metrics
        challenge = challenge_score(preds, n_boot, seed)
        metrics["pooled"].update(challenge)
        score = format_ci(challenge["challenge_score"], challenge["challenge_score_ci"])
        sections = [
            "## Challenge score\n\nLLD-MMRI ranks entries by the mean of macro F1 and Cohen's κ "
            f"(unweighted) on the test split: {score}"
            + (" (95% CI, patient bootstrap)" if challenge["challenge_score_ci"] else "")
            + ".\n",
            *sections,
        ]
    report = out / "report.md"
    atomic_write_text(report, "\n".join([report.read_text(), *sections]))
    return metrics, preds


def _write_results(
    out: Path,
    ds: NnUNetDataset,
    exp: Experiment,
    items: dict[str, dict[str, Any]],
    oof: OutOfFold,
    split: PublishedSplit,
    test: list[str],
    seed: int,
    n_boot: int,
) -> tuple[dict[str, Any], Predictions, Path | None]:
    """Unlabeled predictions, submission, scored report and metrics.json of an official split."""
    _write_unlabeled(out / UNLABELED_CSV, ds, oof, split.unscored, exp.class_names)
    submission, sub_text = _submission(out, ds, oof, test, exp.class_names)
    metrics, preds = _score(
        out, ds, exp, items, oof, split, [f"## Submission\n\n{sub_text}\n"], seed, n_boot
    )
    metrics.update(
        splits="official",
        n_test_cases=len(test),
        n_unscored=len(split.unscored),
        submission=str(submission) if submission else None,
    )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics, preds, submission


def run_official(
    dataset: str | Path,
    out: str | Path,
    exp_kwargs: dict[str, Any],
    seed: int = 0,
    cache_root: str | Path | None = None,
    workers: int = 1,
    resume: bool = False,
    progress: bool = True,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Train on the published `train` split, select on `val`, score `test` once; write a cv-like
    RUN (splits.json marked official, fold_0/bundle, predictions, metrics, report, submission)."""
    start = time.perf_counter()
    ds = open_dataset(dataset)
    out = Path(out)
    exp = make_experiment(ds, seed=seed, **exp_kwargs)
    usable = experiment_cases(ds, exp.phases) + predictable_unlabeled(ds, exp.phases)
    # the split is checked before any preprocessing: a bad column fails in a second
    split = published_split(ds.cases, usable, ds.root / "cases.csv")
    test = [c.case_id for c in ds.cases if c.case_id in {*split.test, *split.unscored}]
    join_group(exp.train.batch_size)  # under torchrun, after the checks above
    progress = progress and is_main()
    cache_dir = Path(cache_root) if cache_root else out / "cache"
    cases = [*split.train, *split.val, *test]
    items = in_turn(cached_items, ds, cache_dir, exp.preprocess, workers, progress, cases=cases)
    on_main(atomic_write_json, out / "splits.json", split.to_json())
    fold = {"fold": 0, "kind": "official", "test": test, "validation": split.val}
    trainer = _fit_fold(
        exp, ds, items, split.train, out / "fold_0", fold, resume, progress, "official split"
    )
    oof = OutOfFold({}, {}, {})
    predict_fold(trainer, exp, items, test, 0, oof)
    # rank 0 writes the results; under torchrun the others receive them
    metrics, preds, submission = on_main(
        _write_results, out, ds, exp, items, oof, split, test, seed, n_boot
    )
    run_info = {
        **run_record(exp, 1, seed),
        # trained on train, epoch chosen on val: test is not training data (evaluate scores it)
        **run_data(ds, cache_dir, [*split.train, *split.val]),
        "splits": "official",
        "cache": str(cache_dir.resolve()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    on_main(atomic_write_json, out / "run.json", run_info)
    return {
        "metrics": metrics,
        "predictions": preds,
        "run": run_info,
        "split": split,
        "submission": submission,
    }


def official_summary(result: dict[str, Any]) -> list[str]:
    """The CLI's lines for an official-split run: test metrics, unscored count, submission."""
    pooled = result["metrics"]["pooled"]
    split: PublishedSplit = result["split"]
    lines = [
        f"official split: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} "
        f"scored + {len(split.unscored)} unscored (label withheld)"
    ]
    if pooled is None:
        lines.append("test: every label withheld, nothing scored")
    else:
        auc = format_ci(pooled.get("auc"), pooled.get("auc_ci"))
        lines.append(f"test AUC {auc}, ACC {format_ci(pooled.get('acc'), pooled.get('acc_ci'))}")
        if pooled.get("kappa") is not None or "challenge_score" in pooled:
            lines.append(
                f"test macro F1 {format_ci(pooled.get('f1'), pooled.get('f1_ci'))}, Cohen's κ "
                f"{format_ci(pooled.get('kappa'), pooled.get('kappa_ci'))}, challenge score "
                f"{format_ci(pooled.get('challenge_score'), pooled.get('challenge_score_ci'))}"
            )
    if result["submission"]:
        lines.append(f"submission: {result['submission']}")
    return lines
