"""What the report needs beyond prediction.json: arrays on the analysis grid, the bundle's identity
and the model's cross-validated performance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverphase.atomic import WEIGHTS_SHA256, file_sha256
from liverphase.io.phi import pseudonym
from liverphase.io.study import Study

POOR_NCC = 0.5
"""Below this normalised cross-correlation after registration a phase is flagged as poorly aligned."""


@dataclass
class ReportContext:
    """Arrays on the analysis grid (canonical LPS, axial slices along axis 1 of `values`)."""

    phases: list[str]
    values: np.ndarray  # (P, D, H, W) HU or signal, registered
    mask: np.ndarray  # (D, H, W) bool: the lesion used for kinetics
    cams: np.ndarray | None  # (P, D, H, W) in [0, 1]
    spacing_zyx: tuple[float, float, float]
    kinetics: dict[str, Any] | None
    patterns: dict[str, Any] | None
    raw_kinetics: dict[str, Any] | None
    modality: str
    cam_shared: bool = False
    # prediction.json's `staging` of a whole-organ model (stage, attention over slices)
    staging: dict[str, Any] | None = None


def cv_metrics(bundle_dir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The model's AUC with its CI: a cv RUN's pooled metrics.json, else the bundle's own metrics.

    A `cv` bundle lives in RUN/fold_k/bundle (RUN/metrics.json two levels up); `train` writes
    RUN/bundle (one level up).
    """
    for run in (bundle_dir.parent.parent, bundle_dir.parent):
        path = run / "metrics.json"
        if not path.is_file():
            continue
        try:
            pooled = json.loads(path.read_text()).get("pooled", {})
        except (OSError, ValueError, AttributeError):
            continue
        ordinal = pooled.get("ordinal") if isinstance(pooled, dict) else None
        if isinstance(ordinal, dict) and ordinal.get("acc") is not None:
            return {  # ordered stages: accuracy and κ say more than a macro AUC
                "kind": "cross-validation, pooled out-of-fold",
                "acc": ordinal.get("acc"),
                "acc_ci": ordinal.get("acc_ci"),
                "qwk": ordinal.get("qwk"),
                "qwk_ci": ordinal.get("qwk_ci"),
                "auc": pooled.get("auc"),
                "auc_ci": pooled.get("auc_ci"),
                "n_cases": pooled.get("n_cases"),
                "source": str(path),
            }
        if isinstance(pooled, dict) and pooled.get("auc") is not None:
            return {
                "kind": "cross-validation, pooled out-of-fold",
                "auc": pooled.get("auc"),
                "auc_ci": pooled.get("auc_ci"),
                "ci_level": pooled.get("ci_level"),
                "n_cases": pooled.get("n_cases"),
                "source": str(path),
            }
    own = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    for key, kind in (("auc", "bundle metrics"), ("val_auc", "validation split, best epoch")):
        if own.get(key) is not None:
            split = meta.get("split") if isinstance(meta.get("split"), dict) else {}
            held_out = split.get("validation") if key == "val_auc" else split.get("test")
            return {
                "kind": kind,
                "auc": own[key],
                "auc_ci": own.get(f"{key}_ci"),
                "n_cases": len(held_out) if isinstance(held_out, list) and held_out else None,
                "source": "bundle.json",
            }
    return None


def shown_path(path: Path) -> str:
    """A path as the user would type it where they ran: relative to the working folder when it lies
    inside (a report shared from a run then names no machine folder), else absolute."""
    full = Path(path).resolve()
    try:
        return str(full.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(full)


def bundle_identity(bundle_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Which bundle made the prediction: path, model, options, versions and a weights digest."""
    return {
        "path": shown_path(bundle_dir),
        "model": meta.get("model"),
        "model_options": meta.get("model_options"),
        "class_names": meta.get("class_names"),
        "phases": meta.get("phases"),
        "trained_with_liverphase": meta.get("liverphase_version"),
        "created": meta.get("created"),
        # the loader verified the recorded digest; a bundle written before it is hashed here
        "weights_sha256": (
            meta.get(WEIGHTS_SHA256) or file_sha256(bundle_dir / "model.safetensors")
        )[:16],
    }


def registration_warnings(registration: dict[str, dict[str, Any]]) -> list[str]:
    """One warning per phase whose accepted registration still correlates poorly (NCC < POOR_NCC)."""
    out = []
    for p, r in registration.items():
        ncc = r.get("ncc_after")
        if r.get("accepted") and ncc is not None and ncc < POOR_NCC:
            out.append(f"{p}: poor registration (NCC {ncc:.2f} < {POOR_NCC} after alignment)")
    return out


def study_source(study: Study, keep_phi: bool = False) -> dict[str, Any]:
    """Where a study came from, for prediction.json: a DICOM study's pseudonym (its UIDs too with
    `keep_phi`: UIDs are Basic Profile identifiers), the dataset, or in-memory."""
    meta = study.metadata
    if meta.get("source") == "dicom":
        uid = meta.get("study_instance_uid")
        out: dict[str, Any] = {"kind": "dicom", "study_pseudonym": pseudonym(uid) if uid else None}
        if keep_phi:
            out["study_instance_uid"] = uid
            out["series_instance_uids"] = meta.get("series_instance_uids")
        return out
    if meta.get("dataset"):
        return {"kind": "nifti", "dataset": meta["dataset"]}
    return {"kind": "in-memory"}


def study_path(study: Study, fallback: Any = None) -> str | None:
    """The path an error about this study should name: `fallback` when it is a path, else the
    study's DICOM folder or dataset."""
    if fallback is not None and isinstance(fallback, str | Path):
        return str(fallback)
    meta = study.metadata
    return meta.get("dicom_folder") or meta.get("dataset") or None
