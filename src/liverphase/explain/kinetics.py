"""Named enhancement patterns (arterial hyper-enhancement, washout, capsule, ...) and a kinetics plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PatternThresholds:
    """Thresholds in HU (CT) for the named patterns; each is reported beside its verdict."""

    aphe_over_liver: float = 10.0  # lesion core brighter than liver in the arterial phase
    aphe_over_native: float = 20.0  # and enhancing over its non-contrast value
    rim_over_core: float = 15.0  # rim arterial enhancement: rim brighter than core
    washout_under_liver: float = -10.0  # lesion darker than liver in PV or DL
    capsule_rim_over_core: float = 10.0  # delayed enhancing rim
    progressive_gain: float = 15.0  # core gains from ART to DL


def _get(per_phase: dict[str, dict[str, float]], phase: str, key: str) -> float:
    return float(per_phase.get(phase, {}).get(key, float("nan")))


def named_patterns(
    kinetics: dict[str, Any], thresholds: PatternThresholds | None = None
) -> dict[str, Any]:
    """Decide each named pattern from a kinetics dict (see preprocess.kinetics.measure_kinetics).

    A pattern whose phases are missing is reported as None (cannot be judged), not False.
    """
    t = thresholds or PatternThresholds()
    pp = kinetics["per_phase"]
    art, nc = "ART", "NC"
    late = [p for p in ("PV", "DL") if p in pp]
    out: dict[str, Any] = {}

    def decide(*values: float) -> bool | None:
        return None if any(np.isnan(v) for v in values) else all(v > 0 for v in values)

    core_art_vs_liver = _get(pp, art, "core") - _get(pp, art, "liver")
    core_art_vs_nc = _get(pp, art, "core") - _get(pp, nc, "core") if nc in pp else 1e9
    out["arterial_hyperenhancement"] = decide(
        core_art_vs_liver - t.aphe_over_liver, core_art_vs_nc - t.aphe_over_native
    )
    out["rim_arterial_enhancement"] = decide(_get(pp, art, "rim_minus_core") - t.rim_over_core)
    washout = [_get(pp, p, "lesion_minus_liver") for p in late]
    out["washout"] = None if not washout else bool(np.nanmin(washout) <= t.washout_under_liver)
    out["capsule"] = (
        decide(_get(pp, "DL" if "DL" in pp else "PV", "rim_minus_core") - t.capsule_rim_over_core)
        if late
        else None
    )
    last = "DL" if "DL" in pp else ("PV" if "PV" in pp else None)
    out["progressive_delayed_enhancement"] = (
        decide(_get(pp, last, "core") - _get(pp, art, "core") - t.progressive_gain)
        if last
        else None
    )
    out["thresholds_hu"] = asdict(t)
    return out


def plot_kinetics(
    kinetics: dict[str, Any],
    path: str | Path,
    title: str = "Enhancement kinetics",
    unit: str = "HU",
) -> Path:
    """Line plot of lesion core, rim and liver mean value per phase, saved atomically as PNG.

    `unit` labels the y axis: HU for CT, the signal's own unit for MRI (which has no HU).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liverphase.atomic import atomic_path

    phases = kinetics["phases"]
    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    styles = {"core": ("tab:red", "-"), "rim": ("tab:orange", "--"), "liver": ("tab:blue", "-")}
    for key, (colour, ls) in styles.items():
        ax.plot(
            phases,
            [kinetics["per_phase"][p][key] for p in phases],
            ls,
            color=colour,
            marker="o",
            label=f"lesion {key}" if key != "liver" else "liver",
        )
    ax.set_ylabel(f"mean {unit}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
