"""Import time per 100 cases of each public-dataset importer, on the tests' miniature layouts.

Usage: python benchmarks/bench_import.py [--extra 16] [--repeats 3] [--out benchmarks/results/import_miniature.json]
The miniatures (tests/test_importers.py: 8×8×4 volumes in each dataset's published layout, with
its faults planted; tests/_lld_support.py for LLD-MMRI, 24×20×8) measure the importers' per-case
overhead (CSV and JSON, linking, checks, the fixes), not reading real volumes. LLD-MMRI rewrites every
volume (its geometry always changes), so it is also timed on 4 patients at a real MRI size
(`--lld-shape`, default 512×512×40 per sequence, 8 sequences): that figure is the honest one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _lld_support import make_lld  # noqa: E402
from liverphase.atomic import atomic_write_json  # noqa: E402
from liverphase.io.importers import get_importer  # noqa: E402
from test_importers import make_cirrmri, make_mct, make_plc  # noqa: E402

BUILDERS = {
    "cirrmri600": lambda root, n: make_cirrmri(root, n_extra=n),
    "plc-cect": lambda root, n: make_plc(root, n=max(1, n // 4)),
    "mct-ltdiag": lambda root, n: make_mct(root, n_extra=n),
    "lld-mmri": lambda root, n: make_lld(root)["root"].parents[1],
}


def main() -> None:
    """Build each miniature once, time its import `repeats` times, write the best per 100 cases."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lld-shape", type=int, nargs=3, default=(512, 512, 40))
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/import_miniature.json")
    )
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in BUILDERS.items():
            src = build(Path(tmp) / name, args.extra)
            best, cases = float("inf"), 0
            for k in range(args.repeats):
                start = time.perf_counter()
                summary = get_importer(name)(src, Path(tmp) / f"{name}_out{k}", progress=False)
                best = min(best, time.perf_counter() - start)
                cases = summary.cases
            results[name] = {
                "cases_imported": cases,
                "best_seconds": round(best, 3),
                "seconds_per_100_cases": round(100 * best / max(cases, 1), 2),
            }
            print(name, results[name])
        results["lld-mmri_real_size"] = _time_real_lld(Path(tmp), tuple(args.lld_shape))
        print("lld-mmri_real_size", results["lld-mmri_real_size"])
    atomic_write_json(args.out, {"miniature_volume": [8, 8, 4], "repeats": args.repeats, **results})


def _time_real_lld(tmp: Path, shape: tuple[int, int, int]) -> dict:
    """One import of 4 LLD-MMRI patients with 8 volumes of `shape` (x, y, z) each."""
    src = make_lld(tmp / "lld_real", shape=shape, count=4)["root"].parents[1]
    start = time.perf_counter()
    summary = get_importer("lld-mmri")(src, tmp / "lld_real_out", progress=False)
    seconds = time.perf_counter() - start
    return {
        "volume_xyz": list(shape),
        "cases_imported": summary.cases,
        "seconds": round(seconds, 2),
        "seconds_per_100_cases": round(100 * seconds / max(summary.cases, 1), 1),
    }


if __name__ == "__main__":
    main()
