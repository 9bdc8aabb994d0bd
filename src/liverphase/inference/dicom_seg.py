"""The predicted lesion mask as a DICOM Segmentation (highdicom) referencing the source series.

One binary segment "Lesion" (SCT 52988006, category Morphologically Abnormal Structure), algorithm
"liverphase <model>", one frame per slice of the reference phase's series in the study's slice
order (empty frames kept, so frame k is source instance k). The mask must lie on the reference
phase's grid as read from that series (predict guarantees it). Without keep_phi the patient's name
and birth date are blanked in the copy of the source headers the SEG inherits its patient module
from; PatientID and the study UIDs stay, or a PACS could not attach the SEG to its study.
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
from liverphase.io.study import Study, same_grid


def write_dicom_seg(
    mask: sitk.Image,
    study: Study,
    phase: str,
    path: str | Path,
    model_name: str,
    keep_phi: bool = False,
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
    if not keep_phi:
        for ds in sources:
            ds.PatientName = ""
            ds.PatientBirthDate = ""
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
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)
