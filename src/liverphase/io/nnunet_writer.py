"""Writing studies into an nnU-Net v2 raw dataset: images (optionally stored with flipped axes),
masks, and the dataset.json and cases.csv that `NnUNetDataset` reads back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_write_json
from liverphase.errors import DatasetError
from liverphase.io.cases_csv import CASE_ID, CASE_ID_RULE, CASES_CSV, CaseRecord, write_cases_csv
from liverphase.io.nifti import flip_bbox, flip_storage, write_image
from liverphase.io.study import Study
from liverphase.phases import DEFAULT_REFERENCE_PHASE


class NnUNetWriter:
    """Writes studies into the nnU-Net raw layout; `close()` writes dataset.json and cases.csv."""

    def __init__(
        self,
        root: str | Path,
        phases: Sequence[str],
        reference_phase: str = DEFAULT_REFERENCE_PHASE,
        labels: dict[str, int] | None = None,
        class_names: Sequence[str] | None = None,
        extra_json: dict[str, Any] | None = None,
        allow_missing: bool = False,
    ) -> None:
        self.root = Path(root)
        self.allow_missing = allow_missing
        self.phases = list(phases)
        self.reference_phase = reference_phase
        self.labels = dict(labels or {"background": 0, "lesion": 1})
        self.class_names = list(class_names) if class_names else None
        self.extra_json = dict(extra_json or {})
        self.records: list[CaseRecord] = []
        (self.root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (self.root / "labelsTr").mkdir(parents=True, exist_ok=True)

    def add(
        self, study: Study, flip_axes: Sequence[int] = (), extra: dict[str, object] | None = None
    ) -> None:
        """Write one study's phases (and mask), optionally stored with flipped axes."""
        if not CASE_ID.match(study.case_id):
            raise DatasetError(f"case id {study.case_id!r} must be {CASE_ID_RULE}", self.root)
        missing = [p for p in self.phases if p not in study.phases]
        if missing and (not self.allow_missing or len(missing) == len(self.phases)):
            raise DatasetError(f"study {study.case_id!r} lacks phase(s) {missing}", self.root)
        for k, phase in enumerate(self.phases):
            if phase not in study.phases:
                continue  # a missing sequence is an absent file (dataset.json allows it)
            path = self.root / "imagesTr" / f"{study.case_id}_{k:04d}.nii.gz"
            write_image(flip_storage(study.phases[phase], flip_axes), path)
        if study.mask is not None:
            write_image(
                flip_storage(study.mask, flip_axes),
                self.root / "labelsTr" / f"{study.case_id}.nii.gz",
            )
        bbox = flip_bbox(study.bbox, study.reference.GetSize(), flip_axes) if study.bbox else None
        boxes = {
            p: flip_bbox(b, study.phases[p].GetSize(), flip_axes)
            for p, b in study.phase_boxes.items()
        }
        self.records.append(
            CaseRecord(
                study.case_id,
                str(study.patient_id),
                study.label,
                bbox,
                {k: str(v) for k, v in (extra or {}).items()},
                boxes,
            )
        )

    def close(self) -> Path:
        """Write dataset.json and cases.csv; return the dataset root."""
        meta = {
            "channel_names": {str(k): p for k, p in enumerate(self.phases)},
            "labels": self.labels,
            "numTraining": len(self.records),
            "file_ending": ".nii.gz",
            "reference_phase": self.reference_phase,
        }
        if self.class_names:
            meta["class_names"] = self.class_names
        if self.allow_missing:
            meta["missing_phases"] = "allow"
        meta.update(self.extra_json)
        atomic_write_json(self.root / "dataset.json", meta)
        write_cases_csv(self.root / CASES_CSV, self.records)
        return self.root
