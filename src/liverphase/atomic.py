"""Atomic writes: write to a temporary sibling, fsync, then rename, so a killed run leaves no half file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from liverphase.errors import BundleError, OutputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it.

    The temporary name keeps the final suffix (e.g. ".nii.gz") so writers that infer the format
    from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    `keep`, for content-addressed folders several processes (or machines) may write at once: a
    `path` found in place when ours is ready is kept if `keep(path)` (a sound folder of the same
    content; ours is dropped), else replaced, so `path` is never missing while a sound copy exists
    and two writers never rename over each other."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        share_modes(tmp)
        if keep is not None:
            _publish_shared(tmp, path, keep)
        elif path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_shared(tmp: Path, path: Path, keep: Callable[[Path], bool], tries: int = 8) -> None:
    """Rename `tmp` onto `path` unless a folder `keep` accepts got there first (see atomic_dir)."""
    for _ in range(tries):
        try:
            os.rename(tmp, path)  # refused (ENOTEMPTY) while another writer's folder is there
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if keep(path):
            return
        # a damaged folder: set it aside, then try again (another writer may do the same first)
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        try:
            os.rename(path, old)
        except OSError:  # gone already (another writer set it aside), or `old` taken: try again
            continue
        shutil.rmtree(old, ignore_errors=True)
    raise OutputError(f"other writers kept replacing it ({tries} tries)", path)


def share_modes(folder: str | Path) -> None:
    """Give every file and folder under `folder` the modes a plain open()/mkdir() would (0666 and
    0777 less the umask): writers like safetensors and mkstemp create 0600, and outputs are meant
    to be shared like every other file. Bits already set (an executable) are kept."""
    files, dirs = 0o666 & ~_UMASK, 0o777 & ~_UMASK
    for root, dirnames, filenames in os.walk(folder):
        for name, wanted in [*((d, dirs) for d in dirnames), *((f, files) for f in filenames)]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if mode | wanted != mode:
                os.chmod(path, mode | wanted)


@contextlib.contextmanager
def staged_files(folder: str | Path, last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a hidden temporary folder inside `folder`; on success move its files into `folder`,
    the names in `last` after all others, else remove it with everything written.

    For outputs that belong together in a folder the user owns (not replaced whole): a failed run
    leaves none of them, and since an old copy of each `last` file is removed before the others
    move in, a `last` file (e.g. prediction.json) is never beside outputs of another run.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=folder))
    try:
        yield stage
        share_modes(stage)
        names = sorted(p.name for p in stage.iterdir())
        ordered = [n for n in names if n not in last] + [n for n in last if n in names]
        for name in last:
            (folder / name).unlink(missing_ok=True)
        for name in ordered:
            os.replace(stage / name, folder / name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty: a failed run leaves no trace
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_writable_dir(path: str | Path) -> Path:
    """Refuse, before any heavy work, an output folder that cannot be written: a file at `path`
    or above it, or a nearest existing folder without write permission (or on a read-only disk).
    Creates nothing, so a refused run leaves no trace."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == path else f" (the output folder {path} would be inside it)"
        raise OutputError(f"is a file, not a folder{where}", probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "the output folder" if probe == path else f"where the output folder {path} goes"
        raise OutputError(f"cannot be written ({what}; read-only or no permission)", probe)
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# bundle.json key holding the SHA-256 of model.safetensors (model and encoder bundles alike;
# absent in bundles written before it)
WEIGHTS_SHA256 = "weights_sha256"


def check_weights_sha256(meta: dict[str, Any], weights_path: Path) -> None:
    """Refuse weights whose SHA-256 is not the one bundle.json records (none recorded: unchecked)."""
    expected = meta.get(WEIGHTS_SHA256)
    if expected is None:
        return  # a bundle written before checksums were recorded
    if file_sha256(weights_path) != expected:
        raise BundleError(
            f"SHA-256 differs from the {WEIGHTS_SHA256} in bundle.json: the weights were modified "
            "or damaged after the bundle was written",
            weights_path,
        )
