"""Content-addressed cache of preprocessed studies.

`CACHE/<key>/` holds `image.npy` (P, C, D, H, W float32), `mask.npy` (D, H, W uint8, when the case
has a mask) and `meta.json`. The key is the sha256 of the input files' content, the case's own
settings (phase order, reference, cases.csv bbox), the preprocessing config and the liverphase
version: change any of them and the study is rebuilt, change nothing and no input is read. An
entry is written in a dot-prefixed temporary folder and renamed whole, so a killed run leaves no
partial entry; stale temporary folders are removed by the next run. `CACHE/index.json` maps each
case id to the key of its latest build.

meta.json records each array file's size and SHA-256 (`checksums`); an entry is verified against
them before it is reused (`PreprocessCache.problem`), and a damaged one (truncated, overwritten,
a file gone) is rebuilt with a warning instead of crashing training later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liverphase import __version__
from liverphase.atomic import atomic_dir, atomic_write_json, file_sha256
from liverphase.errors import InputFileError
from liverphase.io.study import Study
from liverphase.preprocess.config import PreprocessConfig
from liverphase.preprocess.pipeline import preprocess_study

# 3: registration on a coarsened moving image; 4: kinetics on the scan's grid; 5: kinetics at 1 mm
CACHE_FORMAT = 5
IMAGE, MASK, META, INDEX, HASHES = (
    "image.npy",
    "mask.npy",
    "meta.json",
    "index.json",
    "file_hashes.json",
)
_OWNER = ".owner"
_CHUNK = 1 << 20
CHECKSUMS = "checksums"  # meta.json: array file name -> {"size": bytes, "sha256": hex}
log = logging.getLogger(__name__)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
    except FileNotFoundError:
        raise InputFileError("file not found", path) from None
    except OSError as exc:
        raise InputFileError(f"cannot read ({exc.strerror})", path) from None
    return digest.hexdigest()


class FileHasher:
    """File digests, remembered per (path, size, mtime) in `CACHE/file_hashes.json` across runs."""

    def __init__(self, memo_path: Path | None = None) -> None:
        self.memo_path = memo_path
        self.memo: dict[str, dict[str, Any]] = {}
        self.changed = False
        if memo_path is not None and memo_path.is_file():
            try:
                self.memo = json.loads(memo_path.read_text())
            except (json.JSONDecodeError, OSError):
                self.memo = {}  # a damaged memo only costs re-hashing

    def digest(self, path: str | Path) -> str:
        """sha256 of the file, from the memo when its size and mtime are unchanged."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InputFileError("file not found", path) from None
        name = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.memo.get(name)
        if hit and hit.get("stamp") == stamp:
            return str(hit["sha256"])
        value = file_digest(path)
        self.memo[name] = {"stamp": stamp, "sha256": value}
        self.changed = True
        return value

    def save(self) -> None:
        """Write the memo back (atomically) if it grew."""
        if self.memo_path is not None and self.changed:
            atomic_write_json(self.memo_path, self.memo)
            self.changed = False


@dataclass
class CachedStudy:
    """A cache entry: memory-mapped arrays plus meta; `built` says whether this call made it."""

    key: str
    case_id: str
    image: np.ndarray
    mask: np.ndarray | None
    meta: dict[str, Any]
    built: bool = False


def cache_key(
    files: Sequence[tuple[str, str]], config: PreprocessConfig, extra: dict[str, Any] | None = None
) -> str:
    """sha256 over (file name, digest) pairs, case settings, config (canonical JSON) and version."""
    payload = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "config": config.key_dict(),
        "files": [list(f) for f in files],
        "extra": extra or {},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class PreprocessCache:
    """A folder of preprocessed studies keyed by content (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry_dir(self, key: str) -> Path:
        """The folder of one entry."""
        return self.root / key

    def has(self, key: str) -> bool:
        """True when a complete entry exists (entries only appear whole)."""
        d = self.entry_dir(key)
        return (d / META).is_file() and (d / IMAGE).is_file()

    def problem(self, key: str) -> str | None:
        """Why an existing entry cannot be reused (None when it is sound): meta.json unreadable, or
        an array file missing or not of the recorded size and SHA-256. Entries written before
        checksums were recorded are checked for arrays their npy headers do not fit."""
        d = self.entry_dir(key)
        try:
            meta = json.loads((d / META).read_text())
            recorded = meta.get(CHECKSUMS) if isinstance(meta, dict) else None
            if not isinstance(recorded, dict):
                return _legacy_problem(d)
            for name, want in recorded.items():
                size = (d / name).stat().st_size
                if size != want["size"]:
                    return f"{name} has {size} bytes, {want['size']} were written"
                if file_sha256(d / name) != want["sha256"]:
                    return f"{name} differs from the SHA-256 recorded when it was written"
        except FileNotFoundError as exc:
            return f"{Path(str(exc.filename)).name} is missing"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable ({type(exc).__name__}: {exc})"
        return None

    def reusable(self, key: str, case_id: str) -> bool:
        """True when a sound entry exists; a damaged one is reported (logged) and False."""
        if not self.has(key):
            return False
        problem = self.problem(key)
        if problem is not None:
            log.warning(
                "warning: %s: cache entry %s is damaged (%s); rebuilding it",
                case_id,
                self.entry_dir(key),
                problem,
            )
        return problem is None

    def key_for(
        self,
        files: Sequence[str | Path],
        config: PreprocessConfig,
        extra: dict[str, Any] | None = None,
        hasher: FileHasher | None = None,
    ) -> str:
        """The key of a case read from `files` (content hashed, names kept: they carry the phase)."""
        hasher = hasher or FileHasher()
        return cache_key([(Path(f).name, hasher.digest(f)) for f in files], config, extra)

    def load(self, key: str, mmap: bool = True) -> CachedStudy:
        """Open an entry; arrays are memory-mapped read-only unless `mmap=False`."""
        d = self.entry_dir(key)
        if not self.has(key):
            raise InputFileError("no such cache entry", d)
        meta = json.loads((d / META).read_text())
        mode = "r" if mmap else None
        image = np.load(d / IMAGE, mmap_mode=mode)
        mask = np.load(d / MASK, mmap_mode=mode) if (d / MASK).is_file() else None
        return CachedStudy(key, meta.get("case_id", ""), image, mask, meta)

    def read_index(self) -> dict[str, str]:
        """case id → key of its latest build (empty when there is no index)."""
        path = self.root / INDEX
        if not path.is_file():
            return {}
        try:
            return dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError):
            return {}

    def update_index(self, keys: dict[str, str]) -> None:
        """Merge `keys` into index.json (written atomically)."""
        index = self.read_index()
        index.update(keys)
        atomic_write_json(self.root / INDEX, dict(sorted(index.items())))

    def load_case(self, case_id: str, mmap: bool = True) -> CachedStudy:
        """Open the latest entry of a case through the index."""
        key = self.read_index().get(case_id)
        if key is None:
            raise InputFileError(f"case {case_id!r} is not in the cache index", self.root / INDEX)
        return self.load(key, mmap)

    def write(
        self,
        key: str,
        case_id: str,
        image: np.ndarray,
        mask: np.ndarray | None,
        meta: dict[str, Any],
    ) -> Path:
        """Store an entry atomically (a temporary sibling folder renamed whole). Another process
        storing the same key at once (a shared cache) is safe: the key names the content, so a
        sound entry already in place is kept and ours dropped, and a damaged one replaced."""
        target = self.entry_dir(key)
        with atomic_dir(target, keep=lambda _: self.problem(key) is None) as tmp:
            (tmp / _OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
            np.save(tmp / IMAGE, np.ascontiguousarray(image, dtype=np.float32))
            if mask is not None:
                np.save(tmp / MASK, np.ascontiguousarray(mask, dtype=np.uint8))
            # hashed from the page cache just written: about 10 ms for 15 MB (see `problem`)
            sums = {
                name: {"size": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                for name in (IMAGE, MASK)
                if (tmp / name).exists()
            }
            full = {
                "key": key,
                "case_id": case_id,
                "liverphase_version": __version__,
                "cache_format": CACHE_FORMAT,
                **meta,
                CHECKSUMS: sums,
            }
            atomic_write_json(tmp / META, full)  # fsynced; the arrays are synced below
            for name in (IMAGE, MASK):
                if (tmp / name).exists():
                    with open(tmp / name, "rb") as fh:
                        os.fsync(fh.fileno())
            (tmp / _OWNER).unlink()
        return target

    def build(
        self, key: str, study: Study, config: PreprocessConfig, info: dict[str, Any] | None = None
    ) -> CachedStudy:
        """Preprocess a study and store it under `key`."""
        result = preprocess_study(study, config)
        meta = {**result.meta, "config": config.to_dict(), **(info or {})}
        self.write(key, study.case_id, result.image, result.mask, meta)
        out = self.load(key)
        out.built = True
        return out

    def get_or_build(
        self,
        case_id: str,
        files: Sequence[str | Path],
        study_loader: Callable[[], Study],
        config: PreprocessConfig,
        extra: dict[str, Any] | None = None,
    ) -> CachedStudy:
        """The cached entry of a case, built (loading the study) only when missing."""
        key = self.key_for(files, config, extra)
        if self.reusable(key, case_id):
            out = self.load(key)
        else:
            out = self.build(key, study_loader(), config, {"inputs": [Path(f).name for f in files]})
        self.update_index({case_id: key})
        return out

    def clean_temp(self, min_age_s: float = 3600.0) -> int:
        """Remove temporary folders left by killed runs; return how many were removed.

        A folder whose owner process (same host) still runs is kept; one without an owner record,
        or written from another host, is removed only once older than `min_age_s` (it may be a
        writer that just started, or one on another machine filling the same shared cache).
        """
        if not self.root.is_dir():
            return 0
        removed = 0
        host = socket.gethostname()
        for d in self.root.iterdir():
            if not (d.is_dir() and d.name.startswith(".")):
                continue
            owner = _owner_of(d)
            if owner is not None and owner[0] == host:
                stale = not _alive(owner[1])
            else:
                # no owner recorded, or another machine's writer (a shared cache) whose process
                # cannot be checked from here: only an old folder is a dead writer's
                stale = time.time() - d.stat().st_mtime > min_age_s
            if stale:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
        return removed


def _legacy_problem(d: Path) -> str | None:
    """An entry without checksums: its arrays must at least fill what their headers declare."""
    for name in (IMAGE, MASK):
        if (d / name).exists():
            try:
                np.load(d / name, mmap_mode="r")
            except (OSError, ValueError) as exc:  # a truncated file cannot be mapped
                return f"{name} is truncated or unreadable ({exc})"
    return None


def _owner_of(d: Path) -> tuple[str, int] | None:
    if ".old" in d.name:  # atomic_dir's displaced entry: `.{key}.old{pid}`
        tail = d.name.rsplit(".old", 1)[1]
        return (socket.gethostname(), int(tail)) if tail.isdigit() else None
    try:
        host, pid = (d / _OWNER).read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
