"""A bundle and a study → class probabilities, lesion mask, CAMs, kinetics and a report in OUT.

`Predictor(bundle_dir).predict_study(study, out_dir, ...)` writes OUT as DESIGN.md's contract says:
`prediction.json`, `lesion_mask.nii.gz` (segmenting models; plus `lesion_seg.dcm`, a DICOM SEG, for
DICOM studies), `cam_<phase>.nii.gz` and `report.html`. Every image output lies on the study's
reference phase grid exactly as stored (size, spacing, origin, direction).

Preprocessing is the bundle's own config; only where the crop comes from is decided here. The
lesion is located by, in this order: the `mask` argument, the `bbox` argument, the study's own mask
or bbox (a dataset case), else the bundle's lesion locator (`locator/`, trained by `cv --locate
auto`: its strongest component over the whole scan is used as the lesion mask, written as
`locator_mask.nii.gz`), else — for a segmenting model — a coarse pass of the model over the whole
scan whose largest predicted component gives the box. The crop is then the lesion box (enlarged by
the mean jitter scale when the bundle trained on jittered boxes, so the crop matches what the model
saw on average) plus the bundle's margin. Phases go through `lesion.snap` first (canonical
orientation, geometry rounded far below a voxel) so DICOM, NIfTI and flipped storage of one study
give identical inputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

import liverphase
from liverphase.atomic import staged_files
from liverphase.data.forward import predict_batch, study_batch
from liverphase.errors import BundleError, ConfigError, DatasetError, LiverphaseError
from liverphase.explain.cam import CamResult, CamUnavailable, PhaseGradCAM
from liverphase.explain.occlusion import phase_importance
from liverphase.inference import analysis, lesion
from liverphase.inference.context import (
    bundle_identity,
    cv_metrics,
    registration_warnings,
    study_path,
    study_source,
)
from liverphase.inference.locate import PHASE_BOXES, locate
from liverphase.io.outputs import (
    find_phi,
    image_on_grid,
    phi_strings,
    scrub,
    write_json,
    write_label_map,
    write_unit_map,
)
from liverphase.io.phi import SEG_BLANKED, check_phi_options
from liverphase.io.study import Study
from liverphase.models.registry import accepts_phase_mask
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import PreprocessedStudy, map_to_reference, preprocess_study
from liverphase.preprocess.roi import CropGrid, lesion_mask_on_reference
from liverphase.train.bundle import load_bundle
from liverphase.train.locator import FOLDER as LOCATOR_FOLDER
from liverphase.train.locator import Locator

PREDICTION = "prediction.json"
LOCATOR_SOURCE = "locator (whole scan)"


def bundle_config(meta: dict[str, Any], bundle_dir: Path) -> PreprocessConfig:
    """The bundle's preprocessing config (`preprocessing`, or `preprocess` in older bundles)."""
    data = meta.get("preprocessing") or meta.get("preprocess")
    where = bundle_dir / "bundle.json"
    if not isinstance(data, dict):
        raise BundleError("has no preprocessing config: predict cannot reproduce the input", where)
    try:
        return PreprocessConfig.from_dict(data, source=str(where))
    except ConfigError as exc:
        raise BundleError(f"invalid preprocessing config: {exc.problem}", where) from None


class Predictor:
    """A loaded bundle ready to predict studies (build once, predict many)."""

    def __init__(self, bundle_dir: str | Path, device: str | torch.device | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.device = torch.device(device or "cpu")
        self.model, self.meta = load_bundle(self.bundle_dir, self.device)
        self.model_name: str = self.meta["model"]
        self.phases: list[str] = list(self.meta["phases"])
        self.class_names: list[str] = list(self.meta["class_names"])
        ref = self.meta.get("reference_phase")
        self.reference_phase = ref if ref in self.phases else self._middle(self.phases)
        self.config = bundle_config(self.meta, self.bundle_dir)
        if self.config.n_channels != self.model.in_channels:
            raise BundleError(
                f"preprocessing gives {self.config.n_channels} channel(s) per phase but the model "
                f"takes {self.model.in_channels}",
                self.bundle_dir / "bundle.json",
            )
        if getattr(self.model, "reads_roi", False) and not self.config.roi_channel:
            raise BundleError(
                "the model reads an ROI channel but the preprocessing has no roi_channel",
                self.bundle_dir / "bundle.json",
            )
        self.segments = bool(getattr(self.model, "segments", False))
        self.organ = self.config.roi == "organ"
        self.accepts_phase_mask = accepts_phase_mask(self.model)
        self.cv = cv_metrics(self.bundle_dir, self.meta)
        self.identity = bundle_identity(self.bundle_dir, self.meta)
        self._cam: PhaseGradCAM | None = None
        # a lesion locator trained beside the model (cv --locate auto) finds unmarked lesions
        found = self.bundle_dir / LOCATOR_FOLDER
        self.locator = Locator(found, self.device) if found.is_dir() else None
        # the flips the trainer averaged for its test predictions: predict scores studies alike
        training = self.meta.get("training") or {}
        self.tta_flip_axes = tuple(int(a) for a in training.get("tta_flip_axes", ()))

    @staticmethod
    def _middle(names: list[str]) -> str:
        return "PV" if "PV" in names else names[len(names) // 2]

    def predict_path(self, path: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
        """Predict a DICOM folder, a dataset case or a whole dataset (see `inference.run`)."""
        from liverphase.inference.run import predict_path

        return predict_path(self, path, out, **options)

    # ------------------------------------------------------------------ the pipeline
    def predict_study(self, study: Study, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        """Predict one study and write OUT (options: see `_predict_into`); return prediction.json's
        dict. Outputs are written in a hidden folder inside OUT and moved in with prediction.json
        last, so a failed run leaves no CAM or mask without its prediction.json."""
        with staged_files(out_dir, last=[PREDICTION]) as stage:
            return self._predict_into(study, stage, **options)

    def _predict_into(
        self,
        study: Study,
        out_dir: str | Path,
        mask: str | Path | sitk.Image | None = None,
        bbox: tuple[float, ...] | list[float] | None = None,
        bbox_units: str = "mm",
        keep_phi: bool = False,
        anonymize: bool = False,
        cam: bool = True,
        occlusion: bool = True,
        report: bool = True,
        read_seconds: float = 0.0,
    ) -> dict[str, Any]:
        """Predict one study into `out_dir` (see the module docstring)."""
        start = time.perf_counter()
        check_phi_options(keep_phi, anonymize)
        out = Path(out_dir)
        timings = {"read": round(read_seconds, 4), "register": 0.0, "preprocess": 0.0}
        warnings: list[str] = []
        present, ref = self._check_phases(study, warnings)
        reference = study.phases[ref]
        canon = {p: lesion.snap(study.phases[p]) for p in dict.fromkeys([*present, ref])}

        tick = time.perf_counter()
        finds = self.segments or self.config.roi_source == "image" or self.locator is not None
        user_mask, box, source = locate(
            study, reference, mask, bbox, bbox_units, warnings, finds, self.organ, self.model_name
        )
        located = None
        if box is None and self.locator is not None:  # the bundle's whole-scan lesion locator
            located = self.locator.find({p: study.phases[p] for p in present}, reference)
            user_mask, source = located.mask, LOCATOR_SOURCE
            box = lesion.canonical_box(user_mask)
        if self.config.roi_channel and user_mask is None:
            raise LiverphaseError(
                f"model {self.model_name!r} reads the lesion through its mask (roi_channel): "
                f"give a lesion mask, not {source or 'no location'}",
                study_path(study),
            )
        if box is None:  # a segmenting model finds the lesion itself
            box = self._coarse_box(study, canon, present, ref, timings)
        timings["preprocess"] += time.perf_counter() - tick
        own = (
            {
                p: lesion.canonical_box(lesion.box_mask(study.phases[p], b))
                for p, b in study.phase_boxes.items()
                if p in present
            }
            if source == PHASE_BOXES
            else {}
        )
        pre = self._preprocess(study.case_id, canon, present, ref, box, timings, own)
        warnings += pre.meta["warnings"] + registration_warnings(pre.meta["registration"])

        tick = time.perf_counter()
        roi = None
        if self.config.roi_channel:  # the mask was demanded above
            grid = CropGrid.from_dict(pre.meta["crop"])
            roi = analysis.mask_on_grid(lesion.snap(user_mask), grid)
        x, kwargs = self._input(pre, present, roi)
        found = predict_batch(self.model, {"image": x, **kwargs}, self.tta_flip_axes, self.device)
        probs, seg_prob = found.probs[0], None if found.lesion is None else found.lesion[0]
        pred = int(np.argmax(probs))
        staging = self._staging(x, kwargs, probs, pre.meta) if self.organ else None
        timings["model"] = time.perf_counter() - tick

        files: dict[str, Path] = {}
        if located is not None:  # where the crop came from, for the reader to check
            files["locator_mask"] = write_label_map(located.mask, out / "locator_mask.nii.gz")
        pred_mask = None
        if seg_prob is not None:
            pred_mask = image_on_grid(
                lesion_mask_on_reference(seg_prob, pre.meta["crop"], reference), reference
            )
            if not sitk.GetArrayViewFromImage(pred_mask).any():
                warnings.append("the model segmented no lesion voxel in the crop")
            files["lesion_mask"] = write_label_map(pred_mask, out / "lesion_mask.nii.gz")

        importance = None
        if occlusion:
            tick = time.perf_counter()
            flags = [p in present for p in self.phases]
            importance = phase_importance(self.model, x, self.phases, pred, flags, kwargs)
            timings["occlusion"] = time.perf_counter() - tick

        cam_result: CamResult | None = None
        if cam:
            tick = time.perf_counter()
            try:
                cam_result = self._cam_engine()(x, pred, kwargs)
            except CamUnavailable:
                warnings.append(
                    "no Grad-CAM: this model's class score does not flow through its layers (it "
                    "reads the class from the lesion regions of its own mask); phase importance "
                    "and the kinetics explain it"
                )
        if cam_result is not None:
            for i, p in enumerate(self.phases):
                if p in present:
                    img = map_to_reference(cam_result.maps[i], pre.meta, reference)
                    files[f"cam_{p}"] = write_unit_map(img, out / f"cam_{p}.nii.gz")
            empty = [self.phases[i] for i in cam_result.empty if self.phases[i] in present]
            if empty:
                warnings.append(f"Grad-CAM is empty (flat) for phase(s) {empty}")
            timings["cam"] = time.perf_counter() - tick

        tick = time.perf_counter()
        cams = None
        if cam_result is not None:
            cams = {p: cam_result.maps[i] for i, p in enumerate(self.phases) if p in present}
        ctx = analysis.report_context(
            canon, present, ref, pre.meta, self.config, user_mask, seg_prob, cams, warnings
        )
        ctx.staging = staging
        ctx.cam_shared = bool(cam_result and cam_result.shared)
        box = pre.meta["lesion_box_mm"]
        lesion_info = lesion.lesion_info(
            user_mask, pred_mask, (box["lo"], box["hi"], pre.meta["crop"]["direction"]), source
        )
        timings["kinetics"] = time.perf_counter() - tick

        phi = study.metadata.get("phi") if isinstance(study.metadata.get("phi"), dict) else {}
        prediction: dict[str, Any] = {
            "case_id": study.case_id,
            "label": self.class_names[pred],
            "probabilities": {
                c: round(float(v), 6) for c, v in zip(self.class_names, probs, strict=True)
            },
            "model": self.model_name,
            "phases": self.phases,
            "phases_present": present,
            "reference_phase": ref,
            # a whole-organ model (staging) reads the liver, not a lesion: no lesion, no kinetics
            "lesion": None if self.organ else lesion_info,
            **({"organ": lesion_info, "staging": staging} if self.organ else {}),
            "kinetics": ctx.kinetics,
            "patterns": ctx.patterns,
            "phase_importance": importance,
            "cam": cam_result.info(self.phases) if cam_result else None,
            "model_performance": self.cv,
            "warnings": list(dict.fromkeys(warnings)),
            "source": study_source(study, keep_phi),
            "registration": pre.meta["registration"],
            "crop": {
                "roi_source": source,
                **({"locator": located.info()} if located is not None else {}),
                "scale_mm": pre.meta["scale_mm"],
                "box_mm": pre.meta["crop"],
            },
            "liverphase_version": liverphase.__version__,
            "bundle": self.identity,
            "research_use_only": "For research use only. Not for clinical use.",
        }
        if keep_phi:
            prediction["patient"] = {
                "name": phi.get("PatientName"),
                "birth_date": phi.get("PatientBirthDate"),
                "patient_id": study.patient_id,
            }
        if pred_mask is not None and study.metadata.get("source") == "dicom":
            from liverphase.inference.dicom_seg import write_dicom_seg

            files["dicom_seg"] = write_dicom_seg(
                pred_mask, study, ref, out / "lesion_seg.dcm", self.model_name, keep_phi, anonymize
            )
        strings = [] if keep_phi else phi_strings(phi)
        # the SEG keeps its study's identity unless anonymized (io.phi): only its blanks are checked
        seg_strings = strings if anonymize else phi_strings({k: phi.get(k) for k in SEG_BLANKED})
        if report:
            tick = time.perf_counter()
            from liverphase.inference.report_html import write_report

            timings["report"] = 0.0
            prediction["timings"] = _rounded(timings)
            shown = scrub(prediction, strings)
            files["report"] = write_report(out / "report.html", shown, ctx, self.phases)
            timings["report"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start + read_seconds
        prediction["timings"] = _rounded(timings)
        prediction["files"] = {k: v.name for k, v in files.items()}
        files["prediction"] = write_json(out / PREDICTION, prediction, strings)
        leaks = find_phi([f for k, f in files.items() if k != "dicom_seg"], strings)
        if "dicom_seg" in files and not keep_phi:
            leaks += find_phi([files["dicom_seg"]], seg_strings)
        if leaks:  # a bug, not a user error: never report success with PHI written
            raise RuntimeError(f"PHI found in outputs: {sorted({str(p) for p, _ in leaks})}")
        return prediction

    # ------------------------------------------------------------------ steps
    def _check_phases(self, study: Study, warnings: list[str]) -> tuple[list[str], str]:
        present = [p for p in self.phases if p in study.phases]
        missing = [p for p in self.phases if p not in study.phases]
        where = study_path(study)
        # the reader's own doubts (phases named by acquisition order) belong in the report too
        warnings.extend(str(w) for w in study.metadata.get("warnings", []))
        if missing and (not self.accepts_phase_mask or not present):
            raise DatasetError(
                f"study {study.case_id!r} lacks phase(s) {missing} that model {self.model_name!r} "
                f"needs (bundle phases {self.phases}, study has {study.phase_names})",
                where,
            )
        if missing:
            warnings.append(
                f"missing phase(s) {missing}: {self.model_name} predicts without them (phase mask)"
            )
        unused = [p for p in study.phases if p not in self.phases]
        if unused:
            warnings.append(f"phase(s) {unused} of the study are not used by this model")
        ref = (
            self.reference_phase if self.reference_phase in study.phases else self._middle(present)
        )
        if ref != self.reference_phase:
            warnings.append(f"reference phase {self.reference_phase} missing: {ref} used instead")
        return present, ref

    def _preprocess(
        self,
        case_id: str,
        canon: dict[str, sitk.Image],
        present: list[str],
        ref: str,
        box: lesion.Box6 | None,
        timings: dict[str, float],
        phase_boxes: dict[str, lesion.Box6 | None] | None = None,
    ) -> PreprocessedStudy:
        """Run the bundle's preprocessing on the canonical copy with the crop from `box` (and each
        phase's own box in `phase_boxes`, canonical voxels, when the case gives one per phase)."""
        if box is None or self.config.roi_source == "image":
            config = self.config.replace(roi_source="image", phases=tuple(present))
            box = None
        else:
            if self.config.roi_source == "mask_jitter":
                box = lesion.enlarge_box(box, float(np.mean(self.config.jitter_scale)))
            config = self.config.replace(roi_source="bbox", phases=tuple(present))
        own = {p: b for p, b in (phase_boxes or {}).items() if b is not None and box is not None}
        study = Study(
            case_id, {p: canon[p] for p in canon}, bbox=box, reference_phase=ref, phase_boxes=own
        )
        pre = preprocess_study(study, config)
        t = pre.meta["timings"]
        timings["register"] += float(t.get("register", 0.0))
        timings["preprocess"] += float(t.get("total", 0.0)) - float(t.get("register", 0.0))
        return pre

    def _coarse_box(
        self,
        study: Study,
        canon: dict[str, sitk.Image],
        present: list[str],
        ref: str,
        timings: dict[str, float],
    ) -> lesion.Box6:
        """The box of the largest lesion the model segments in a whole-scan pass."""
        pre = self._preprocess(study.case_id, canon, present, ref, None, timings)
        x, kwargs = self._input(pre, present)
        prob = predict_batch(self.model, {"image": x, **kwargs}, (), self.device).lesion
        if prob is None:
            raise LiverphaseError(
                f"model {self.model_name!r} gave no segmentation", self.bundle_dir
            )
        box = lesion.index_box(lesion_mask_on_reference(prob[0], pre.meta["crop"], canon[ref]))
        if box is None:
            raise LiverphaseError(
                "the model found no lesion in the whole-scan pass: give a mask or a bbox",
                study_path(study),
            )
        return box

    def _input(
        self, pre: PreprocessedStudy, present: list[str], roi: np.ndarray | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(1, P, C, D, H, W) in the bundle's phase order and the model's keyword arguments, as
        `data.forward.study_batch` makes them (as the cache's items give them): absent phases zero
        and masked out, the lesion mask on the crop grid `roi`, if given, as the ROI channel."""
        image = np.zeros((len(self.phases), *pre.image.shape[1:]), np.float32)
        for i, p in enumerate(self.phases):
            if p in present:
                image[i] = pre.image[present.index(p)]
        kwargs: dict[str, Any] = study_batch(image, roi, [p in present for p in self.phases])
        return kwargs.pop("image").to(self.device), kwargs

    def _staging(
        self, x: torch.Tensor, kwargs: dict[str, Any], probs: np.ndarray, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """prediction.json's `staging`: the stage, the expected stage (probability-weighted class
        index, for ordered classes) and the model's attention over the crop's slices, if it has
        one (one plain forward: the flipped views' attentions are not averaged)."""
        out: dict[str, Any] = {
            "stage": self.class_names[int(np.argmax(probs))],
            "expected_stage_index": round(float(np.dot(np.arange(probs.size), probs)), 4),
            "classes": self.class_names,
        }
        with torch.no_grad():
            self.model(x, **kwargs)
        attention = getattr(self.model, "last_attention", None)
        if attention is not None:
            present = kwargs.get("phase_mask", torch.ones(1, len(self.phases), dtype=torch.bool))
            out["slice_attention"] = {
                p: [round(float(v), 5) for v in attention[0, i].cpu()]
                for i, p in enumerate(self.phases)
                if bool(present[0, i])
            }
            out["slice_attention_note"] = (
                f"weights over the {attention.shape[-1]} slices of the liver crop, "
                f"{meta['scale_mm'][0]:.2f} mm apart, in the order of the model input's slice axis"
            )
        return out

    def _cam_engine(self) -> PhaseGradCAM:
        if self._cam is None:
            self._cam = PhaseGradCAM(self.model, self.model_name)
        return self._cam


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in timings.items()}
