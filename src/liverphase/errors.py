"""User-facing errors: the CLI prints their one-line message and exits 2."""

from __future__ import annotations

import errno
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


class OutputError(LiverphaseError):
    """An output location cannot be written (a file in the way, no permission, read-only)."""


# errno values that are the machine's state, not a bug, even when the error names no file
_FILESYSTEM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def os_error_message(exc: OSError) -> str | None:
    """One line naming the path for a filesystem OSError (permission, full disk, a file where a
    folder should be, ...); None for an OSError that is not about a path (left a bug, exit 1)."""
    if exc.filename is None and exc.errno not in _FILESYSTEM_ERRNOS:
        return None
    problem = exc.strerror or type(exc).__name__
    if exc.filename is None:
        return problem
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {problem}"
    return f"{exc.filename}: {problem}"


class SplitError(DatasetError, ValueError):
    """The cases cannot be split as asked (too few patients for the folds, bad splits.json, a
    published split column that does not hold)."""


class DataOverlapError(DatasetError):
    """A dataset to evaluate on shares studies or patients with the model's training data."""


class DataMismatchError(DatasetError):
    """Runs to compare or reuse were trained on other data than the dataset given."""
