"""Importer registry: `@register_importer("name")` on a dataset's import body, `get_importer(name)`
to run one with the checks every import shares (SRC exists and is left alone, OUT is empty or a
previous import of the same dataset, the output appears whole or not at all)."""

from __future__ import annotations

import importlib
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from liverphase.atomic import atomic_dir, atomic_write_json
from liverphase.errors import ConfigError, DatasetError, InputFileError

#: The file every import writes into OUT; it marks OUT as a previous import that may be replaced.
IMPORT_JSON = "import.json"

# Modules that register importers when imported; a new dataset adds its module here once.
_IMPORTER_MODULES = ("cirrmri600", "plc_cect", "mct_ltdiag", "lld_mmri")


@dataclass
class ImportWarning:
    """A named fault of the source data, what the import did about it, and the cases it touched."""

    name: str
    message: str
    cases: list[str] = field(default_factory=list)
    kind: str = "case"  # what `cases` lists: cases, or the files ("file") the fault was found in


@dataclass
class ImportSummary:
    """What an import produced: cases, classes with counts, phases, named warnings and problems."""

    dataset: str
    source: str
    out: str
    cases: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    warnings: dict[str, ImportWarning] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    linked: int = 0
    written: int = 0
    copied: int = 0
    seconds: float = 0.0

    def warn(self, name: str, message: str, case: str | None = None, kind: str = "case") -> None:
        """Record a named warning once; later calls with the same name add the case to it."""
        entry = self.warnings.setdefault(name, ImportWarning(name, message, kind=kind))
        if case is not None and case not in entry.cases:
            entry.cases.append(case)

    def lines(self) -> list[str]:
        """The summary for a human, one fact per line."""
        out = [
            f"imported {self.dataset} from {self.source} into {self.out}",
            f"cases: {self.cases}",
            "classes: " + ", ".join(f"{k} {v}" for k, v in self.classes.items()),
            f"phases: {', '.join(self.phases)}",
            f"files: {self.linked} linked, {self.written} written (fixed or converted), "
            f"{self.copied} copied",
            f"time: {self.seconds:.1f} s",
        ]
        out += [f"note: {n}" for n in self.notes]
        for w in self.warnings.values():
            where = _case_list(w.cases, w.kind)
            out.append(f"warning [{w.name}]: {w.message}" + (f" ({where})" if where else ""))
        out += [f"problem: {p}" for p in self.problems]
        return out

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (written to OUT/import.json)."""
        return asdict(self)


def _case_list(cases: list[str], kind: str, shown: int = 8) -> str:
    if not cases:
        return ""
    head = ", ".join(cases[:shown])
    more = f" and {len(cases) - shown} more" if len(cases) > shown else ""
    return f"{len(cases)} {kind}(s): {head}{more}"


_REGISTRY: dict[str, Callable[..., None]] = {}
_INFO: dict[str, str] = {}


def register_importer(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a dataset's import body under `name` (decorator)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"importer {name!r} is registered twice")
        _REGISTRY[name] = fn
        _INFO[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return fn

    return wrap


def _load_all() -> None:
    for mod in _IMPORTER_MODULES:
        importlib.import_module(f"liverphase.io.importers.{mod}")


def list_importers() -> dict[str, str]:
    """Registered importer names (sorted) → one-line description."""
    _load_all()
    return {k: _INFO[k] for k in sorted(_REGISTRY)}


def importer_options(name: str) -> dict[str, Any]:
    """The options (keyword arguments) an importer takes, with their defaults."""
    body = _body(name)
    params = inspect.signature(body).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _body(name: str) -> Callable[..., None]:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}", "import"
        )
    return _REGISTRY[name]


def get_importer(name: str) -> Callable[..., ImportSummary]:
    """The importer `(src, out, progress=False, **options) -> ImportSummary` of a dataset."""
    body = _body(name)
    allowed = importer_options(name)

    def run(
        src: str | Path, out: str | Path, progress: bool = False, **options: Any
    ) -> ImportSummary:
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"importer {name!r} takes no option(s) {unknown}; it takes {sorted(allowed) or 'none'}",
                "import",
            )
        src_path, out_path = Path(src).expanduser(), Path(out).expanduser()
        check_source_and_output(name, src_path, out_path)
        summary = ImportSummary(name, str(src_path), str(out_path))
        start = time.perf_counter()
        # the whole dataset is built beside OUT and renamed into place: a failed or killed import
        # leaves the previous OUT (or nothing), never a half dataset
        with atomic_dir(out_path) as tmp:
            body(src_path.resolve(), tmp, summary, progress, **options)
            summary.seconds = time.perf_counter() - start
            atomic_write_json(tmp / IMPORT_JSON, {**summary.to_json(), "options": options})
        return summary

    run.__doc__ = _INFO[name]
    return run


def check_source_and_output(name: str, src: Path, out: Path) -> None:
    """SRC must be a folder; OUT must not lie inside SRC and be empty or an import of `name`."""
    if not src.is_dir():
        raise InputFileError(f"source folder of {name} not found", src)
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or src_r in out_r.parents:
        raise DatasetError("OUT lies inside SRC; an import never writes into its source", out)
    if not out.exists():
        return
    if not out.is_dir():
        raise DatasetError("OUT exists and is not a folder", out)
    if not any(out.iterdir()):
        return
    marker = out / IMPORT_JSON
    previous = None
    if marker.is_file():
        try:
            previous = json.loads(marker.read_text()).get("dataset")
        except (json.JSONDecodeError, AttributeError):
            previous = None
    if previous != name:
        what = f"an import of {previous}" if previous else "not a previous import"
        raise DatasetError(
            f"OUT is not empty and is {what}; give an empty or new folder (a previous import of "
            f"{name} is replaced)",
            out,
        )
