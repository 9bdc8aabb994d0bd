"""Paired AUC tests between cv runs on cohorts that share patients, lesions and folds but differ in
lesion structure (`synth --seed S` with and without `--center-frac`): `compare` refuses them (other
images), yet every study is the same patient's, so the clustered DeLong test applies.

    python benchmarks/structure_paired.py REF_RUN RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from liverphase.evaluate.predictions import read_predictions
from liverphase.evaluate.stats import auc_test, auc_test_name


def main() -> None:
    """Print each run's AUC and its paired p against the reference run, as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    ref = read_predictions(args.reference / "predictions.csv")
    out = {"test": auc_test_name(ref.patient_ids), "runs": {}}
    for run in [args.reference, *args.runs]:
        p = read_predictions(run / "predictions.csv")
        idx = [p.case_ids.index(c) for c in ref.case_ids]
        if [p.labels[i] for i in idx] != list(ref.labels) or any(
            p.folds[i] != ref.folds[j] for j, i in enumerate(idx)
        ):
            raise SystemExit(f"{run}: other labels or folds than {args.reference}")
        _, auc, z, pv = auc_test(ref.labels, ref.probs[:, -1], p.probs[idx, -1], ref.patient_ids)
        out["runs"][str(run)] = {"auc": round(auc, 4), "z": round(z, 3), "p_vs_reference": pv}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
