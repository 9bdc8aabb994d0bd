"""Per-phase lesion boxes (cases.csv `bbox_<PHASE>`) and boxes outside their image (hardening
item 6): read and written back, checked against each phase's own size, in the cache key."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from liverphase.cli import app
from liverphase.errors import DatasetError
from liverphase.io.cases_csv import CaseRecord, read_cases_csv, write_cases_csv
from liverphase.io.nifti import open_dataset
from liverphase.preprocess.build import _case_extra

RUNNER = CliRunner()


def _set_column(root: Path, column: str, values: dict[str, str]) -> None:
    """Add (or replace) a cases.csv column."""
    path = root / "cases.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0]) + ([column] if column not in rows[0] else [])
    for r in rows:
        r[column] = values.get(r["case_id"], r.get(column, ""))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fields)
        w.writeheader()
        w.writerows(rows)


def test_phase_boxes_round_trip_with_spaces_and_plus_in_names(tmp_path: Path) -> None:
    recs = [
        CaseRecord(
            "MR1",
            "MR1",
            "HCC",
            None,
            {"split": "train"},
            {"In Phase": (1, 2, 3, 4, 5, 6), "C+A": (0, 0, 0, 2, 2, 2)},
        ),
        CaseRecord(
            "MR2", "MR2", None, (1, 1, 1, 3, 3, 3), {"split": "test"}, {"C+A": (2, 2, 2, 5, 5, 5)}
        ),
    ]
    write_cases_csv(tmp_path / "cases.csv", recs)
    header = (tmp_path / "cases.csv").read_text().splitlines()[0]
    assert header == "case_id,patient_id,label,bbox,bbox_In Phase,bbox_C+A,split"
    back = read_cases_csv(tmp_path / "cases.csv")
    assert [(r.phase_boxes, r.bbox, r.extra) for r in back] == [
        (r.phase_boxes, r.bbox, r.extra) for r in recs
    ]


def test_a_malformed_phase_box_names_its_column(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("case_id,patient_id,label,bbox_ART\nc0,p0,HCC,1 2 3\n")
    with pytest.raises(DatasetError, match="bbox_ART must be"):
        read_cases_csv(path)


def test_phase_boxes_load_into_the_study_and_the_cache_key(tiny_dataset: Path) -> None:
    _set_column(tiny_dataset, "bbox_ART", {"c0": "2 3 4 8 12 14"})
    ds = open_dataset(tiny_dataset)
    study = ds.load_study("c0")
    assert study.phase_boxes == {"ART": (2, 3, 4, 8, 12, 14)}
    key_extra = _case_extra(ds, "c0")
    assert key_extra["phase_boxes"] == {"ART": [2, 3, 4, 8, 12, 14]}
    assert "phase_boxes" not in _case_extra(ds, "c2")  # other cases keep their keys


@pytest.mark.parametrize(
    ("column", "box", "expected"),
    [
        ("bbox", "20 3 4 24 12 14", "bbox 20 3 4 24 12 14"),  # beyond the 12 slices
        ("bbox_ART", "2 3 -40 8 12 -30", "bbox_ART 2 3 -40 8 12 -30"),  # left of x = 0
    ],
)
def test_a_box_outside_its_image_is_refused_naming_it(
    tiny_dataset: Path, column: str, box: str, expected: str
) -> None:
    _set_column(tiny_dataset, column, {"c2": box})
    with pytest.raises(DatasetError, match="lies outside the image of 12x24x20"):
        open_dataset(tiny_dataset).load_study("c2")
    result = RUNNER.invoke(app, ["inspect", str(tiny_dataset)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    problems = [ln for ln in result.output.splitlines() if ln.startswith("problem:")]
    assert any(expected in ln and "c2" in ln for ln in problems), result.output


def test_a_box_for_a_phase_the_dataset_lacks_is_refused(tiny_dataset: Path) -> None:
    _set_column(tiny_dataset, "bbox_DWI", {"c0": "1 1 1 3 3 3"})
    with pytest.raises(DatasetError, match=r"phase\(s\) \['DWI'\] not in channel_names"):
        open_dataset(tiny_dataset).load_study("c0")
