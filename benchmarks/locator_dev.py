"""Choose the lesion locator's settings on a development cohort: train one locator on fold 0's
training studies (the first 16 held out for the epoch choice) and score detection and coarse Dice
on fold 0's test studies, with a per-study line (lesion size, peak probability, centre error).

    liverphase synth dev120 --cases 120 --seed 101
    python benchmarks/locator_dev.py dev120 --epochs 60 --spacing 2 --canvas 24,48,48 [--dice-per-patch]
"""

from __future__ import annotations

import argparse

from liverphase.data.splits import patient_folds
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.coarse import lesion_found, strongest_component
from liverphase.train import locator
from liverphase.train.locator_config import LocatorConfig


def main() -> None:
    """Parse the settings, train, print the test fold's scores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--canvas", default="24,48,48")
    parser.add_argument(
        "--dice-per-patch", action="store_true", help="Dice per patch instead of over the batch"
    )
    args = parser.parse_args()
    if args.dice_per_patch:  # the variant the table compares; the locator keeps the batch Dice
        loss = locator.DiceCELoss
        locator.DiceCELoss = lambda **kw: loss(**{**kw, "batch": False})
    ds = open_dataset(args.dataset)
    ids = [c.case_id for c in ds.cases]
    patients, labels = [ds.case(c).patient_id for c in ids], [ds.case(c).label for c in ids]
    fold = patient_folds(ids, patients, labels, k=3, seed=0)[0]
    canvas = tuple(int(v) for v in args.canvas.split(","))
    config = LocatorConfig(epochs=args.epochs, lr=args.lr, spacing_mm=args.spacing, canvas=canvas)
    config.validate()
    cases = {
        c: locator.coarse_case(ds.load_study(c), ds.phases, config)
        for c in [*fold["train"], *fold["test"]]
    }
    train = [cases[c] for c in fold["train"]]
    net, _ = locator.train_locator(train[16:], train[:16], len(ds.phases), config, log=print)
    test = [cases[c] for c in fold["test"]]
    print("test", locator.evaluate_locator(net, test, config))
    for case in test:
        prob = locator.infer_probability(net, case.image, config.canvas)
        found = lesion_found(
            strongest_component(prob, config.threshold)[0], case.target, case.spacing_zyx
        )
        volume_ml = case.target.sum() * config.spacing_mm**3 / 1000
        print(
            f"{case.case_id} {case.label} {volume_ml:.2f} ml detected {int(found['detected'])} "
            f"peak {prob.max():.2f} in-lesion {prob[case.target > 0].max():.2f} "
            f"error {found['centre_error_mm']}"
        )


if __name__ == "__main__":
    main()
