"""The predicted lesion mask as a DICOM Segmentation (highdicom) referencing the source series.

One binary segment "Lesion" (SCT 52988006, category Morphologically Abnormal Structure), algorithm
"liverphase <model>", one frame per slice of the reference phase's series in the study's slice
order (empty frames kept, so frame k is source instance k). The mask must lie on the reference
phase's grid as read from that series (predict guarantees it).

Identity (README, "Identifiers"): by default the SEG keeps the patient and study identity of its
source — PatientID, StudyInstanceUID, AccessionNumber, StudyID, study date and time, referring
physician, the source's FrameOfReferenceUID and SOP Instance UIDs, the acquisition equipment —
because it must attach to its study in a PACS; only the patient's name and birth date
(`io.phi.SEG_BLANKED`) are blanked unless keep_phi. With `anonymize` it is written from
`io.phi.anonymized_headers` copies of the source headers, under the DICOM PS3.15 Basic Application
Level Confidentiality Profile: every identifying attribute removed or replaced by a dummy (the
patient named and identified by the case id, itself identifier-free), no source date or time, and new
Study, Series, SOP Instance and Frame of Reference UIDs, consistent within the SEG (its references
name the anonymized source instances); PatientIdentityRemoved is YES.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

import liverphase
from liverphase.atomic import atomic_path
from liverphase.errors import DicomError
from liverphase.io.phi import SEG_BLANKED, anonymized_headers, mark_deidentified
from liverphase.io.study import Study, same_grid


def write_dicom_seg(
    mask: sitk.Image,
    study: Study,
    phase: str,
    path: str | Path,
    model_name: str,
    keep_phi: bool = False,
    anonymize: bool = False,
) -> Path:
    """Write `mask` (on `study.phases[phase]`'s grid) as a DICOM SEG at `path`; return the path."""
    files = study.sources.get(phase) or []
    reference = study.phases[phase]
    if len(files) != reference.GetSize()[2]:
        raise DicomError(
            f"{len(files)} source files for the {reference.GetSize()[2]} slices of phase {phase}",
            study.metadata.get("dicom_folder"),
        )
    if not same_grid(mask, reference, tol=1e-3):
        raise DicomError("the lesion mask is not on the reference series' grid", path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if anonymize:
        sources = anonymized_headers(sources, study.case_id)
    elif not keep_phi:
        for ds in sources:
            for keyword in SEG_BLANKED:
                setattr(ds, keyword, "")
    frames = (sitk.GetArrayFromImage(mask) > 0).astype(np.uint8)  # (slices, rows, cols)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"liverphase {model_name}",
        family=codes.DCM.ArtificialIntelligence,
        version=liverphase.__version__,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    series_uid = hd.UID()
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="liverphase",
        manufacturer_model_name=f"liverphase {model_name}",
        software_versions=liverphase.__version__,
        device_serial_number="0",
        series_description=f"liverphase {model_name} lesion",
        omit_empty_frames=False,
    )
    if anonymize:
        mark_deidentified(seg, f"liverphase {liverphase.__version__}")
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
