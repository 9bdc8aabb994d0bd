"""Preprocessing benchmark on a synthetic CT cohort with recorded breathing shifts.

Measures, for the default PreprocessConfig (64×128×128 lesion crop, three CT windows):
- time per 4-phase study with and without registration (median, in-process, reading excluded);
- studies per minute through `preprocess_dataset` with 1 and 2 workers (reading included), each run
  in its own process so peak RSS of the run and of its workers can be read from getrusage;
- cache bytes per study and the time of a no-op rerun;
- registration accuracy: distance between where the transform sends the lesion centre and where
  the lesion really is in that phase (cases.csv `shift_<PHASE>_mm`), before (identity) and after.

Usage: python benchmarks/bench_preprocess.py [--cases 8] [--seed 0] [--preset default]
Prints a markdown table and writes benchmarks/results/preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from liverphase.io.nifti import open_dataset
from liverphase.preprocess import PreprocessConfig, preprocess_study
from liverphase.preprocess.register import transform_from_dict

RESULTS = Path(__file__).resolve().parent / "results" / "preprocess.json"

GENERATE = """
import sys
from liverphase.synth.ct import synth_ct_cohort
synth_ct_cohort(sys.argv[1], cases=int(sys.argv[2]), seed=int(sys.argv[3]), preset=sys.argv[4])
"""

THROUGHPUT = """
import json, resource, sys
from liverphase.preprocess import PreprocessConfig, preprocess_dataset
stats = preprocess_dataset(sys.argv[1], sys.argv[2], PreprocessConfig(), workers=int(sys.argv[3]),
                           progress=False)
again = preprocess_dataset(sys.argv[1], sys.argv[2], PreprocessConfig(), workers=int(sys.argv[3]),
                           progress=False)
mb = 1024.0  # ru_maxrss and VmHWM are in KiB on Linux
def own_peak_kib():
    # VmHWM restarts at exec; ru_maxrss keeps the peak of the process we were forked from
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({
    "cpu_seconds": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
    "built": stats["built"], "seconds": stats["seconds"], "rerun_built": again["built"],
    "rerun_seconds": again["seconds"],
    "peak_rss_mb": own_peak_kib() / mb,
    "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mb,
}))
"""


def _shift_xyz(extra: dict[str, str], phase: str) -> np.ndarray:
    # cases.csv lists "dz dy dx" (numpy order); transforms work in (x, y, z)
    return np.array([float(v) for v in extra[f"shift_{phase}_mm"].split()])[::-1]


def per_study(root: Path) -> dict:
    """Serial timings with/without registration and the registration residuals."""
    ds = open_dataset(root)
    on, off = PreprocessConfig(), PreprocessConfig(register=False)
    rows, t_on, t_off, t_read = [], [], [], []
    for rec in ds.cases:
        start = time.perf_counter()
        study = ds.load_study(rec.case_id)
        t_read.append(time.perf_counter() - start)
        out = preprocess_study(study, on)
        t_on.append(out.meta["timings"]["total"])
        t_off.append(preprocess_study(study, off).meta["timings"]["total"])
        box = out.meta["lesion_box_mm"]
        centre = (np.asarray(box["lo"]) + np.asarray(box["hi"])) / 2
        ref_dz = study.reference.GetSpacing()[2]
        for phase, reg in out.meta["registration"].items():
            truth = _shift_xyz(rec.extra, phase)
            moved = transform_from_dict(reg).TransformPoint(tuple(centre))
            rows.append(
                {
                    "case_id": rec.case_id,
                    "phase": phase,
                    "slice_mm": max(ref_dz, study.phases[phase].GetSpacing()[2]),
                    "before_mm": float(np.linalg.norm(truth)),
                    "after_mm": float(np.linalg.norm(np.subtract(moved, centre + truth))),
                    "accepted": reg["accepted"],
                    "seconds": reg["seconds"],
                }
            )
    return {
        "median_s_register": statistics.median(t_on),
        "median_s_no_register": statistics.median(t_off),
        "median_s_read": statistics.median(t_read),
        "median_s_per_phase_registration": statistics.median(r["seconds"] for r in rows),
        "residuals": rows,
    }


def throughput(root: Path, work: Path, workers: int) -> dict:
    """One preprocess_dataset run (and its no-op rerun) in a fresh process and cache."""
    cache = work / f"cache_w{workers}"
    out = subprocess.run(
        [sys.executable, "-c", THROUGHPUT, str(root), str(cache), str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    entries = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")]
    size = sum(f.stat().st_size for d in entries for f in d.iterdir())
    stats["studies_per_minute"] = 60.0 * stats["built"] / stats["seconds"]
    stats["cpu_s_per_study"] = stats["cpu_seconds"] / max(1, stats["built"])
    stats["cache_bytes_per_study"] = size / max(1, len(entries))
    return stats


def summarise(rows: list[dict]) -> dict:
    """Mean/max residual before and after, overall and for slices <= 2 mm."""

    def stats(sel: list[dict]) -> dict:
        if not sel:
            return {}
        before = np.array([r["before_mm"] for r in sel])
        after = np.array([r["after_mm"] for r in sel])
        return {
            "n": len(sel),
            "before_mean": before.mean(),
            "before_max": before.max(),
            "after_mean": after.mean(),
            "after_max": after.max(),
            "after_median": float(np.median(after)),
            "after_under_1mm": float((after < 1).mean()),
        }

    return {
        "all": stats(rows),
        "thin_slices": stats([r for r in rows if r["slice_mm"] <= 2.0]),
        "thick_slices": stats([r for r in rows if r["slice_mm"] > 2.0]),
        "rejected": sum(not r["accepted"] for r in rows),
    }


def table(res: dict) -> str:
    """The markdown summary."""
    s, acc = res["per_study"], res["accuracy"]
    w1, w2 = res["workers_1"], res["workers_2"]

    def acc_row(name: str, key: str) -> str:
        a = acc[key]
        if not a:
            return f"| {name} | – |"
        return (
            f"| {name} (n={a['n']}) | before {a['before_mean']:.2f} / {a['before_max']:.2f} → "
            f"after {a['after_mean']:.2f} / {a['after_max']:.2f} (median {a['after_median']:.2f}, "
            f"{a['after_under_1mm']:.0%} < 1 mm) |"
        )

    lines = [
        f"Preprocessing benchmark: {res['cases']} cases, preset {res['preset']!r}, "
        f"{res['cpus']} CPUs shared with other jobs (load average {res['load_start']:.1f} at start, "
        f"{res['load_end']:.1f} at end)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| time per 4-phase study, registration on (median) | {s['median_s_register']:.2f} s |",
        f"| time per 4-phase study, registration off (median) | {s['median_s_no_register']:.2f} s |",
        f"| registration per phase (median) | {s['median_s_per_phase_registration']:.2f} s |",
        f"| reading a study (4 NIfTI + mask, median) | {s['median_s_read']:.2f} s |",
        f"| studies per minute, 1 worker (incl. reading) | {w1['studies_per_minute']:.1f} |",
        f"| studies per minute, 2 workers | {w2['studies_per_minute']:.1f} |",
        f"| CPU time per study, 1 / 2 workers (incl. process start) | "
        f"{w1['cpu_s_per_study']:.1f} / {w2['cpu_s_per_study']:.1f} s |",
        f"| peak RSS, 1-worker run | {w1['peak_rss_mb']:.0f} MB |",
        f"| peak RSS, 2-worker run: parent / largest worker | {w2['peak_rss_mb']:.0f} / "
        f"{w2['peak_rss_workers_mb']:.0f} MB |",
        f"| cache bytes per study | {w1['cache_bytes_per_study'] / 1e6:.2f} MB |",
        f"| no-op rerun (all reused) | {w1['rerun_seconds']:.2f} s, built {w1['rerun_built']} |",
        acc_row("lesion-centre misalignment, mm mean / max, all phases", "all"),
        acc_row("… slices ≤ 2 mm", "thin_slices"),
        acc_row("… slices > 2 mm", "thick_slices"),
        f"| registrations kept at identity by the guard | {acc['rejected']} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and save JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workdir", type=Path, default=None, help="kept when given")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "cohort"
    res: dict = {
        "cases": args.cases,
        "seed": args.seed,
        "preset": args.preset,
        "cpus": os.cpu_count(),
        "load_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "config": PreprocessConfig().to_dict(),
    }
    try:
        if not (root / "cases.csv").is_file():
            # a separate process, so generation memory does not count in the peaks below
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    GENERATE,
                    str(root),
                    str(args.cases),
                    str(args.seed),
                    args.preset,
                ],
                check=True,
            )
        # throughput first: its processes are forked from this one, and a worker's ru_maxrss
        # starts from the size of the process it was forked from
        res["workers_1"] = throughput(root, work, 1)
        res["workers_2"] = throughput(root, work, 2)
        res["per_study"] = per_study(root)
        res["accuracy"] = summarise(res["per_study"]["residuals"])
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    res["load_end"] = os.getloadavg()[0]
    text = table(res)
    print(text)
    res["table"] = text
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    return res


if __name__ == "__main__":
    main()
