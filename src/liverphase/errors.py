"""User-facing errors: the CLI prints their one-line message and exits 2."""

from __future__ import annotations

from pathlib import Path


class LiverphaseError(Exception):
    """A problem with the user's input; the message names the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.problem = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputFileError(LiverphaseError):
    """A file is missing, unreadable, truncated or holds invalid values."""


class DatasetError(LiverphaseError):
    """The dataset layout, dataset.json or cases.csv is inconsistent."""


class DicomError(LiverphaseError):
    """A DICOM study cannot be assembled into phases."""


class GeometryError(LiverphaseError):
    """Images that must share a grid do not, or a geometry is degenerate."""


class ConfigError(LiverphaseError):
    """A configuration value is invalid."""


class BundleError(LiverphaseError):
    """A checkpoint bundle is missing, damaged or does not match the model."""
