"""Time of the pipeline without a marked lesion, per study: the locator's whole-scan search alone and
the whole blind `predict` (search, registration, model), on test studies of a `cv --locate auto` RUN,
each with the bundle of the fold that held it out; and the process's peak memory.

    python benchmarks/locate_speed.py RUN DATASET --cases 6 --out benchmarks/results/located240/speed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liverphase.atomic import atomic_write_json
from liverphase.inference.predictor import Predictor
from liverphase.io.nifti import open_dataset


def main() -> None:
    """Parse arguments, time the studies, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--cases", type=int, default=6, help="test studies per fold, first ones")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ds = open_dataset(args.dataset)
    splits = json.loads((args.run / "splits.json").read_text())
    rows = []
    for k, fold in splits.items():
        predictor = Predictor(args.run / f"fold_{k}" / "bundle")
        if predictor.locator is None:
            raise SystemExit(f"fold {k}'s bundle has no locator: run cv --locate auto first")
        for case in fold["test"][: args.cases]:
            tick = time.perf_counter()
            study = ds.load_study(case)
            read = time.perf_counter() - tick
            blind = dataclasses.replace(study, mask=None, bbox=None, phase_boxes={})
            ref = study.phases[study.reference_phase]
            tick = time.perf_counter()
            predictor.locator.find(study.phases, ref)
            search = time.perf_counter() - tick
            with tempfile.TemporaryDirectory() as tmp:
                tick = time.perf_counter()
                predictor.predict_study(blind, tmp, cam=False, occlusion=False, report=False)
                total = time.perf_counter() - tick
            voxels = int(np.prod(ref.GetSize()))
            rows.append(
                {
                    "case": case,
                    "fold": int(k),
                    "voxels": voxels,
                    "read_s": round(read, 3),
                    "search_s": round(search, 3),
                    "predict_s": round(total, 3),
                }
            )
            print(rows[-1], flush=True)
    summary = {
        "threads": torch.get_num_threads(),
        "studies": len(rows),
        "median_search_s": float(np.median([r["search_s"] for r in rows])),
        "median_predict_s": float(np.median([r["predict_s"] for r in rows])),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    atomic_write_json(args.out, summary)
    print({k: v for k, v in summary.items() if k != "rows"})


if __name__ == "__main__":
    main()
