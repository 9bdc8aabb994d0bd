"""A miniature of LLD-MMRI 2023 as published (DATASETS.md; LMMMEng/LLD-MMRI2023's readers):
`images/<patient>/<studyUID>/<seriesUID>.nii.gz`, `labels/Annotation.json` with one entry per
sequence, `classification_dataset/labels/` lists, and every listed fault planted once."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

SEQUENCES = ("T2WI", "In Phase", "Out Phase", "C-pre", "C+A", "C+V", "C+Delay", "DWI")
SHAPE = (24, 20, 8)  # x, y, z voxels of every volume
SPACING = (0.75, 0.8, 6.0)  # the JSON's truth; headers say 1 mm and origin 0
ORIGIN = (-120.0, -90.0, 40.0)
# per class, patients in the official split; ids are MR + digits
TRAIN, VAL, TEST = 2, 1, 1
DASH_ID = "MR-411388"  # written with a dash in the JSON and its folder
MISSING_IN_PHASE = "MR94749"
DUPLICATED = "MR2603"  # its In Phase repeats slice 3
UPSIDE_DOWN = "MR3573"  # its T2WI header's slice axis points down
OFFSET = "MR13219"  # its DWI sits at +1024
OLD_JSON = "MR555001"  # its entries lack slice_spacing
WITHHELD = "MR900001"  # a test patient whose category is -1


def patients() -> list[tuple[str, int, str]]:
    """(published id, class 0-6, split) for the miniature: 4 patients per class."""
    planted = [DASH_ID, MISSING_IN_PHASE, DUPLICATED, UPSIDE_DOWN, OFFSET, OLD_JSON]
    out, k = [], 0
    for cls in range(7):
        for split in ["train"] * TRAIN + ["val"] * VAL + ["test"] * TEST:
            pid = planted[k] if k < len(planted) else f"MR{700000 + k}"
            out.append((pid, cls, split))
            k += 1
    out.append((WITHHELD, -1, "test"))
    return out


def lesion_box(k: int) -> tuple[int, int, int, int, int, int]:
    """(x_min, y_min, z_min, x_max, y_max, z_max) of sequence k: each sequence's own place."""
    x, y = 6 + k % 3, 5 + (k % 2)
    return (x, y, 2, x + 8, y + 7, 5)


def _volume(cls: int, k: int, pid: str, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """(x, y, z) int16: body 200, lesion brighter by class and sequence inside its box."""
    rng = np.random.default_rng(zlib.crc32(f"{pid}/{k}".encode()))
    arr = np.full(shape, 200, np.int16)
    arr[:2] = 0  # air at one edge: MRI background is near 0
    arr += rng.integers(0, 20, shape).astype(np.int16)
    x0, y0, z0, x1, y1, z1 = lesion_box(k)
    arr[x0:x1, y0:y1, z0 : z1 + 1] += np.int16(40 * (cls + 1) + 10 * k)
    return arr


def _save(path: Path, arr: np.ndarray, flip_z: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, -1.0 if flip_z else 1.0, 1.0])  # untrustworthy: 1 mm, origin 0
    nib.save(nib.Nifti1Image(arr, affine), str(path))


def make_lld(src: Path, shape: tuple[int, int, int] = SHAPE, count: int | None = None) -> dict:
    """Write the miniature under `src` (double-nested archive) and return what was planted;
    `shape` and `count` (the first patients only) size it for timing."""
    root = src / "lld_mmri2023" / "lld_mmri2023"
    info: dict[str, list] = {}
    for pid, cls, _ in patients()[:count]:
        study = f"1.2.840.{zlib.crc32(pid.encode()) % 10**8}"
        entries = []
        for k, seq in enumerate(SEQUENCES):
            if pid == MISSING_IN_PHASE and seq == "In Phase":
                continue
            series = f"{study}.{k + 1}"
            arr = _volume(max(cls, 0), k, pid, shape)
            if pid == DUPLICATED and seq == "In Phase":
                arr = np.concatenate([arr[:, :, :4], arr[:, :, 3:4], arr[:, :, 4:]], axis=2)
            if pid == OFFSET and seq == "DWI":
                arr = arr + np.int16(1024)
            _save(
                root / "images" / pid / study / f"{series}.nii.gz",
                arr,
                flip_z=pid == UPSIDE_DOWN and seq == "T2WI",
            )
            x0, y0, z0, x1, y1, z1 = lesion_box(k)
            if pid == DUPLICATED and seq == "In Phase":
                z1 += 1  # the published box counts the repeated slice
            box = {"x_min": x0, "y_min": y0, "z_min": z0, "x_max": x1, "y_max": y1, "z_max": z1}
            entry = {
                "phase": seq,
                "studyUID": study,
                "seriesUID": series,
                "pixel_spacing": [SPACING[0], SPACING[1]],
                "slice_thickness": SPACING[2] - 0.5,
                "slice_spacing": SPACING[2],
                "origin": list(ORIGIN),
                "annotation": {
                    "num_targets": 1,
                    "lesion": {
                        "0": {
                            "category": cls,
                            "bbox": {"2D_box": [{"slice_idx": z0}], "3D_box": box},
                        }
                    },
                },
            }
            if pid == OLD_JSON:
                del entry["slice_spacing"]
            entries.append(entry)
        info[pid] = entries
    doc = {
        "Category_info": {"Hepatic_hemangioma": 0, "Hepatocellular_carcinoma": 6},
        "Annotation_info": info,
    }
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "Annotation.json").write_text(json.dumps(doc))
    labels = root / "classification_dataset" / "labels"
    labels.mkdir(parents=True)
    rows = [(p, c, s) for p, c, s in patients()]
    (labels / "labels.txt").write_text("".join(f"{p} {c}\n" for p, c, s in rows if s == "train"))
    val = "".join(f"{p} -1\n" for p, c, s in rows if s == "val")
    (labels / "labels_val_inaccessible.txt").write_bytes(b"\xef\xbb\xbf" + val.encode())
    (labels / "labels_test_inaccessible.txt").write_text(
        "".join(f"{p} -1\n" for p, c, s in rows if s == "test")
    )
    return {"root": root, "patients": rows}
