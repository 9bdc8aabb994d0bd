"""Time and peak memory to synthesise a CT cohort and to read one 4-phase DICOM study.

Usage: python benchmarks/bench_synth_io.py [--cases 40] [--out benchmarks/results/synth_io.json]
Each measurement runs in a fresh process so its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path


def _synth(out: str, cases: int, queue: mp.Queue) -> None:
    from liverphase.synth.ct import synth_ct_cohort

    start = time.perf_counter()
    synth_ct_cohort(out, cases=cases, seed=0, dicom=1)
    queue.put(
        {
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _read(folder: str, repeats: int, queue: mp.Queue) -> None:
    from liverphase.io.dicom import read_dicom_study

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        study = read_dicom_study(folder)
        times.append(time.perf_counter() - start)
    shape = {p: list(img.GetSize()) for p, img in study.phases.items()}
    queue.put(
        {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "phases": shape,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _in_process(target, *args):  # noqa: ANN001, ANN202
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    """Run both measurements and print/save them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results/synth_io.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cohort"
        synth = _in_process(_synth, str(root), args.cases)
        study = sorted(p for p in (root / "dicom").iterdir() if p.is_dir())[0]
        read = _in_process(_read, str(study), 3)
    result = {"cases": args.cases, "synth": synth, "read_dicom": read}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| synthesise {args.cases} CT cases (default preset, +1 DICOM) | {synth['seconds']:.1f} s | peak RSS {synth['peak_rss_mb']:.0f} MB |"
    )
    print(
        f"| read one 4-phase DICOM study | {read['median_s']:.2f} s (min {read['min_s']:.2f}, max {read['max_s']:.2f}) | peak RSS {read['peak_rss_mb']:.0f} MB |"
    )


if __name__ == "__main__":
    main()
