"""Importers of public liver datasets: each reads a dataset as published and writes a liverphase
dataset (nnU-Net raw layout + cases.csv), never touching the source, its faults named warnings."""

from liverphase.io.importers.registry import (
    IMPORT_JSON,
    ImportSummary,
    ImportWarning,
    get_importer,
    importer_options,
    list_importers,
    register_importer,
)

__all__ = [
    "IMPORT_JSON",
    "ImportSummary",
    "ImportWarning",
    "get_importer",
    "importer_options",
    "list_importers",
    "register_importer",
]
