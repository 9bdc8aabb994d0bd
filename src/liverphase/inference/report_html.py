"""One self-contained report.html per prediction: inline CSS, images as base64 PNG, no script, no URL.

Shows: the research-use notice, the predicted class and probabilities beside the model's AUC with
its CI, phase importance, one axial slice through the lesion centre in every phase (lesion contour;
Grad-CAM overlay below), the kinetics plot and table, the named patterns with their thresholds,
lesion figures, warnings, and the model/bundle identity and timings. Patient name and birth date
appear only when prediction["patient"] is present (predict's keep_phi).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import atomic_write_text
from liverphase.inference.context import ReportContext

NOTICE = "For research use only. Not for clinical use."
CT_DISPLAY = (40.0, 400.0)  # level, width (HU) of the pictures

_CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid #ccc}
.notice{background:#b00020;color:#fff;font-weight:bold;font-size:18px;padding:10px 14px;
border-radius:4px;margin:8px 0 14px;text-align:center}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left}th{background:#f3f3f3}.bar{background:#e8e8e8;width:220px;height:12px}
.fill{background:#3366cc;height:12px}.neg{background:#cc6633}.warn{color:#8a4b00}
.muted{color:#666;font-size:12px}.label{font-size:20px;font-weight:bold}img{max-width:100%}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return _data_uri(buf.getvalue())


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _display_range(values: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "ct":
        level, width = CT_DISPLAY
        return level - width / 2, level + width / 2
    lo, hi = np.percentile(values, (1, 99))
    return float(lo), float(max(hi, lo + 1e-6))


def _slices_figure(ctx: ReportContext) -> str:
    """P columns: the axial slice through the lesion centre; row 2: CAM overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liverphase.inference.analysis import centre_slice

    z = centre_slice(ctx.mask, ctx.values.shape[1] // 2)
    rows = 2 if ctx.cams is not None else 1
    n = len(ctx.phases)
    sz, sy, sx = ctx.spacing_zyx
    h, w = ctx.values.shape[2:]
    extent = (0, w * sx, h * sy, 0)  # mm, so pixels keep their physical aspect
    fig, axes = plt.subplots(rows, n, figsize=(2.6 * n, 2.7 * rows), squeeze=False)
    for i, phase in enumerate(ctx.phases):
        img = ctx.values[i, z]
        vmin, vmax = _display_range(ctx.values[i], ctx.modality)
        for r in range(rows):
            ax = axes[r][i]
            ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=extent)
            if r == 1 and ctx.cams is not None:
                # weak evidence left transparent so the anatomy under the map stays readable
                heat = np.ma.masked_less(ctx.cams[i, z], 0.2)
                ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent)
            if ctx.mask[z].any():
                ys, xs = (np.arange(h) + 0.5) * sy, (np.arange(w) + 0.5) * sx
                ax.contour(
                    xs, ys, ctx.mask[z].astype(float), levels=[0.5], colors="lime", linewidths=1
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(phase if r == 0 else f"{phase} Grad-CAM", fontsize=9)
    what = "liver" if ctx.staging is not None else "lesion"
    fig.suptitle(
        f"axial slice {z} of the {what} region (green: {what}; image left = patient right)",
        fontsize=9,
    )
    fig.tight_layout()
    return _png(fig)


def _attention_figure(attention: dict[str, list[float]]) -> str:
    """The model's attention over the crop's slices, one line per sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 2.4))
    for seq, weights in attention.items():
        ax.plot(range(len(weights)), weights, marker=".", label=seq)
    ax.set_xlabel("slice of the liver crop")
    ax.set_ylabel("attention")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _staging(pred: dict[str, Any]) -> str:
    """Stage, expected stage and the attention over slices of a whole-organ model."""
    st = pred["staging"]
    names = st["classes"]
    rows = [
        ["stage (most probable)", st["stage"]],
        [
            "expected stage (probability-weighted)",
            f"{st['expected_stage_index']:.2f} on "
            + " < ".join(f"{i} {n}" for i, n in enumerate(names)),
        ],
    ]
    out = _table(None, rows)
    if st.get("slice_attention"):
        out += (
            f"<img alt='attention over slices' src='{_attention_figure(st['slice_attention'])}'>"
            f"<p class='muted'>{_e(st.get('slice_attention_note', ''))}; the stage is the "
            "attention-weighted mean of the slices' evidence.</p>"
        )
    return out


def _kinetics_figure(raw: dict[str, Any], unit: str) -> str:
    from liverphase.explain.kinetics import plot_kinetics

    with tempfile.TemporaryDirectory() as tmp:
        path = plot_kinetics(raw, Path(tmp) / "kinetics.png", unit=unit)
        return _data_uri(path.read_bytes())


def _bar(value: float | None, scale: float = 1.0) -> str:
    if value is None:
        return "<span class='muted'>n/a</span>"
    frac = min(abs(value) / scale, 1.0) * 100 if scale > 0 else 0
    cls = "fill" if value >= 0 else "fill neg"
    return f"<div class='bar'><div class='{cls}' style='width:{frac:.1f}%'></div></div>"


# fewer held-out studies than this and a reported AUC is noise, not a measurement
SMALL_EVALUATION = 20


def _probabilities(pred: dict[str, Any]) -> str:
    perf = pred.get("model_performance")
    if perf and perf.get("acc") is not None and perf.get("qwk") is not None:
        ci = perf.get("acc_ci")
        ci_text = f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
        auc = (
            f"Model accuracy {perf['acc']:.3f}{ci_text}, quadratic-weighted κ {perf['qwk']:.3f}"
            f" — {perf.get('kind', '')}, {perf.get('n_cases')} scans"
        )
    elif perf and perf.get("auc") is not None:
        ci = perf.get("auc_ci")
        level = perf.get("ci_level") or 0.95
        ci_text = f" ({level:.0%} CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else " (no CI available)"
        auc = f"Model AUC {perf['auc']:.3f}{ci_text} — {_e(perf.get('kind', ''))}"
        if perf.get("n_cases"):
            auc += f", {perf['n_cases']} cases"
            if perf["n_cases"] < SMALL_EVALUATION:
                # an AUC on a handful of studies says nothing about the model: say so beside it
                auc += " (too few to measure performance)"
    else:
        auc = "Model AUC: not available (no cross-validation metrics found beside the bundle)"
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td>{p:.4f}</td><td>{_bar(p)}</td></tr>"
        for c, p in pred["probabilities"].items()
    )
    return (
        f"<p>Predicted class: <span class='label'>{_e(pred['label'])}</span></p>"
        f"<table><tr><th>class</th><th>probability</th><th></th></tr>{rows}</table>"
        f"<p>{_e(auc)}</p>"
    )


def _importance(pred: dict[str, Any]) -> str:
    imp = pred.get("phase_importance")
    if not imp:
        return "<p class='muted'>not computed</p>"
    drops = [v for v in imp["drop"].values() if v is not None]
    scale = max([abs(v) for v in drops] + [1e-6])
    rows = "".join(
        f"<tr><td>{_e(p)}</td><td>{'n/a' if v is None else f'{v:+.4f}'}</td><td>{_bar(v, scale)}</td></tr>"
        for p, v in imp["drop"].items()
    )
    return (
        f"<table><tr><th>phase</th><th>drop in p({_e(pred['label'])})</th><th></th></tr>{rows}</table>"
        f"<p class='muted'>{_e(imp['method'])}; p with all phases {imp['probability']:.4f}.</p>"
    )


def _table(head: list[str] | None, rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head) if head else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{_e('n/a' if v is None else v)}</td>" for v in r) + "</tr>"
        for r in rows
    )
    return f"<table>{f'<tr>{th}</tr>' if th else ''}{body}</table>"


def _kinetics(pred: dict[str, Any], ctx: ReportContext) -> str:
    kin = pred.get("kinetics")
    if not kin:
        return "<p class='muted'>no kinetics (no lesion region)</p>"
    unit = "hu" if ctx.modality == "ct" else "signal"
    axis_unit = "HU" if ctx.modality == "ct" else "signal (a.u.)"  # MRI signal has no HU
    rows = [
        [
            p,
            row[f"lesion_{unit}"],
            row[f"liver_{unit}"],
            row[f"lesion_minus_liver_{unit}"],
            row["relative_enhancement"],
        ]
        for p, row in kin.items()
    ]
    out = (
        f"<img alt='enhancement kinetics' src='{_kinetics_figure(ctx.raw_kinetics, axis_unit)}'>"
        if ctx.raw_kinetics
        else ""
    )
    out += _table(
        ["phase", f"lesion ({unit})", f"liver ({unit})", "lesion − liver", "relative enhancement"],
        rows,
    )
    patterns = pred.get("patterns")
    if patterns:
        verdict = {True: "yes", False: "no", None: "cannot be judged (phase missing)"}
        prow = [[k.replace("_", " "), verdict[v]] for k, v in patterns["verdicts"].items()]
        thr = ", ".join(
            f"{k.replace('_', ' ')} {v:g}" for k, v in patterns["thresholds_hu"].items()
        )
        out += "<h3>Named patterns</h3>" + _table(["pattern", "present"], prow)
        out += f"<p class='muted'>Thresholds (HU): {_e(thr)}</p>"
    return out


def render_report(prediction: dict[str, Any], ctx: ReportContext, phases: list[str]) -> str:
    """The report as one HTML string (no external resource of any kind)."""
    p = prediction
    patient = p.get("patient")
    who = (
        f"<p>Patient: {_e(patient.get('name'))}, born {_e(patient.get('birth_date'))}</p>"
        if patient
        else ""
    )
    organ = p.get("staging") is not None
    lesion = p["organ"] if organ else p["lesion"]
    lrows = [
        ["source", lesion.get("source")],
        ["volume (ml)", lesion.get("volume_ml")],
        ["centroid (mm, LPS x y z)", lesion.get("centroid_mm")],
        ["box (mm, LPS x0 y0 z0 x1 y1 z1)", lesion.get("bbox_mm")],
    ]
    if "segmented_volume_ml" in lesion:
        lrows.append(["model-segmented volume (ml)", lesion["segmented_volume_ml"]])
    warnings = (
        "".join(f"<li class='warn'>{_e(w)}</li>" for w in p.get("warnings", [])) or "<li>none</li>"
    )
    cam = p.get("cam")
    cam_note = ""
    if cam:
        cam_note = f"Grad-CAM: {cam['method']}, layer {cam['layer']}."
        if cam["shared_across_phases"]:
            cam_note += (
                " This model stacks the phases as channels: one map is shared by all phases."
            )
    ident = p["bundle"]
    irows = [[k, v] for k, v in ident.items()] + [["liverphase version", p["liverphase_version"]]]
    # writing this page is still running: its own time and the total are in prediction.json
    trows = [
        [k, f"{v:.2f} s"] for k, v in p.get("timings", {}).items() if k not in ("report", "total")
    ]
    images = _slices_figure(ctx)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>liverphase report {_e(p["case_id"])}</title>
<style>{_CSS}</style></head><body>
<div class="notice">{NOTICE}</div>
<h1>liverphase report — case {_e(p["case_id"])}</h1>{who}
<p class="muted">model {_e(p["model"])}; phases used {_e(", ".join(p["phases_present"]))} of {_e(", ".join(phases))}; reference {_e(p["reference_phase"])}</p>
<h2>{"Stage" if organ else "Prediction"}</h2>{_probabilities(p)}
<h2>Warnings</h2><ul>{warnings}</ul>
{_staging(p) if organ else ""}
<h2>{"Liver (whole-organ input)" if organ else "Lesion"}</h2>{_table(None, lrows)}
<h2>Images through the {"liver" if organ else "lesion"} centre</h2><img alt="phases with {"liver" if organ else "lesion"} contour and Grad-CAM" src="{images}">
<p class="muted">{_e(cam_note)}</p>
<h2>Phase importance</h2>{_importance(p)}
{"" if organ else f"<h2>Enhancement kinetics</h2>{_kinetics(p, ctx)}"}
<h2>Model and bundle</h2>{_table(None, irows)}
<h2>Timings</h2>{_table(["step", "time"], trows)}
<div class="notice">{NOTICE}</div>
</body></html>
"""


def write_report(
    path: str | Path, prediction: dict[str, Any], ctx: ReportContext, phases: list[str]
) -> Path:
    """Write report.html atomically; return its path."""
    atomic_write_text(path, render_report(prediction, ctx, phases))
    return Path(path)
