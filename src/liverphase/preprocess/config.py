"""The one preprocessing config, shared by train and predict (a bundle stores it verbatim)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from liverphase.config import ConfigBase
from liverphase.errors import ConfigError

MODALITIES = ("ct", "mri")
ROIS = ("lesion", "organ")
MISSING_PHASES = ("error", "zero")
ROI_SOURCES = ("mask", "bbox", "mask_jitter", "image")
TRANSFORMS = ("rigid", "affine")
MRI_NORMS = ("percentile", "zscore")
INTENSITY_REFERENCES = ("absolute", "liver")

# (level, width) in HU: abdomen soft tissue, liver parenchyma, and a narrow window around
# enhancing lesion values (the paper's "pseudo-colour" input: one window per channel).
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = ((40.0, 400.0), (60.0, 160.0), (80.0, 100.0))


@dataclass
class PreprocessConfig(ConfigBase):
    """Geometry, registration, ROI and intensity settings; every spatial triple is (z, y, x).

    The crop box is the lesion box plus `margin_mm` on each side, resized to `size` (D, H, W). With
    `keep_aspect=False` (the paper's recipe) each axis gets its own voxel size, so the aspect ratio
    changes; the mm-per-voxel scale is recorded in the meta so lesion size is not lost. With
    `keep_aspect=True` the box is enlarged (centred) so voxels have the same size on every axis.

    The paper resamples to 1 mm, crops, then resizes; here each phase is resampled once, straight
    onto the crop grid (same geometry, one interpolation instead of two, with Gaussian
    anti-aliasing when the crop grid is coarser than the scan), so there is no target-spacing
    field; `register_spacing_mm` is the only intermediate grid.
    """

    modality: str = "ct"
    size: tuple[int, int, int] = (64, 128, 128)
    margin_mm: float = 10.0
    keep_aspect: bool = False
    roi_source: str = "mask"
    jitter_scale: tuple[float, float] = (1.2, 1.6)
    jitter_shift: float = 0.5
    antialias: bool = True
    phases: tuple[str, ...] | None = None
    seed: int = 0
    register: bool = True
    register_transform: str = "rigid"
    # region = crop box + 50 mm, at 2 mm voxels: on the synthetic cohort 30 mm left phases with
    # 9 mm breathing shifts in a wrong basin and 70 mm or 1.5 mm voxels gained little for the time
    register_margin_mm: float = 50.0
    register_spacing_mm: float = 2.0
    register_window: tuple[float, float] = (50.0, 500.0)
    register_max_shift_mm: float = 20.0
    register_iterations: int = 100
    register_sampling: float = 0.1
    register_threads: int = 1
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    raw_window: tuple[float, float] = (40.0, 500.0)
    channels: int | None = None
    mri_norm: str = "percentile"
    mri_percentiles: tuple[float, float] = (1.0, 99.0)
    pad_value: float | None = None
    # "liver": every phase is read relative to the parenchyma around the lesion box (the crop's
    # margin ring, median), as a radiologist reads relative enhancement; this takes out the study's
    # bolus strength, arterial timing and unenhanced liver attenuation. CT: the ring is moved to
    # `liver_anchor` HU before windowing; MRI: the signal is divided by the ring, liver at 0.5.
    intensity_reference: str = "absolute"
    liver_anchor: float = 60.0
    # the lesion mask (on the crop grid, after augmentation) as one more channel of every phase, for
    # classifiers that read the enhancement through the ROI they were given (miff_spm's
    # `region_kinetics`): the cache is unchanged (the mask is cached beside the image) and the channel
    # is added where batches are made (`data.dataset`, `inference.predictor`)
    roi_channel: bool = False
    # "organ": the mask is an organ (the whole liver, for staging), not a lesion: the crop frames it
    # and no lesion kinetics are measured
    roi: str = "lesion"
    # "zero": a phase the study lacks becomes a zero channel and `meta.phases_present` marks it
    # absent (models with a phase mask then leave it out); "error": a missing phase is an error
    missing_phases: str = "error"
    # "n4": each MRI phase is bias-field corrected (SimpleITK N4) before normalisation: the coil's
    # smooth shading otherwise varies from scanner to scanner and reads as texture
    bias_correction: str = "none"

    def validate(self) -> None:
        """Check every value; raise ConfigError naming the field."""
        _choice("modality", self.modality, MODALITIES)
        _choice("roi_source", self.roi_source, ROI_SOURCES)
        _choice("register_transform", self.register_transform, TRANSFORMS)
        _choice("mri_norm", self.mri_norm, MRI_NORMS)
        _choice("intensity_reference", self.intensity_reference, INTENSITY_REFERENCES)
        _choice("roi", self.roi, ROIS)
        _choice("missing_phases", self.missing_phases, MISSING_PHASES)
        _choice("bias_correction", self.bias_correction, ("none", "n4"))
        if self.bias_correction == "n4" and self.modality != "mri":
            raise ConfigError(
                "N4 bias-field correction is for MRI (modality mri)", "bias_correction"
            )
        if self.intensity_reference == "liver" and (
            self.margin_mm <= 0 or self.roi_source == "image"
        ):
            raise ConfigError(
                "needs a crop margin around the lesion box (margin_mm > 0, roi_source not image)",
                "intensity_reference",
            )
        if len(self.size) != 3 or any(n < 2 for n in self.size):
            raise ConfigError(f"must be three integers >= 2, got {self.size}", "size")
        for name in ("margin_mm", "register_margin_mm"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", name)
        if not 0 <= self.jitter_shift <= 1:
            # a fraction of the slack the enlargement adds: above 1 the lesion could leave the box
            raise ConfigError(f"must be in [0, 1], got {self.jitter_shift}", "jitter_shift")
        for name in ("register_spacing_mm", "register_max_shift_mm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", name)
        lo, hi = self.jitter_scale
        if not 1.0 <= lo <= hi:
            raise ConfigError(
                f"must satisfy 1 <= low <= high, got {self.jitter_scale}", "jitter_scale"
            )
        if not 0 < self.register_sampling <= 1:
            raise ConfigError(
                f"must be in (0, 1], got {self.register_sampling}", "register_sampling"
            )
        if self.register_iterations < 1 or self.register_threads < 1:
            raise ConfigError("register_iterations and register_threads must be >= 1", "register")
        if not self.windows or any(w <= 0 for _, w in (*self.windows, self.raw_window)):
            raise ConfigError("need at least one window, each with a positive width", "windows")
        p_lo, p_hi = self.mri_percentiles
        if not 0 <= p_lo < p_hi <= 100:
            raise ConfigError(
                f"need 0 <= low < high <= 100, got {self.mri_percentiles}", "mri_percentiles"
            )
        allowed = (1, len(self.windows)) if self.modality == "ct" else (1,)
        if self.channels is not None and self.channels not in allowed:
            raise ConfigError(
                f"{self.modality} allows {sorted(set(allowed))} channel(s) "
                f"(CT: 1 raw channel or one per window), got {self.channels}",
                "channels",
            )
        if self.phases is not None and len(set(self.phases)) != len(self.phases):
            raise ConfigError(f"duplicate phase names in {self.phases}", "phases")
        if self.roi_channel and self.roi_source == "image":
            raise ConfigError("needs a lesion mask, not roi_source image", "roi_channel")

    def resolved(self, dataset_phases: Sequence[str]) -> PreprocessConfig:
        """A copy with phases and channels explicit, so equal settings give equal cache keys."""
        return dataclasses.replace(
            self,
            phases=tuple(self.phases if self.phases is not None else dataset_phases),
            channels=self.n_windows,
        )

    def key_dict(self) -> dict[str, object]:
        """`to_dict` for cache keys: with absolute intensities the liver-reference fields, which
        then change nothing, are left out, so caches built before those fields existed stay valid;
        `roi_channel` never changes the cached arrays and is always left out."""
        data = self.to_dict()
        del data["roi_channel"]
        # fields added later are left out at their defaults so earlier cache entries stay valid
        for name, default in (
            ("roi", "lesion"),
            ("missing_phases", "error"),
            ("bias_correction", "none"),
        ):
            if data[name] == default:
                del data[name]
        if self.intensity_reference == "absolute":
            del data["intensity_reference"], data["liver_anchor"]
        return data

    @property
    def n_windows(self) -> int:
        """Intensity channels per phase in the cached image (CT windows, or 1)."""
        if self.channels is not None:
            return self.channels
        return len(self.windows) if self.modality == "ct" else 1

    @property
    def n_channels(self) -> int:
        """Channels per phase of the model input: the intensity channels, plus the ROI channel."""
        return self.n_windows + int(self.roi_channel)

    @property
    def ct_windows(self) -> tuple[tuple[float, float], ...]:
        """The (level, width) windows actually applied to CT, one per channel."""
        return (self.raw_window,) if self.n_windows == 1 else self.windows

    @property
    def default_pad(self) -> float | None:
        """Value for voxels outside the scan: air for CT; None means the image minimum (MRI)."""
        if self.pad_value is not None:
            return self.pad_value
        return -1024.0 if self.modality == "ct" else None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"must be one of {list(allowed)}, got {value!r}", name)
