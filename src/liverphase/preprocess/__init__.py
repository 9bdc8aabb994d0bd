"""Preprocessing: canonical geometry, inter-phase registration, lesion ROI, intensities, cache."""

from liverphase.preprocess.build import preprocess_dataset
from liverphase.preprocess.cache import CachedStudy, PreprocessCache, cache_key, file_digest
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import (
    PreprocessedStudy,
    crop_box_for,
    map_to_reference,
    preprocess_study,
)
from liverphase.preprocess.roi import CropGrid, to_reference_grid

__all__ = [
    "CachedStudy",
    "CropGrid",
    "PreprocessCache",
    "PreprocessConfig",
    "PreprocessedStudy",
    "cache_key",
    "crop_box_for",
    "file_digest",
    "map_to_reference",
    "preprocess_dataset",
    "preprocess_study",
    "to_reference_grid",
]
