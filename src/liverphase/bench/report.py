"""Targets judged on a bench result, and bench.md: every section as a table, targets stated plainly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from liverphase.bench.models import REFERENCE_MODEL, format_models_table

MODEL = "miff_spm"
PREDICT_LIMIT_S = 15.0
WAIT_LIMIT = 0.05
RATIO_LIMIT = 1.0
CEILING_SHARE = 0.5


def _section(result: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = result.get(name) or {}
    return {} if "error" in section else section


def _model_row(rows: Sequence[Mapping[str, Any]], model: str) -> Mapping[str, Any] | None:
    """`model`'s row at the paper's input, else at the first input profiled (a quick run's)."""
    ok = [r for r in rows if "error" not in r]
    labels = [r["input"] for r in ok]
    label = "paper" if "paper" in labels else (labels[0] if labels else None)
    return next((r for r in ok if r["model"] == model and r["input"] == label), None)


def _target(
    name: str, value: float | None, unit: str, limit: float, at_most: bool, note: str
) -> dict[str, Any]:
    met = value is not None and (value <= limit if at_most else value >= limit)
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": f"{'≤' if at_most else '≥'} {limit:g}{' ' + unit if unit else ''}",
        "limit": limit,
        "met": bool(met),
        "note": note if value is not None else "not measured (see the section's error)",
    }


def evaluate_targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The five targets with their measured values; `met` is False when unmeasured."""
    quick = bool(result.get("quick"))
    pipe = _section(result, "pipeline")
    e2e = pipe.get("timings", {}).get("end_to_end", {}).get("s")
    data = _section(result, "dataload")
    rows = _section(result, "models").get("rows", [])
    row, ref = _model_row(rows, MODEL), _model_row(rows, REFERENCE_MODEL)
    where = f"at input {row['input']!r}" if row else ""
    small = "quick run: a tiny input, not the target's; " if quick else ""
    stems = ""
    if row and ref and row["stem_stride"] != ref["stem_stride"]:
        stems = f"; stems differ ({row['stem_stride']} vs {ref['stem_stride']})"
    grid = pipe.get("grid_size")
    acc = _section(result, "accuracy")
    acc_row = (acc.get("rows") or [None])[0]
    learned = _target(
        "the demo's configuration learns (pooled CV AUC)",
        acc_row["auc"] if acc_row else None,
        "",
        float(acc.get("auc_floor", 0.85)),
        False,
        f"{small}{acc_row['model'] if acc_row else '?'}, {acc.get('cases')} "
        f"{acc.get('difficulty', 'realistic')} cases, "
        f"{acc.get('folds')} folds; also needs the CI's lower bound above "
        f"{acc.get('ci_lower_floor', 0.7):g} (CI {acc_row['auc_ci'] if acc_row else '?'})",
    )
    learned["met"] = bool(acc_row and acc_row.get("learns"))
    targets = [
        _target(
            "predict one realistic 4-phase study end to end",
            e2e,
            "s",
            PREDICT_LIMIT_S,
            True,
            f"{small}NIfTI read + predict_study (Grad-CAM on, occlusion off), grid {grid}",
        ),
        _target(
            "data wait as a share of a training step",
            data.get("wait_fraction"),
            "",
            WAIT_LIMIT,
            True,
            f"cached dataset + augmentation, {data.get('num_workers')} loader workers, batch "
            f"{data.get('batch')}, {MODEL} at {data.get('input')}",
        ),
        _target(
            f"{MODEL} forward+backward time over {REFERENCE_MODEL}'s (same stem)",
            row.get("train_ratio") if row else None,
            "×",
            RATIO_LIMIT,
            True,
            f"{small}{where}, batch {row['batch'] if row else '?'}{stems}",
        ),
        _target(
            f"{MODEL} training step as a share of the matmul ceiling",
            row.get("ceiling_fraction") if row else None,
            "",
            CEILING_SHARE,
            False,
            f"{small}{where}: {row['train_gflops_s']:.0f} GFLOP/s" if row else "",
        ),
        learned,
    ]
    sections = ("pipeline", "dataload", "models", "models", "accuracy")
    return [{**t, "section": name} for t, name in zip(targets, sections, strict=True)]


# ---- markdown ---------------------------------------------------------------------------------
def _spread(d: Mapping[str, Any] | None, fmt: str = ".2f") -> str:
    if not d:
        return "–"
    return f"{d['s']:{fmt}} ({d['min_s']:{fmt}}–{d['max_s']:{fmt}})"


def _value(v: Any, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def _error(result: Mapping[str, Any], name: str) -> list[str] | None:
    section = result.get(name)
    if section is None:
        return ["Not run."]
    if "error" in section:
        return [f"**Failed:** {section['error']}"]
    return None


def _machine(result: Mapping[str, Any]) -> list[str]:
    m = result["machine"]
    rows = [
        ("CPU", f"{m['cpu']} ({m['cpu_count']} logical CPUs)"),
        ("threads in use (torch)", m["threads"]),
        ("device", m["device"]),
        ("torch / monai / numpy", f"{m['torch']} / {m['monai']} / {m['numpy']}"),
        ("python / liverphase", f"{m['python']} / {m['liverphase']}"),
        ("date (UTC)", m["date"]),
        (
            "load average at start / end",
            f"{_value(m.get('load_average_start'))} / {_value(m.get('load_average_end'))}",
        ),
        ("bench wall time", f"{result.get('seconds', 0):.0f} s"),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _ceiling(c: Mapping[str, Any]) -> list[str]:
    lines = [
        "| device | dtype | n | GFLOP/s (min–max) | threads |",
        "|---|---|---|---|---|",
        _ceiling_row(c),
    ]
    for row in (c.get("gpu") or {}).values():
        lines.append(_ceiling_row(row) if "error" not in row else f"| cuda | {row['error']} |")
    return lines


def _ceiling_row(c: Mapping[str, Any]) -> str:
    return (
        f"| {c['device']} | {c['dtype']} | {c['n']} | {c['gflops']:.0f} "
        f"({c['min_gflops']:.0f}–{c['max_gflops']:.0f}) | {c['threads']} |"
    )


PIPELINE_ROWS = (
    ("read_nifti", "read the study (4 NIfTI phases + mask)"),
    ("read_dicom", "read the same study from DICOM (not part of end to end)"),
    ("register", "register 3 phases to PV"),
    ("preprocess", "canonicalise, crop, resample, window"),
    ("model", "model forward"),
    ("cam", "Grad-CAM per phase"),
    ("kinetics", "kinetics and report context"),
    ("report", "report.html"),
    ("predict", "predict after preprocessing (model → report)"),
    ("end_to_end", "**end to end** (read + everything predict does)"),
)


def _pipeline(p: Mapping[str, Any]) -> list[str]:
    t = p["timings"]
    lines = [
        f"Study {p['case_id']}: {len(p['phases'])} phases of {'×'.join(map(str, p['grid_size']))} "
        f"voxels at {'×'.join(f'{v:g}' for v in p['spacing_mm'])} mm ({p['preset']}); bundle: "
        f"{p['bundle']['model']} (random weights) at {'×'.join(map(str, p['bundle']['size']))}.",
        "",
        "| stage | seconds per study, median (min–max) |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_spread(t.get(key))} |" for key, label in PIPELINE_ROWS if key in t]
    lines += [
        "",
        f"Preprocessing throughput (`preprocess_dataset`, reading included, fresh cache per run, "
        f"{p['studies']} studies):",
        "",
        "| workers | studies per minute, median (min–max) | seconds per study |",
        "|---|---|---|",
    ]
    for tp in p["throughput"].values():
        lines.append(
            f"| {tp['workers']} | {tp['studies_per_minute']:.1f} ({tp['min']:.1f}–{tp['max']:.1f}) "
            f"| {_spread(tp['seconds_per_study'])} |"
        )
    return lines


def _dataload(d: Mapping[str, Any]) -> list[str]:
    lines = [
        f"{d['model']} training step (AdamW), batch {d['batch']} of "
        f"{'×'.join(map(str, d['input']))}, {d['steps_per_epoch']} steps × {d['epochs']} epochs "
        "after a warm-up epoch, fresh loader per epoch:",
        "",
        "| loader workers | wait share of a step, median (min–max) | wait s/step | compute s/step |",
        "|---|---|---|---|",
    ]
    for run in d["by_workers"].values():
        lines.append(
            f"| {run['num_workers']} | {run['wait_fraction']:.1%} ({run['min_wait_fraction']:.1%}–"
            f"{run['max_wait_fraction']:.1%}) | {_spread(run['wait_s'], '.3f')} "
            f"| {_spread(run['compute_s'], '.3f')} |"
        )
    return lines


def _accuracy(a: Mapping[str, Any]) -> list[str]:
    lines = [
        f"{a['folds']}-fold patient-level cv, {a['cases']} synthetic CT cases (preset "
        f"{a['preset']!r}, difficulty {a.get('difficulty', 'realistic')!r}, seed {a['seed']}), profile {a['profile']}, {a['epochs']} epoch(s)"
        + (" — a quick run checks the path only; these AUCs mean nothing." if a["quick"] else ".")
        + f" The demo's configuration must reach AUC ≥ {a.get('auc_floor', 0.85):g} with the 95% CI's"
        f" lower bound above {a.get('ci_lower_floor', 0.7):g}.",
        "",
        "| model | input | pooled AUC (95% CI) | accuracy | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in a["rows"]:
        lo, hi = r["auc_ci"]
        lines.append(
            f"| {r['model']} | {'×'.join(map(str, r['input']))} | {_value(r['auc'], '.3f')} "
            f"({_value(lo, '.3f')}–{_value(hi, '.3f')}) | {_value(r['acc'], '.3f')} "
            f"| {r['seconds']:.0f} |"
        )
    return lines


def _targets(targets: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| target | measured | required | status | conditions |", "|---|---|---|---|---|"]
    for t in targets:
        unit = f" {t['unit']}" if t["unit"] and t["unit"] != "×" else t["unit"]
        value = _value(t["value"], ".3g") + unit if t["value"] is not None else "–"
        status = "met" if t["met"] else "**MISSED**"
        lines.append(f"| {t['name']} | {value} | {t['target']} | {status} | {t['note']} |")
    missed = [t for t in targets if not t["met"]]
    lines.append("")
    if missed:
        lines.append(
            f"**{len(missed)} of {len(targets)} targets missed:** "
            + "; ".join(f"{t['name']} ({_value(t['value'])} against {t['target']})" for t in missed)
            + "."
        )
    else:
        lines.append(f"All {len(targets)} targets met.")
    return lines


def format_markdown(result: Mapping[str, Any]) -> str:
    """bench.md for a (possibly partial) bench result."""
    m = result["machine"]
    quick = result.get("quick")
    lines = [
        f"# liverphase bench{' (quick)' if quick else ''}: {m['date'][:10]}, {m['cpu']}, "
        f"{m['threads']} threads",
        "",
        "Times are medians after a warm-up, with min–max over the repeats; model times are "
        f"also given as ratios to {REFERENCE_MODEL} measured in the same run.",
    ]
    if quick:
        lines += [
            "",
            "**Quick run:** tiny inputs and studies check that every measurement works; the "
            "targets are judged on a full run.",
        ]
    ceiling = _section(result, "ceiling").get("gflops")
    sections = [
        ("Machine", "machine", lambda s: _machine(result)),
        ("Ceiling: dense matrix product", "ceiling", _ceiling),
        ("Models (batch 2)", "models", lambda s: _models(s, ceiling)),
        ("Pipeline", "pipeline", _pipeline),
        ("Data loading", "dataload", _dataload),
        ("Accuracy", "accuracy", _accuracy),
    ]
    for title, key, render in sections:
        lines += ["", f"## {title}", ""]
        lines += _error(result, key) or render(result[key])
    if "targets" in result:
        lines += ["", "## Targets", ""] + _targets(result["targets"])
    return "\n".join(lines) + "\n"


def _models(section: Mapping[str, Any], ceiling: float | None) -> list[str]:
    note = "% of ceiling = the training step's GFLOP/s over the matmul ceiling above. " + (
        "Each model ran in its own process (peak memory measured)."
        if section.get("isolated")
        else "Models ran in one process (no memory figures)."
    )
    return [format_models_table(section["rows"], ceiling).rstrip("\n"), "", note]
