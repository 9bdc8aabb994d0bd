"""How well `predict` finds the lesion when nobody marked it: a probe of the automatic search.

For the test cases of a cv RUN of a segmenting model (each predicted by the bundle of the fold that
held it out), the dataset's mask and boxes are removed and the study goes through the search
`predict` runs with no location (`Predictor`: a coarse pass of the model over the whole scan whose
largest predicted component frames the crop). Per study: whether the final lesion mask overlaps the
true lesion, its Dice, the distance between the centres (mm), the predicted class against the truth
and the seconds taken.

`--sliding` also tries the search a reader would try next: MONAI's `sliding_window_inference` with
windows the size of the training crops (the bundle's input grid over `--window-mm`, no registration),
Gaussian-weighted, the largest-mass component above 0.5 taken as the lesion. It measures whether the
failure is the coarse pass's scale or the model's: a segmenter trained only on crops that contain a
lesion has never seen a crop without one.

    python benchmarks/locate_probe.py RUN DATASET --cases 8 --out benchmarks/results/locate_probe
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from liverphase.atomic import atomic_write_json
from liverphase.inference import lesion
from liverphase.inference.predictor import Predictor
from liverphase.io.nifti import open_dataset
from liverphase.io.study import Study
from liverphase.models.tta import lesion_probability
from liverphase.preprocess.coarse import lesion_found
from liverphase.preprocess.pipeline import preprocess_study
from liverphase.preprocess.roi import lesion_mask_on_reference


def overlap(pred: np.ndarray, truth: np.ndarray, spacing_zyx: np.ndarray) -> dict[str, Any]:
    """Dice, centre distance (mm) and `detected` by the criterion `cv --locate auto` scores with
    (preprocess.coarse.lesion_found), plus whether the masks touch at all."""
    found = lesion_found(pred, truth, spacing_zyx)
    return {
        "dice": round(found["dice"], 4),
        "detected": found["detected"],
        "centre_error_mm": found["centre_error_mm"],
        "touches": bool(((np.asarray(pred) > 0) & (np.asarray(truth) > 0)).any()),
    }


def sliding_search(pr: Predictor, study: Study, window_mm: float) -> np.ndarray:
    """The lesion mask (on the canonical reference grid) from a sliding-window pass at crop scale."""
    from monai.inferers import sliding_window_inference

    canon = {p: lesion.snap(study.phases[p]) for p in study.phases}
    ref = canon[study.reference_phase]
    d, h, w = pr.config.size
    extent = np.array(ref.GetSize()) * np.array(ref.GetSpacing())  # x, y, z
    grid = np.maximum(np.round(extent / (window_mm / np.array([w, h, d]))).astype(int), [w, h, d])
    config = pr.config.replace(
        roi_source="image",
        register=False,
        phases=tuple(pr.phases),
        size=(int(grid[2]), int(grid[1]), int(grid[0])),
    )
    case = Study(study.case_id, canon, reference_phase=study.reference_phase)
    pre = preprocess_study(case, config)
    x = torch.from_numpy(pre.image)[None]
    n_p, n_c = x.shape[1:3]

    def segment(z: torch.Tensor) -> torch.Tensor:
        out = pr.model(z.reshape(z.shape[0], n_p, n_c, *z.shape[2:]))
        return lesion_probability(out.seg_logits)[:, None]

    with torch.no_grad():
        flat = x.reshape(1, n_p * n_c, *x.shape[3:])
        prob = sliding_window_inference(flat, (d, h, w), 8, segment, 0.5, mode="gaussian")
    prob = prob[0, 0].numpy()
    labels, n = ndimage.label(prob > 0.5)
    if n == 0:
        return np.zeros(sitk.GetArrayViewFromImage(ref).shape, bool)
    best = int(np.argmax(ndimage.sum(prob, labels, range(1, n + 1)))) + 1
    keep = np.where(labels == best, prob, 0.0)
    return lesion_mask_on_reference(keep, pre.meta["crop"], ref) > 0


def probe(run: Path, data: Path, cases: int, sliding: bool, window_mm: float) -> dict[str, Any]:
    """Search every chosen test case without its location; rows and summary."""
    ds = open_dataset(data)
    splits = json.loads((run / "splits.json").read_text())
    folds = sorted(splits, key=int)
    per_fold = -(-cases // len(folds))
    rows = []
    for k in folds:
        pr = Predictor(run / f"fold_{k}" / "bundle")
        for cid in splits[k]["test"][:per_fold]:
            study = ds.load_study(cid)
            truth_img = lesion.snap(study.mask)
            truth = sitk.GetArrayFromImage(truth_img) > 0
            spacing = np.array(truth_img.GetSpacing())[::-1]
            blind = dataclasses.replace(study, mask=None, bbox=None, phase_boxes={})
            row: dict[str, Any] = {"case_id": cid, "fold": int(k), "truth": ds.case(cid).label}
            tick = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    p = pr.predict_study(blind, tmp, cam=False, occlusion=False, report=False)
                    mask_img = lesion.snap(sitk.ReadImage(str(Path(tmp) / "lesion_mask.nii.gz")))
                    pred = sitk.GetArrayFromImage(mask_img) > 0
                    row.update(predicted=p["label"], **overlap(pred, truth, spacing))
                except Exception as exc:  # a failed search is a miss, counted, not dropped
                    row.update(predicted=None, dice=0.0, detected=False, error=str(exc))
            row["seconds"] = round(time.perf_counter() - tick, 1)
            if sliding:
                tick = time.perf_counter()
                found = sliding_search(pr, blind, window_mm)
                row["sliding"] = overlap(found, truth, spacing)
                row["sliding"]["seconds"] = round(time.perf_counter() - tick, 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    n = len(rows)
    summary = {
        "studies": n,
        "detected": sum(r["detected"] for r in rows),
        "median_dice": float(np.median([r["dice"] for r in rows])),
        "correct_class": sum(r.get("predicted") == r["truth"] for r in rows),
        "predicted_classes": sorted({str(r.get("predicted")) for r in rows}),
        "median_seconds": float(np.median([r["seconds"] for r in rows])),
    }
    if sliding:
        summary["sliding_detected"] = sum(r["sliding"]["detected"] for r in rows)
        summary["sliding_median_dice"] = float(np.median([r["sliding"]["dice"] for r in rows]))
    return {"run": str(run), "dataset": str(data), "summary": summary, "rows": rows}


def main() -> None:
    """Command line: probe a RUN's automatic lesion search and write OUT/locate_probe.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--cases", type=int, default=8, help="Test cases in all, spread over folds.")
    ap.add_argument("--sliding", action="store_true")
    ap.add_argument("--window-mm", type=float, default=45.0)
    ap.add_argument("--out", type=Path, default=Path("locate_probe"))
    args = ap.parse_args()
    result = probe(args.run, args.data, args.cases, args.sliding, args.window_mm)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "locate_probe.json", result)
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
